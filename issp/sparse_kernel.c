/* The sparse 3x3 convolution of issp/sparse.py, compiled on first use (see _kernel). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
/* One clone per instruction set; the loader picks the best one this CPU has. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif
/* An explicit vector type keeps the sums in registers: with plain arrays GCC -O3
   interchanges the loops and sums one pixel at a time. */
#define LANES 16
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(LANES * sizeof(int32_t))));

/* Copy input row k of image b, for every channel, into slot k mod 3 of the thread's rows
   (zeros above and below the image). Column 0 and columns past w stay zero: padding. */
static void load_row(float *rows, const float *x, int64_t b, int64_t k, int64_t cin,
                     int64_t h, int64_t w, int64_t wp) {
  for (int64_t ci = 0; ci < cin; ++ci) {
    float *dst = rows + (ci * 3 + (k + 3) % 3) * wp + 1;
    if (k < 0 || k >= h) memset(dst, 0, sizeof(float) * w);
    else memcpy(dst, x + ((b * cin + ci) * h + k) * w, sizeof(float) * w);
  }
}

/* The sums of output row y for the `group` consecutive output channels from co0, BLOCK
   pixels at a time in registers: each input row a tap points at is loaded once and
   serves every channel of the group (values holds `group` weights per tap, zeros where a
   channel lacks it). Then the epilogue: bias, ReLU if relu, residual + scale * sum if a
   residual is given; the row goes to out_rows[g], or with shuffle r > 1 to the r-row
   buffer that shuffle_row interleaves. Inlined with group a constant, so the sums stay
   in registers. */
static inline __attribute__((always_inline)) void group_row(
    int group, int64_t co0, int64_t w, int64_t wp, const float *rows, const int64_t *slot,
    const int64_t *tap, const int32_t *ky, const float *values, int64_t first, int64_t last,
    const float *bias, int relu, const float *const *res_rows, float scale,
    float *const *out_rows) {
  for (int64_t x0 = 0; x0 < w; x0 += BLOCK) {
    vec acc[4][BLOCK / LANES];
    for (int g = 0; g < group; ++g)
      for (int k = 0; k < BLOCK / LANES; ++k) acc[g][k] = (vec){0} + (bias ? bias[co0 + g] : 0.0f);
    for (int64_t j = first; j < last; ++j) {
      const float *in = rows + tap[j] + slot[ky[j]] + x0, *v = values + j * group;
      for (int k = 0; k < BLOCK / LANES; ++k) {
        vec pixels;
        memcpy(&pixels, in + k * LANES, sizeof(vec)); /* an unaligned load */
        for (int g = 0; g < group; ++g) acc[g][k] += v[g] * pixels;
      }
    }
    const int64_t n = w - x0 < BLOCK ? w - x0 : BLOCK;
    for (int g = 0; g < group; ++g) {
      const float *res = res_rows[g] ? res_rows[g] + x0 : NULL;
      float *dst = out_rows[g] + x0;
      if (n == BLOCK) { /* whole vectors: the epilogue costs a few instructions */
        for (int k = 0; k < BLOCK / LANES; ++k) {
          vec v = acc[g][k];
          if (relu) v = (vec)((ivec)v & (v > (vec){0}));
          if (res) {
            vec r;
            memcpy(&r, res + k * LANES, sizeof(vec));
            v = r + scale * v;
          }
          memcpy(dst + k * LANES, &v, sizeof(vec));
        }
      } else {
        const float *sum = (const float *)acc[g];
        for (int64_t t = 0; t < n; ++t) {
          float v = sum[t];
          if (relu && v < 0.0f) v = 0.0f;
          dst[t] = res ? res[t] + scale * v : v;
        }
      }
    }
  }
}

/* Interleave the r buffered rows j = 0..r-1 into output row o: o[t * r + j]. */
static void shuffle_row(float *o, const float *shuffled, int64_t r, int64_t w, int64_t wp) {
  if (r == 2) {
    for (int64_t t = 0; t < w; ++t) {
      o[2 * t] = shuffled[t];
      o[2 * t + 1] = shuffled[wp + t];
    }
  } else {
    for (int64_t t = 0; t < w; ++t)
      for (int64_t j = 0; j < r; ++j) o[t * r + j] = shuffled[j * wp + t];
  }
}

/* Each thread keeps the three input rows an output row needs, zero-padded, in a small
   buffer that stays in cache, and loads one new row per output row. Output channels go
   in groups of `group` (1 to 4) sharing one tap list: rowptr indexes taps by group. With
   shuffle r > 1 (group 1 only) the result is written pixel-shuffled: channel
   co = (c * r + i) * r + j of row y goes to channel c, row y * r + i, every r-th column
   from j, through a buffer of r rows so that the interleaved stores are whole vectors.
   Without a shuffle the epilogue is fused: ReLU if relu, then residual + scale * sum
   where residual is given (EDSR's residual block), saving two passes over the output.
   Returns 1 if out of memory, 2 for a group the kernel has no code for. */
CLONES int sparse_conv3x3(const float *x, int64_t batch, int64_t cin, int64_t h, int64_t w,
                          int64_t cout, int64_t shuffle, int64_t group, const int64_t *rowptr,
                          const int32_t *channel, const int32_t *ky, const int32_t *kx,
                          const float *values, const float *bias, float *out, int threads,
                          int relu, const float *residual, float scale) {
  const int64_t groups = cout / group, ntaps = rowptr[groups], r = shuffle;
  const int64_t hs = h * r, ws = w * r, wp = (w + BLOCK - 1) / BLOCK * BLOCK + 2;
  if (group < 1 || group > 4 || (r > 1 && group != 1)) return 2;
  int failed = 0;
  int64_t *tap = malloc(sizeof(int64_t) * (ntaps > 0 ? ntaps : 1));
  if (!tap) return 1;
  for (int64_t j = 0; j < ntaps; ++j) tap[j] = channel[j] * 3 * wp + kx[j];
  #pragma omp parallel num_threads(threads)
  {
    float *rows = calloc(cin * 3 * wp + r * wp, sizeof(float));
    float *shuffled = rows + cin * 3 * wp; /* the r sums of one output row, when r > 1 */
    int64_t loaded_b = -1, loaded_y = -2;
    if (!rows) {
      #pragma omp atomic write
      failed = 1;
    }
    #pragma omp for schedule(static)
    for (int64_t by = 0; by < batch * h; ++by) {
      if (!rows) continue;
      const int64_t b = by / h, y = by % h;
      const int64_t first = (b == loaded_b && y == loaded_y + 1) ? y + 1 : y - 1;
      for (int64_t k = first; k <= y + 1; ++k) load_row(rows, x, b, k, cin, h, w, wp);
      loaded_b = b;
      loaded_y = y;
      const int64_t slot[3] = {(y + 2) % 3 * wp, y % 3 * wp, (y + 1) % 3 * wp};
      for (int64_t gi = 0; gi < groups; ++gi) {
        const int64_t co0 = gi * group;
        const float *res_rows[4] = {NULL, NULL, NULL, NULL};
        float *out_rows[4];
        for (int64_t g = 0; g < group; ++g) {
          const int64_t co = co0 + g;
          if (residual) res_rows[g] = residual + ((b * cout + co) * h + y) * w;
          out_rows[g] = r > 1 ? shuffled + co % r * wp : out + ((b * cout + co) * h + y) * w;
        }
        const int64_t j0 = rowptr[gi], j1 = rowptr[gi + 1];
        switch (group) {
          case 1: group_row(1, co0, w, wp, rows, slot, tap, ky, values, j0, j1, bias, relu,
                            res_rows, scale, out_rows); break;
          case 2: group_row(2, co0, w, wp, rows, slot, tap, ky, values, j0, j1, bias, relu,
                            res_rows, scale, out_rows); break;
          case 3: group_row(3, co0, w, wp, rows, slot, tap, ky, values, j0, j1, bias, relu,
                            res_rows, scale, out_rows); break;
          default: group_row(4, co0, w, wp, rows, slot, tap, ky, values, j0, j1, bias, relu,
                             res_rows, scale, out_rows);
        }
        if (r > 1 && co0 % r == r - 1) {
          const int64_t c = co0 / (r * r), i = co0 / r % r;
          shuffle_row(out + ((b * (cout / (r * r)) + c) * hs + y * r + i) * ws, shuffled, r,
                      w, wp);
        }
      }
    }
    free(rows);
  }
  free(tap);
  return failed;
}
