import math

import pytest
import torch
from safetensors.torch import save_file

from issp import IsspError
from issp.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from issp.models import build_model
from issp.prunable import prunable_weights
from issp.selection import smallest_mask


def sparse_model(ratio: float, scale: int = 2):
    torch.manual_seed(0)
    model = build_model("edsr-tiny", scale)
    weights = prunable_weights(model)
    with torch.no_grad():
        for w in weights.values():
            w.masked_fill_(smallest_mask(w, math.ceil(ratio * w.numel())), 0)
    return model, list(weights)


def save(path, model, pruned, scale=2, **meta):
    metadata = {"preset": "edsr-tiny", "scale": scale, "method": "issp", "ratio": 0.9, **meta}
    save_checkpoint(path, model, metadata, pruned)


def test_round_trip_restores_identical_dense_tensors_and_metadata(tmp_path):
    model, pruned = sparse_model(0.9)
    save(tmp_path / "m.safetensors", model, pruned, alpha=0.99)
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors", scale=2, arch="edsr-tiny")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert meta["pruned_layers"] == pruned
    assert meta["alpha"] == "0.99"
    x = torch.rand(1, 3, 9, 7)
    torch.testing.assert_close(model.eval()(x), loaded(x))


def test_sparse_checkpoint_is_about_one_minus_ratio_of_dense_size(tmp_path):
    dense, names = sparse_model(0.0)
    sparse, _ = sparse_model(0.95)
    save(tmp_path / "d.safetensors", dense, [])
    save(tmp_path / "s.safetensors", sparse, names)
    pruned_bytes = sum(dict(dense.named_parameters())[n].numel() * 4 for n in names)
    saved = (tmp_path / "d.safetensors").stat().st_size - (
        tmp_path / "s.safetensors"
    ).stat().st_size
    # 95% of the pruned layers' float32 bytes are gone, less a 1/32 bitmask.
    assert saved > pruned_bytes * (0.95 - 1 / 32 - 0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"scale": 4}, "x2 model, but x4"), ({"arch": "swinir-tiny"}, "not swinir-tiny")],
)
def test_loading_for_another_scale_or_arch_says_what_is_wrong(tmp_path, kwargs, message):
    model, pruned = sparse_model(0.5)
    save(tmp_path / "m.safetensors", model, pruned)
    with pytest.raises(IsspError, match=message):
        load_checkpoint(tmp_path / "m.safetensors", **kwargs)


def test_not_a_checkpoint_and_foreign_safetensors_are_rejected(tmp_path):
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(IsspError, match="not a safetensors"):
        read_metadata(tmp_path / "text.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(IsspError, match="not an issp checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(IsspError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_shape_mismatch_is_reported(tmp_path):
    model, pruned = sparse_model(0.5, scale=4)
    # A x4 model's weights labelled as x2: the upsampler shapes cannot match.
    save(tmp_path / "m.safetensors", model, pruned, scale=2)
    with pytest.raises(IsspError, match="does not match|expects"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_checkpoint_builds_the_model_from_its_stored_arguments(tmp_path):
    from issp.models import build_from_args

    args = {"arch": "edsr", "n_feats": 8, "n_blocks": 1, "res_scale": 1.0}
    model = build_from_args(args, 2)
    save(tmp_path / "m.safetensors", model, [], preset_args=args)
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors", scale=2, arch="edsr-tiny")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
