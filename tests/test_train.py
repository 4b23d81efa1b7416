import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from issp import IsspError, pruning, study
from issp.checkpoint import load_checkpoint
from issp.pruning import METHODS, Pruner
from issp.run_files import state_path, telemetry_path
from issp.train import TrainConfig, learning_rate, setup_run, train

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


@pytest.mark.slow
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


def test_two_stage_schedule_is_constant_while_pruning_and_restarts_for_fine_tuning():
    config = TrainConfig.of_protocol("two-stage", steps=400, lr=2e-4)
    assert config.kp == 100 and config.betas == (0.9, 0.99) and not config.prune_edges
    rates = [learning_rate(config, step) for step in range(config.steps)]
    assert set(rates[: config.kp]) == {2e-4}
    # Fine-tuning: a fresh schedule from the initial rate, halved two thirds of the way.
    assert rates[config.kp] == 2e-4 and rates[config.kp + 199] == 2e-4
    assert rates[config.kp + 200] == 1e-4 and rates[-1] == 1e-4


def test_cosine_schedule_decays_over_the_whole_run():
    config = TrainConfig.of_protocol("cosine", steps=100)
    assert config.kp == 60 and config.betas == (0.9, 0.999) and not config.prune_edges
    rates = [learning_rate(config, step) for step in range(config.steps)]
    assert rates[0] == config.lr and all(a > b for a, b in zip(rates, rates[1:], strict=False))


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(IsspError, match="unknown protocol 'paper'"):
        TrainConfig.of_protocol("paper")


def test_setup_run_gives_every_method_of_a_seed_the_same_initial_weights():
    config = tiny(seed=3)
    issp, iht = setup_run(config, method="issp"), setup_run(config, method="iht")
    for a, b in zip(issp.model.parameters(), iht.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(
        next(setup_run(tiny(seed=4)).model.parameters()), next(issp.model.parameters())
    )


@pytest.mark.parametrize("prune_edges", [True, False])
def test_two_stage_prunes_the_edges_as_told_and_records_its_protocol(tmp_path, prune_edges):
    config = TrainConfig.of_protocol(
        "two-stage", steps=8, batch_size=2, patch=16, val_every=8, workers=0, ratio=0.5,
        prune_edges=prune_edges,
    )  # fmt: skip
    out = tmp_path / "two.safetensors"
    train(config, out, progress=False)
    model, meta = load_checkpoint(out)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert (f"{convs[0]}.weight" in meta["pruned_layers"]) == prune_edges
    assert (f"{convs[-1]}.weight" in meta["pruned_layers"]) == prune_edges
    assert f"{convs[1]}.weight" in meta["pruned_layers"]
    assert meta["protocol"] == "two-stage" and meta["schedule"] == "two-stage"
    assert meta["betas"] == [0.9, 0.99] and meta["precision"] == "channels-last"  # edsr's


def test_each_architecture_trains_in_its_faster_layout_unless_told():
    assert TrainConfig(arch="edsr-tiny").precision == "channels-last"
    assert TrainConfig(arch="swinir-tiny").precision == "fp32"
    assert TrainConfig(arch="edsr-tiny", channels_last=False).precision == "fp32"
    # A study's registered arithmetic is stated, not defaulted: seeds 3-4 stay fp32 eager.
    assert {run.config.precision for run in study.default_plan(None)} == {"fp32"}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "dense"])
def test_bf16_channels_last_run_trains_and_saves_an_exactly_sparse_checkpoint(
    tmp_path, monkeypatch, method
):
    monkeypatch.setattr(pruning, "RIGL_INTERVAL", 2)  # RigL's exchanges happen before Kp
    out = tmp_path / "fast.safetensors"
    config = tiny(bf16=True, channels_last=True, ratio=0.75, method=method)
    history = train(config, out, progress=False)
    assert all(math.isfinite(loss) for loss in history["loss"])
    model, meta = load_checkpoint(out)
    assert meta["precision"] == "bf16"
    params = dict(model.named_parameters())
    for name in meta["pruned_layers"]:
        assert params[name].is_contiguous()
        assert int((params[name] == 0).sum()) == math.ceil(0.75 * params[name].numel())
