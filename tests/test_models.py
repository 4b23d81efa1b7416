import pytest
import torch
from torch import nn

from issp import IsspError
from issp.models import PRESETS, build_model, model_summary, preset_args
from issp.models.swinir import pad_to_multiple

SCALES = (2, 3, 4)
# Parameter counts in the papers: EDSR-baseline (Lim et al. 2017) and SwinIR lightweight
# (Liang et al. 2021, Table 3; it leaves out the relative position bias tables, ~32K).
PUBLISHED = {
    "edsr-baseline": {2: 1.37e6, 3: 1.55e6, 4: 1.52e6},
    "swinir-light": {2: 878e3, 3: 886e3, 4: 897e3},
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds(name, scale):
    model = build_model(name, scale)
    assert model.scale == scale
    if name in PUBLISHED:
        assert n_params(model) == pytest.approx(PUBLISHED[name][scale], rel=0.05)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["edsr-tiny", "swinir-tiny"])
def test_output_is_exactly_scale_times_input_for_odd_sizes(name, scale):
    torch.manual_seed(0)
    model = build_model(name, scale).eval()
    with torch.no_grad():
        for h, w in [(7, 11), (13, 9), (3, 2)]:
            sr = model(torch.rand(2, 3, h, w))
            assert sr.shape == (2, 3, scale * h, scale * w)
            assert torch.isfinite(sr).all()


def test_swinir_pads_then_crops():
    torch.manual_seed(0)
    model = build_model("swinir-tiny", 2).eval()
    lr = torch.rand(1, 3, 13, 9)
    with torch.no_grad():
        sr = model(lr)
        assert torch.equal(sr, model(lr))
        padded = model(pad_to_multiple(lr, model.window_size))
    assert padded.shape == (1, 3, 32, 32)
    torch.testing.assert_close(sr, padded[..., :26, :18])


def test_pad_to_multiple_mirrors_again_when_the_image_is_smaller_than_the_padding():
    row = torch.arange(3.0).view(1, 1, 1, 3)
    padded = pad_to_multiple(row, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 2, 1, 0, 0, 1]
    assert torch.equal(padded[0, 0], padded[0, 0, :1].expand(8, 8))


def test_swinir_shifted_windows_do_not_mix_opposite_edges():
    # After the cyclic roll, the top-left window holds pixels from the far corner too; the
    # mask keeps them apart. One shifted layer, so only convs widen the receptive field.
    torch.manual_seed(0)
    model = build_model("swinir-tiny", 2).eval()
    model.groups = model.groups[:1]
    model.groups[0].layers = model.groups[0].layers[1:]  # keep only the shifted layer
    lr = torch.rand(1, 3, 16, 16)
    changed = lr.clone()
    changed[..., 12:, 12:] = 1 - changed[..., 12:, 12:]
    with torch.no_grad():
        a, b = model(lr), model(changed)
    torch.testing.assert_close(a[..., :2, :2], b[..., :2, :2])


def test_build_model_rejects_unknown_name_and_scale():
    with pytest.raises(IsspError, match="edsr-tiny"):
        build_model("edsr-huge", 2)
    with pytest.raises(IsspError, match="scale"):
        build_model("edsr-tiny", 8)


def test_preset_args_is_a_copy():
    args = preset_args("swinir-tiny")
    args["depths"].append(99)
    assert preset_args("swinir-tiny") == PRESETS["swinir-tiny"]
    assert args["arch"] == "swinir"


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [("edsr-tiny", "head", "tail"), ("swinir-tiny", "conv_first", "upsample.0")],
)
def test_first_and_last_conv_are_input_and_output_convs(name, first, last):
    model = build_model(name, 4)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs[0][0] == first and convs[0][1].in_channels == 3
    assert convs[-1][0] == last
    assert convs[-1][1].out_channels == (48 if name == "swinir-tiny" else 3)


@pytest.mark.parametrize("name", ["edsr-tiny", "swinir-tiny"])
def test_summary_sparse_flops_follow_weight_density(name):
    model = build_model(name, 2)
    dense = model_summary(model, (16, 24))
    assert dense["params"] == n_params(model)
    assert dense["flops_sparse"] == dense["flops_dense"] > 0

    zeroed = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                weight = module.weight.view(-1)
                k = int(0.9 * weight.numel())
                weight[torch.randperm(weight.numel())[:k]] = 0
                zeroed += k
    sparse = model_summary(model, (16, 24))
    assert sparse["flops_dense"] == dense["flops_dense"]
    assert sparse["nonzeros"] <= dense["nonzeros"] - zeroed + 1e-3 * dense["params"]
    if name == "edsr-tiny":  # all FLOPs are conv FLOPs
        assert sparse["flops_sparse"] == pytest.approx(0.1 * dense["flops_dense"], rel=0.02)
    else:
        assert sparse["flops_sparse"] < 0.8 * dense["flops_dense"]


def test_summary_counts_two_flops_per_multiply_add():
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1))
    # 5 outputs x 27 multiply-adds per pixel, 4 x 6 pixels.
    assert model_summary(model, (4, 6))["flops_dense"] == 2 * 5 * 27 * 4 * 6
