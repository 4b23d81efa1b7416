"""Which weights a pruner selects: the smallest by magnitude in a layer, or in every run of
M consecutive weights of it (N:M), as boolean masks (True = selected); and RigL's exchange
of one layer's mask."""

from __future__ import annotations

import torch

from issp import IsspError

# What a checkpoint's metadata and the app call a selection without an N:M pattern.
PER_LAYER = "per layer"


def smallest_mask(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``k`` smallest-magnitude entries (ties broken arbitrarily)."""
    flat = weight.detach().abs().flatten()
    n = flat.numel()
    # topk over the smaller side: selecting 99% as "all but the 1% largest" is far cheaper.
    if k <= n // 2:
        mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
        mask[torch.topk(flat, k, largest=False, sorted=False).indices] = True
    else:
        mask = torch.ones(n, dtype=torch.bool, device=flat.device)
        mask[torch.topk(flat, n - k, largest=True, sorted=False).indices] = False
    return mask.view_as(weight)


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"19:20"`` -> ``(19, 20)``: N of every M weights pruned; IsspError unless 0 < N < M."""
    try:
        n, m = (int(part) for part in pattern.split(":"))
    except (AttributeError, ValueError):
        raise IsspError(f"pattern must be N:M, e.g. 2:4 or 19:20, got {pattern!r}") from None
    if not 0 < n < m:
        raise IsspError(f"pattern N:M needs 0 < N < M, got {pattern!r}")
    return n, m


def nm_groups(numel: int, n: int, m: int) -> tuple[int, int]:
    """The ``(N, M)`` a layer of ``numel`` weights is cut by: as asked where M divides it,
    else both raised by one until M does, as the authors' code does
    (Jiamian-Wang/Iterative-Soft-Shrinkage-SR, ``basicsr/pruner/utils.py`` lines 154-158).
    They raise them until M divides the gcd of every layer's size, so that all layers share
    one N:M (only their SwinIR runs use N:M; on EDSR-L x4, gcd 2304, 19:20 would become
    23:24, as it does per layer there); here each layer keeps the asked N:M wherever it
    can. Either way M - N weights survive per group. IsspError for an M larger than the
    layer, which no raise would make divide it."""
    if m > numel:
        raise IsspError(f"an N:M group of {m} weights is larger than a layer of {numel}")
    while numel % m:
        n, m = n + 1, m + 1
    return n, m


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask of the ``n`` smallest-magnitude weights in every run of ``m``
    consecutive weights of ``weight`` flattened in row-major order (so a group may span two
    filters, as in the authors' code), with ``nm_groups``' rule where ``m`` does not divide
    the layer."""
    n, m = nm_groups(weight.numel(), n, m)
    groups = weight.detach().abs().reshape(-1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, torch.topk(groups, n, dim=1, largest=False, sorted=False).indices, True)
    return mask.view_as(weight)


def rigl_exchange(
    weight: torch.Tensor, pruned: torch.Tensor, dense_grad: torch.Tensor, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """RigL's update of one layer's mask (Evci et al. 2020, Algorithm 1): drop the
    ``k = int(fraction * active)`` smallest |w| among the active weights, then grow the
    ``k`` with the largest |dense gradient| among those inactive after the drop, the just
    dropped included. Returns the new mask (True = pruned) and the grown weights (pruned
    before, active now), both in ``weight``'s shape, whatever its memory layout. A weight
    dropped and grown again in one update is in neither: it keeps its value and optimizer
    state, as in the reference code (google-research/rigl, ``reinit_when_same=False``)."""
    before = pruned.flatten()
    active = (~before).nonzero().squeeze(1)
    k = int(fraction * active.numel())
    magnitude = weight.detach().abs().flatten()[active]
    after_drop = before.clone()
    after_drop[active[torch.topk(magnitude, k, largest=False).indices]] = True
    scores = dense_grad.abs().flatten().masked_fill(~after_drop, -1.0)
    new = after_drop.clone()
    new[torch.topk(scores, k).indices] = False
    return new.view(weight.shape), (before & ~new).view(weight.shape)
