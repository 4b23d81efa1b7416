"""EDSR (Lim et al., CVPRW 2017): a plain residual CNN without batch norm.

Submodules are registered in forward order (``head``, ``body``, ``upsample``, ``tail``),
so the first ``nn.Conv2d`` of ``named_modules()`` is the head conv and the last one is
the output conv; the pruners keep those two dense by default.
"""

from __future__ import annotations

import torch
from torch import nn

# Mean RGB of DIV2K in [0, 1]; EDSR and SwinIR subtract it so the body sees centred data.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 convolution that keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


def pixel_shuffle_upsampler(scale: int, n_feats: int) -> nn.Sequential:
    """EDSR's upsampler: conv + PixelShuffle, once for x2/x3 and twice (x2, x2) for x4."""
    if scale not in (2, 3, 4):
        raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
    factors = [2, 2] if scale == 4 else [scale]
    layers: list[nn.Module] = []
    for factor in factors:
        layers += [conv3x3(n_feats, n_feats * factor**2), nn.PixelShuffle(factor)]
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """conv-ReLU-conv with a scaled residual; no batch norm, which hurts SR (EDSR, sec. 3.1)."""

    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = conv3x3(n_feats, n_feats)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(n_feats, n_feats)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(self.act(self.conv1(x)))


class EDSR(nn.Module):
    """EDSR: head conv, ``n_blocks`` residual blocks and a conv, global skip, upsampler, conv.

    Takes and returns RGB in [0, 1]; the output is ``scale`` times larger.
    """

    def __init__(
        self, scale: int, n_feats: int = 64, n_blocks: int = 16, res_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.scale = scale
        # A fixed constant, not learned: kept out of parameters and out of checkpoints.
        mean = torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.head = conv3x3(3, n_feats)
        blocks = [ResBlock(n_feats, res_scale) for _ in range(n_blocks)]
        self.body = nn.Sequential(*blocks, conv3x3(n_feats, n_feats))
        self.upsample = pixel_shuffle_upsampler(scale, n_feats)
        self.tail = conv3x3(n_feats, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x - self.mean)
        x = x + self.body(x)
        return self.tail(self.upsample(x)) + self.mean
