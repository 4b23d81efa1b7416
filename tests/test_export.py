from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import photo

from issp import IsspError
from issp.checkpoint import load_checkpoint, read_metadata
from issp.cli import main
from issp.export import TOLERANCE, export_onnx, onnx_metadata, require, verify_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "edsr-tiny": ROOT / "checkpoints" / "edsr-tiny_x2_issp_r0.9.safetensors",
    "swinir-tiny": ROOT / "checkpoints" / "swinir-tiny_x2_issp_r0.9.safetensors",
}


@pytest.fixture(scope="module", params=list(SHIPPED))
def exported(request, tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, ONNX file) for each shipped architecture; exporting takes seconds."""
    checkpoint = SHIPPED[request.param]
    if not checkpoint.is_file():
        pytest.skip(f"{checkpoint.name} is not shipped")
    model, meta = load_checkpoint(checkpoint)
    out = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    export_onnx(model, out, onnx_metadata(meta))
    return checkpoint, out


@pytest.mark.parametrize("shape", [(1, 3, 13, 21), (2, 3, 8, 8), (1, 3, 3, 2)])
def test_onnx_matches_pytorch_for_any_batch_and_size(exported, shape):
    checkpoint, out = exported
    model, meta = load_checkpoint(checkpoint)
    scale = int(meta["scale"])
    lr = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    assert verify_onnx(out, model, lr, scale) < TOLERANCE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (sr,) = session.run(None, {"lr": lr.numpy()})
    assert sr.shape == (shape[0], 3, scale * shape[2], scale * shape[3])
    assert sr.min() >= 0 and sr.max() <= 1


def test_onnx_carries_the_checkpoint_metadata(exported):
    checkpoint, out = exported
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = read_metadata(checkpoint)
    for key in ("preset", "scale", "method", "ratio"):
        assert props[key] == str(meta[key])
    assert props.get("protocol") == meta.get("protocol")


def test_onnx_keeps_the_pruned_zeros(exported):
    checkpoint, out = exported
    model, meta = load_checkpoint(checkpoint)
    params = dict(model.named_parameters())
    pruned_zeros = sum(int((params[name] == 0).sum()) for name in meta["pruned_layers"])
    initializers = onnx.load(str(out)).graph.initializer
    onnx_zeros = sum(int((onnx.numpy_helper.to_array(t) == 0).sum()) for t in initializers)
    assert pruned_zeros > 0
    assert onnx_zeros >= pruned_zeros


def test_cli_export_writes_a_verified_model(tmp_path, capsys):
    image = tmp_path / "small.png"
    photo(20, 14).save(image)
    out = tmp_path / "model.onnx"
    checkpoint = ROOT / "checkpoints" / "edsr-tiny_x4_dense.safetensors"
    assert main(["export", str(checkpoint), "--onnx", str(out), "--image", str(image)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "(20x14)" in printed
    diff = float(printed.rsplit(": ", 1)[1])
    assert diff < TOLERANCE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (sr,) = session.run(None, {"lr": np.zeros((1, 3, 5, 7), np.float32)})
    assert sr.shape == (1, 3, 20, 28)


@pytest.mark.parametrize("case", ["missing", "not-a-checkpoint", "unwritable", "folder"])
def test_cli_export_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    checkpoint = str(SHIPPED["edsr-tiny"])
    out = str(tmp_path / "model.onnx")
    args = {
        "missing": [str(tmp_path / "missing.safetensors"), "--onnx", out],
        "not-a-checkpoint": [str(text), "--onnx", out],
        "unwritable": [checkpoint, "--onnx", str(text / "model.onnx")],
        "folder": [checkpoint, "--onnx", str(tmp_path)],
    }[case]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "model.onnx").exists()


def test_missing_export_extra_names_the_install_command():
    with pytest.raises(IsspError, match=r"pip install 'issp\[export\]'"):
        require("no_such_onnx_module")
