import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from issp.checkpoint import load_checkpoint
from issp.pruning import Pruner
from issp.train import TrainConfig, state_path, telemetry_path, train

ROOT = Path(__file__).resolve().parents[1]


def tiny(**overrides) -> TrainConfig:
    settings = dict(
        arch="edsr-tiny",
        scale=2,
        method="issp",
        ratio=0.9,
        alpha=0.9,
        steps=8,
        prune_steps=5,
        batch_size=2,
        patch=16,
        val_every=4,
        save_every=2,
        workers=0,
    )
    return TrainConfig(**{**settings, **overrides})


def test_train_writes_sparse_checkpoint_state_and_telemetry(tmp_path):
    out = tmp_path / "x.safetensors"
    history = train(tiny(), out, progress=False)
    assert len(history["loss"]) == 8 and history["val_steps"] == [4, 8]
    model, meta = load_checkpoint(out)
    params = dict(model.named_parameters())
    assert meta["method"] == "issp" and meta["prune_steps"] == "5"
    assert meta["data"].startswith("default")
    for name in meta["pruned_layers"]:
        w = params[name]
        assert abs(int((w == 0).sum()) - math.ceil(0.9 * w.numel())) <= 1
    telemetry = np.load(telemetry_path(out))
    assert telemetry["flips"].shape == (8, len(meta["pruned_layers"]))
    assert list(telemetry["layers"]) == meta["pruned_layers"]
    assert state_path(out).exists()


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    train(tiny(), tmp_path / "full.safetensors", progress=False)
    original_step = Pruner.step

    def crash_at_five(self):
        original_step(self)
        if self.t == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(Pruner, "step", crash_at_five)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tmp_path / "cut.safetensors", progress=False)
    monkeypatch.setattr(Pruner, "step", original_step)
    history = train(tiny(), tmp_path / "cut.safetensors", resume=True, progress=False)
    assert len(history["loss"]) == 8
    full, _ = load_checkpoint(tmp_path / "full.safetensors")
    resumed, _ = load_checkpoint(tmp_path / "cut.safetensors")
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_resumed_checkpoint_counts_training_time_before_the_interruption(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("issp.train.time.monotonic", lambda: clock[0])
    original_step = Pruner.step

    def slow_then_crash(self):
        original_step(self)
        clock[0] += 100.0  # every step of the first session takes 100 s
        if self.t == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(Pruner, "step", slow_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tmp_path / "cut.safetensors", progress=False)
    monkeypatch.setattr(Pruner, "step", original_step)  # the second session takes no time
    train(tiny(), tmp_path / "cut.safetensors", resume=True, progress=False)
    _, meta = load_checkpoint(tmp_path / "cut.safetensors")
    assert float(meta["train_seconds"]) == 400.0  # saved at step 4, the last state before 5


def test_dense_training_reduces_the_loss(tmp_path):
    history = train(
        tiny(method="dense", steps=40, batch_size=4, val_every=40, lr=2e-3),
        tmp_path / "d.safetensors",
        progress=False,
    )
    assert np.mean(history["loss"][-8:]) < 0.7 * np.mean(history["loss"][:8])


def test_torchrun_two_cpu_processes_train_with_identical_masks(tmp_path):
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "issp", "train", "--steps", "6", "--prune-steps", "4",
        "--batch-size", "2", "--patch", "16", "--workers", "0", "--ratio", "0.75",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    model, meta = load_checkpoint(out)
    assert meta["world_size"] == "2"
    params = dict(model.named_parameters())
    for name in meta["pruned_layers"]:
        assert int((params[name] == 0).sum()) == math.ceil(0.75 * params[name].numel())
