"""ISS-P against IHT trained in lockstep (analysis.lockstep), on tiny runs."""

import dataclasses
import json
import math
import threading

import numpy as np
import pytest
import torch
from fixtures import tiny_lockstep

from analysis.lockstep import (
    LIVE_PROTOCOL,
    MAX_STEPS,
    TRAIN_FIELDS,
    LockstepConfig,
    alpha_sweep,
    from_json,
    run_lockstep,
    run_to_end,
    summarize,
    to_json,
)
from issp import IsspError
from issp.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_methods_start_from_the_same_weights_and_see_the_same_batches(photos, issp_vs_iht):
    # IHT of ratio 0 prunes nothing, so it must retrace dense training exactly.
    result = run_to_end(tiny_lockstep(photos, ratio=0.0, methods=("dense", "iht")))
    np.testing.assert_array_equal(result.series["dense"].loss, result.series["iht"].loss)
    np.testing.assert_array_equal(result.series["dense"].psnr, result.series["iht"].psnr)
    # The first loss is measured before any pruning step, so every method shares it.
    losses = issp_vs_iht.series
    assert losses["issp"].loss[0] == losses["iht"].loss[0]
    assert losses["issp"].loss[1] != losses["iht"].loss[1]


def test_snapshots_come_every_few_steps_and_grow(photos):
    snapshots = list(run_lockstep(tiny_lockstep(photos, steps=7, methods=("issp",)), every=3))
    assert [s.step for s in snapshots] == [3, 6, 7]
    assert [s.finished for s in snapshots] == [False, False, True]
    for snapshot in snapshots:
        series = snapshot.series["issp"]
        assert len(series.loss) == snapshot.step
        assert series.flips.shape == (snapshot.step, len(snapshot.layers))
        assert len(series.kept_weights) + len(series.selected_weights) > 0


def test_stop_event_ends_the_run_promptly_and_restores_torch_threads(photos):
    stop = threading.Event()
    torch.set_num_threads(2)
    run = run_lockstep(tiny_lockstep(photos, steps=200, threads=1), stop=stop, every=2)
    first = next(run)
    assert torch.get_num_threads() == 1
    stop.set()
    assert list(run) == []
    assert first.step == 2
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)


def test_json_round_trip_keeps_one_finite_entry_per_step_per_layer(issp_vs_iht):
    data = json.loads(json.dumps(to_json(issp_vs_iht), allow_nan=False))
    layers = issp_vs_iht.layers
    assert data["layers"] == layers and all(name.endswith(".weight") for name in layers)
    assert set(data["methods"]) == {"issp", "iht"}
    for method in data["methods"].values():
        assert len(method["loss"]) == 12
        assert method["psnr_steps"] == [6, 12] and len(method["psnr"]) == 2
        for key in ("flips", "grad_norm", "sparsity"):
            assert list(method[key]) == layers
            for values in method[key].values():
                assert len(values) == 12
                assert all(v is not None and math.isfinite(v) for v in values)
        assert all(math.isfinite(v) for v in method["loss"] + method["psnr"])
    back = from_json(data)
    for name, series in issp_vs_iht.series.items():
        np.testing.assert_allclose(back.series[name].grad_norm, series.grad_norm, rtol=1e-6)
        np.testing.assert_array_equal(back.series[name].flips, series.flips)
        np.testing.assert_allclose(back.series[name].loss, series.loss, rtol=1e-6)
    assert summarize(back) == data["summary"]


def test_from_json_rejects_other_json():
    with pytest.raises(IsspError):
        from_json({"hello": 1})


def test_issp_moves_the_mask_more_than_iht(issp_vs_iht):
    flips = {name: s.flips.sum() for name, s in issp_vs_iht.series.items()}
    assert flips["issp"] > max(10 * flips["iht"], 100)


def test_summary_states_each_methods_numbers(issp_vs_iht):
    text = summarize(issp_vs_iht)
    for name in ("issp", "iht"):
        series = issp_vs_iht.series[name]
        assert f"{int(series.flips.sum()):,}" in text
        assert f"{series.psnr[-1]:.2f}" in text
    assert "ISS-P" in text and "IHT" in text


def test_config_rejects_settings_no_run_could_use():
    for bad in (
        {"steps": MAX_STEPS + 1},
        {"methods": ("issp", "issp")},
        {"methods": ("issp", "magic")},
        {"methods": ()},
        {"ratio": 1.0},
        {"alpha": 0.0},
        {"prune_steps": 500, "steps": 100},
        {"lr": -1.0},
    ):
        with pytest.raises(IsspError):
            LockstepConfig(**bad).validate()


def test_shared_defaults_are_the_training_protocol_s_and_reach_every_run():
    training = TrainConfig.of_protocol(LIVE_PROTOCOL)
    live = LockstepConfig()
    shared = {spec.name for spec in dataclasses.fields(live)} & TRAIN_FIELDS
    # The ones a live run must differ in (to be watched live), and nothing else.
    differ = {name for name in shared if getattr(live, name) != getattr(training, name)}
    assert differ == {"steps", "batch_size", "patch", "val_every"}
    assert {"arch", "ratio", "alpha", "lr", "protocol", "pattern"} <= shared
    changed = LockstepConfig(**{name: getattr(training, name) for name in differ})
    assert changed.train_config() == dataclasses.replace(training, workers=0)


def test_a_pattern_shapes_the_magnitude_methods_only():
    config = LockstepConfig(ratio=0.5, pattern="2:4", methods=("issp", "iht", "gmp", "dense"))
    config.validate()
    patterns = {m: config.method_config(m).pattern for m in config.methods}
    assert patterns == {"issp": "2:4", "iht": "2:4", "gmp": "2:4", "dense": None}
    with pytest.raises(IsspError, match="pattern 2:4 prunes 0.5 of the weights, not 0.9"):
        LockstepConfig(ratio=0.9, pattern="2:4", methods=("dense",)).validate()


def test_alpha_sweep_yields_a_growing_table_and_alpha_zero_is_iht(photos):
    tables = list(alpha_sweep(tiny_lockstep(photos, steps=4), [0.0, 0.99]))
    assert [len(t) for t in tables] == [1, 2]
    assert [row["method"] for row in tables[-1]] == ["iht", "issp"]
    assert all(math.isfinite(row["psnr"]) for row in tables[-1])
    with pytest.raises(IsspError):
        next(alpha_sweep(tiny_lockstep(photos), [1.5]))
