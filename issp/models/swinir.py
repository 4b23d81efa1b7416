"""SwinIR (Liang et al., ICCVW 2021), the lightweight variant with a "pixelshuffledirect" tail.

Shallow conv, residual Swin transformer groups (RSTB), norm + conv, global skip, then one
conv to ``3 * scale**2`` channels and PixelShuffle. Every projection is an ``nn.Linear``
and every conv an ``nn.Conv2d``, so the pruners find them all. Submodules are registered
in forward order: the first conv is ``conv_first`` and the last is the output conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from issp.models.edsr import DIV2K_RGB_MEAN, conv3x3


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Mirror-pad the bottom and right of ``x`` (B, C, H, W) up to multiples of ``multiple``.

    Symmetric padding, as SwinIR's own test script does; unlike ``F.pad(mode="reflect")``
    it works when the image is smaller than the padding (the mirror repeats with period
    ``2 * size``). Written as one gather without branches on the size, so the ONNX export
    keeps height and width dynamic.
    """
    for dim in (-2, -1):
        size = x.shape[dim]
        # Not -(-size // multiple): the ONNX export turns floor division into truncation.
        # fmod, not %: the exporter cannot convert % by a symbolic size; i >= 0 makes them equal.
        i = torch.arange((size + multiple - 1) // multiple * multiple, device=x.device)
        i = torch.fmod(i, 2 * size)
        x = x.index_select(dim, torch.where(i < size, i, 2 * size - 1 - i))
    return x


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window * window, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B * windows, window * window, C) -> (B, H, W, C); inverse of ``window_partition``."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) index into the (2 * window - 1)**2 bias table for every pair of window tokens."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + window - 1
    return rel[0] * (2 * window - 1) + rel[1]


def shifted_window_mask(
    h: int, w: int, window: int, shift: int, device: torch.device | None = None
) -> torch.Tensor:
    """(windows, N, N) additive mask: -100 between tokens that a cyclic shift made neighbours.

    After rolling by ``shift``, a window at the border mixes pixels from opposite edges of
    the image; they must not attend to each other.
    """

    def band(n: int) -> torch.Tensor:
        # 0 before the last window, 1 in it up to the shift, 2 in the last `shift` pixels;
        # comparisons rather than slice assignments, so the ONNX export keeps h, w dynamic.
        i = torch.arange(n, device=device)
        return (i >= n - window).long() + (i >= n - shift).long()

    region = (3 * band(h)[:, None] + band(w)[None, :]).float()
    region = window_partition(region[None, :, :, None], window).squeeze(-1)
    return (region[:, None, :] != region[:, :, None]).float() * -100.0


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            nn.init.trunc_normal_(torch.zeros((2 * window - 1) ** 2, num_heads), std=0.02)
        )
        # Derived from `window`, so rebuilt rather than stored in checkpoints.
        index = relative_position_index(window)
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * windows, N, C); mask: (windows, N, N) or None."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(b, self.num_heads, n, n)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class SwinLayer(nn.Module):
    """Pre-norm Swin block: (shifted) window attention and an MLP, each with a residual."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.act = nn.GELU()
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) with H, W multiples of the window; mask from ``shifted_window_mask``."""
        _, h, w, _ = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = self.attn(window_partition(y, self.window), mask if self.shift else None)
        y = window_reverse(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class RSTB(nn.Module):
    """Residual Swin Transformer Block: ``depth`` Swin layers (alternately shifted), a conv."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SwinLayer(dim, num_heads, window, window // 2 if i % 2 else 0, mlp_ratio)
            for i in range(depth)
        )
        self.conv = conv3x3(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 2, 3, 1)
        for layer in self.layers:
            y = layer(y, mask)
        return x + self.conv(y.permute(0, 3, 1, 2))


class SwinIR(nn.Module):
    """SwinIR with the lightweight "pixelshuffledirect" upsampler.

    Takes RGB in [0, 1] of any size: the input is mirror-padded to a multiple of the window
    and the output cropped back to exactly ``scale * H`` x ``scale * W``.
    """

    def __init__(
        self,
        scale: int,
        embed_dim: int = 60,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
        self.scale, self.window_size = scale, window_size
        mean = torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.conv_first = conv3x3(3, embed_dim)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.groups = nn.ModuleList(
            RSTB(embed_dim, depth, heads, window_size, mlp_ratio)
            for depth, heads in zip(depths, num_heads, strict=True)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = conv3x3(embed_dim, embed_dim)
        self.upsample = nn.Sequential(conv3x3(embed_dim, 3 * scale**2), nn.PixelShuffle(scale))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.conv_first(pad_to_multiple(x - self.mean, self.window_size))
        # Computed per call for the padded size: cheap next to attention, and no cache.
        ws = self.window_size
        mask = shifted_window_mask(x.shape[-2], x.shape[-1], ws, ws // 2, x.device).to(x.dtype)
        y = self.embed_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for group in self.groups:
            y = group(y, mask)
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + self.conv_after_body(y)
        return self.upsample(x)[..., : h * self.scale, : w * self.scale] + self.mean


def _init_weights(module: nn.Module) -> None:
    # SwinIR's initialisation; convs keep PyTorch's default, as in the original.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
