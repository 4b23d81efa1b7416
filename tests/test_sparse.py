import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.sparse_conv import SPARSE_PATHS
from issp import IsspError
from issp.models import build_model
from issp.pruning import prunable_weights, smallest_mask
from issp.sparse import SparseConv2d, SparseWeight, sparse_conv3x3, sparsify


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


def test_sparse_weight_keeps_exactly_the_non_zeros():
    torch.manual_seed(0)
    weight = pruned_weight(0.9)
    sparse = SparseWeight.from_dense(weight)
    assert sparse.values.numel() == torch.count_nonzero(weight)
    assert sparse.sparsity == pytest.approx(1 - sparse.values.numel() / weight.numel())
    rebuilt = torch.zeros_like(weight)
    co = torch.repeat_interleave(torch.arange(7), sparse.rowptr.diff())
    rebuilt[co, sparse.channel.long(), sparse.ky.long(), sparse.kx.long()] = sparse.values
    assert torch.equal(rebuilt, weight)


def test_sparsify_swaps_the_pruned_convs_and_keeps_the_output():
    torch.manual_seed(0)
    model = build_model("edsr-tiny", 2).eval()
    with torch.no_grad():
        for weight in prunable_weights(model).values():
            weight.masked_fill_(smallest_mask(weight, math.ceil(0.9 * weight.numel())), 0)
    sparse = sparsify(model)
    # The head and tail convs are not pruned, so they stay dense.
    assert sum(isinstance(m, SparseConv2d) for m in sparse.modules()) == 10
    assert sum(isinstance(m, SparseConv2d) for m in model.modules()) == 0
    x = torch.rand(1, 3, 8, 11)
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
