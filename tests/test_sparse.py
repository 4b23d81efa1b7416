import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.sparse_conv import SPARSE_PATHS
from issp import IsspError
from issp.models import build_model
from issp.models.edsr import EDSR
from issp.prunable import prunable_weights
from issp.selection import nm_mask, smallest_mask
from issp.sparse import SparseConv2d, SparseResBlock, SparseWeight, sparse_conv3x3, sparsify


def pruned_weight(ratio: float, cout: int = 7, cin: int = 5) -> torch.Tensor:
    weight = torch.randn(cout, cin, 3, 3) * 0.3
    return weight.masked_fill(smallest_mask(weight, math.ceil(ratio * weight.numel())), 0)


@pytest.mark.parametrize("path", list(SPARSE_PATHS))
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("with_bias", [True, False])
def test_every_sparse_path_equals_dense_conv(path, ratio, with_bias):
    torch.manual_seed(0)
    weight = pruned_weight(ratio)
    bias = torch.randn(7) if with_bias else None
    x = torch.randn(2, 5, 6, 9)
    out = SPARSE_PATHS[path](weight, bias)(x)
    assert out.shape == (2, 7, 6, 9)
    assert (out - F.conv2d(x, weight, bias, padding=1)).abs().max() <= 1e-5


@pytest.mark.parametrize("shuffle", [2, 3])
def test_kernel_writes_the_pixel_shuffled_output(shuffle):
    torch.manual_seed(0)
    weight = pruned_weight(0.9, cout=4 * shuffle * shuffle)
    bias = torch.randn(weight.shape[0])
    # Wider than two 64-pixel register blocks, with a partial third.
    x = torch.randn(2, 5, 4, 150)
    out = sparse_conv3x3(x, SparseWeight.from_dense(weight), bias, shuffle)
    expected = F.pixel_shuffle(F.conv2d(x, weight, bias, padding=1), shuffle)
    assert out.shape == expected.shape and (out - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_kernel_fuses_relu_and_the_scaled_residual(relu, scale):
    torch.manual_seed(0)
    weight = pruned_weight(0.9, cout=5)
    bias = torch.randn(5)
    x, residual = torch.randn(2, 5, 3, 150), torch.randn(2, 5, 3, 150)
    out = sparse_conv3x3(
        x, SparseWeight.from_dense(weight), bias, relu=relu, residual=residual, scale=scale
    )
    conv = F.conv2d(x, weight, bias, padding=1)
    expected = residual + scale * (conv.clamp_min(0) if relu else conv)
    assert (out - expected).abs().max() <= 1e-5


def test_a_residual_of_the_wrong_shape_is_refused():
    sparse = SparseWeight.from_dense(pruned_weight(0.5, cout=5))
    with pytest.raises(IsspError, match="residual"):
        sparse_conv3x3(torch.zeros(1, 5, 4, 4), sparse, residual=torch.zeros(1, 5, 4, 3))


@pytest.mark.parametrize(("ratio", "group"), [(0.9, 1), (0.0, 4), (0.0, 3), (0.5, None)])
def test_sparse_weight_keeps_exactly_the_non_zeros(ratio, group):
    torch.manual_seed(0)
    weight = pruned_weight(ratio, cout=12)
    sparse = SparseWeight.from_dense(weight, group)
    assert sparse.nonzeros == torch.count_nonzero(weight)
    assert sparse.sparsity == pytest.approx(1 - sparse.nonzeros / weight.numel())
    rebuilt = torch.zeros_like(weight)
    taps = torch.repeat_interleave(torch.arange(12 // sparse.group), sparse.rowptr.diff())
    for g in range(sparse.group):
        co = taps * sparse.group + g
        values = sparse.values.view(-1, sparse.group)[:, g]
        rebuilt[co, sparse.channel.long(), sparse.ky.long(), sparse.kx.long()] = values
    assert torch.equal(rebuilt, weight)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("group", [1, 2, 3, 4])
def test_grouped_output_channels_equal_dense_conv(ratio, group):
    torch.manual_seed(0)
    weight = pruned_weight(ratio, cout=12)
    bias = torch.randn(12)
    x = torch.randn(2, 5, 5, 70)
    out = sparse_conv3x3(x, SparseWeight.from_dense(weight, group), bias, relu=True)
    assert (out - F.conv2d(x, weight, bias, padding=1).clamp_min(0)).abs().max() <= 1e-5


def test_dense_convs_share_taps_and_pruned_ones_do_not():
    assert SparseWeight.from_dense(pruned_weight(0.0, cout=3)).group == 3
    assert SparseWeight.from_dense(pruned_weight(0.0, cout=32)).group == 4
    assert SparseWeight.from_dense(pruned_weight(0.9, cout=32, cin=32)).group == 1


@pytest.mark.parametrize("pattern", [None, (9, 10), (19, 20)])
def test_sparsify_swaps_the_pruned_convs_and_keeps_the_output(pattern):
    torch.manual_seed(0)
    model = build_model("edsr-tiny", 2).eval()
    with torch.no_grad():
        for weight in prunable_weights(model).values():
            if pattern is None:
                weight.masked_fill_(smallest_mask(weight, math.ceil(0.9 * weight.numel())), 0)
            else:  # an N:M mask is one more unstructured mask to the kernel
                weight.masked_fill_(nm_mask(weight, *pattern), 0)
    sparse = sparsify(model)
    # The 10 pruned convs, and the unpruned head and tail: 3 channels in or out.
    assert sum(isinstance(m, SparseConv2d) for m in sparse.modules()) == 12
    # The upsampler's conv writes the pixel-shuffled layout itself.
    assert not any(isinstance(m, nn.PixelShuffle) for m in sparse.modules())
    assert sum(isinstance(m, SparseConv2d) for m in model.modules()) == 0
    x = torch.rand(1, 3, 8, 11)
    with torch.no_grad():
        assert (sparse(x) - model(x)).abs().max() <= 1e-5


def test_sparsify_fuses_residual_blocks_with_their_scale():
    torch.manual_seed(0)
    model = EDSR(scale=2, n_feats=8, n_blocks=2, res_scale=0.1).eval()
    with torch.no_grad():
        for weight in prunable_weights(model).values():
            weight.masked_fill_(smallest_mask(weight, math.ceil(0.95 * weight.numel())), 0)
    sparse = sparsify(model)
    assert sum(isinstance(m, SparseResBlock) for m in sparse.modules()) == 2
    x = torch.rand(2, 3, 5, 70)
    with torch.no_grad():
        assert (sparse(x) - model(x)).abs().max() <= 1e-5


def test_sparsify_leaves_dense_convs_dense():
    model = build_model("edsr-tiny", 2)
    assert not any(isinstance(m, SparseConv2d) for m in sparsify(model).modules())


@pytest.mark.parametrize(
    "conv", [nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 5, padding=2)]
)
def test_convs_the_kernel_cannot_compute_are_refused(conv):
    with pytest.raises(IsspError, match="3x3"):
        SparseConv2d.from_dense(conv)


def test_wrong_input_gets_an_error_naming_it():
    sparse = SparseWeight.from_dense(pruned_weight(0.5))
    with pytest.raises(IsspError, match="float32"):
        sparse_conv3x3(torch.zeros(1, 5, 4, 4, dtype=torch.float64), sparse)
    with pytest.raises(IsspError, match=r"\(N, 5, H, W\)"):
        sparse_conv3x3(torch.zeros(1, 6, 4, 4), sparse)
