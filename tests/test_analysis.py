import json
import math
import threading
import time

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from conftest import photo, write_stored_run

from analysis.lockstep import (
    MAX_STEPS,
    LockstepConfig,
    alpha_sweep,
    from_json,
    run_lockstep,
    run_to_end,
    summarize,
    to_json,
)
from analysis.plots import FIGURES, MAX_POINTS, binned, save_figures
from analysis.stored import list_stored, load_stored, stored_pairs
from issp import IsspError
from issp.cli import main


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one torch thread, most of all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three small smooth photos: two to train on, one held out for validation."""
    folder = tmp_path_factory.mktemp("images")
    for seed in range(3):
        photo(64, 64, seed=seed).save(folder / f"photo{seed}.png")
    return folder


def tiny(images, **overrides) -> LockstepConfig:
    settings = {
        "steps": 12,
        "batch_size": 2,
        "patch": 8,
        "val_every": 6,
        "val_crop": 32,
        "data": str(images),
    }
    return LockstepConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def issp_vs_iht(images):
    """ISS-P (alpha 0.99) against IHT at ratio 0.9: the comparison most tests read."""
    return run_to_end(tiny(images, ratio=0.9, alpha=0.99))


def test_methods_start_from_the_same_weights_and_see_the_same_batches(images, issp_vs_iht):
    # IHT of ratio 0 prunes nothing, so it must retrace dense training exactly.
    result = run_to_end(tiny(images, ratio=0.0, methods=("dense", "iht")))
    np.testing.assert_array_equal(result.series["dense"].loss, result.series["iht"].loss)
    np.testing.assert_array_equal(result.series["dense"].psnr, result.series["iht"].psnr)
    # The first loss is measured before any pruning step, so every method shares it.
    losses = issp_vs_iht.series
    assert losses["issp"].loss[0] == losses["iht"].loss[0]
    assert losses["issp"].loss[1] != losses["iht"].loss[1]


def test_snapshots_come_every_few_steps_and_grow(images):
    snapshots = list(run_lockstep(tiny(images, steps=7, methods=("issp",)), every=3))
    assert [s.step for s in snapshots] == [3, 6, 7]
    assert [s.finished for s in snapshots] == [False, False, True]
    for snapshot in snapshots:
        series = snapshot.series["issp"]
        assert len(series.loss) == snapshot.step
        assert series.flips.shape == (snapshot.step, len(snapshot.layers))
        assert len(series.kept_weights) + len(series.selected_weights) > 0


def test_stop_event_ends_the_run_promptly_and_restores_torch_threads(images):
    stop = threading.Event()
    torch.set_num_threads(2)
    run = run_lockstep(tiny(images, steps=200, threads=1), stop=stop, every=2)
    first = next(run)
    assert torch.get_num_threads() == 1
    stop.set()
    started = time.monotonic()
    assert list(run) == []
    assert time.monotonic() - started < 2
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


def test_figures_build_and_save_as_png_and_offline_html(issp_vs_iht, tmp_path):
    for build in FIGURES.values():
        assert isinstance(build(issp_vs_iht), go.Figure)
    paths = save_figures(issp_vs_iht, tmp_path)
    assert {p.name for p in paths} == {f"{name}.png" for name in FIGURES} | {"dynamics.html"}
    assert all(p.stat().st_size > 1000 for p in paths)
    page = (tmp_path / "dynamics.html").read_text()
    assert "<script src=" not in page and "Mask entries flipped" in page


def test_long_series_are_binned_for_display():
    steps, values = binned(np.arange(5000.0))
    assert len(steps) <= MAX_POINTS and len(values) == len(steps)
    assert values[0] == pytest.approx(steps[0] - 1)
    _, layered = binned(np.ones((4321, 3)))
    assert layered.shape[1] == 3 and len(layered) <= MAX_POINTS


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


def test_alpha_sweep_yields_a_growing_table_and_alpha_zero_is_iht(images):
    tables = list(alpha_sweep(tiny(images, steps=4), [0.0, 0.99]))
    assert [len(t) for t in tables] == [1, 2]
    assert [row["method"] for row in tables[-1]] == ["iht", "issp"]
    assert all(math.isfinite(row["psnr"]) for row in tables[-1])
    with pytest.raises(IsspError):
        next(alpha_sweep(tiny(images), [1.5]))


def test_stored_runs_load_as_a_pair_and_plot(tmp_path):
    for method in ("issp", "iht"):
        write_stored_run(tmp_path, method, 0.9)
    write_stored_run(tmp_path, "issp", 0.5)
    (tmp_path / "notes.npz").write_bytes(b"")
    assert [r.name for r in list_stored(tmp_path)] == [
        "edsr-tiny_x2_iht_r0.9",
        "edsr-tiny_x2_issp_r0.5",
        "edsr-tiny_x2_issp_r0.9",
    ]
    assert stored_pairs(tmp_path) == [("edsr-tiny", 2, 0.9)]
    pair = load_stored("edsr-tiny", 2, 0.9, directory=tmp_path)
    assert set(pair.series) == {"issp", "iht"} and pair.step == 5 and pair.finished
    assert pair.series["issp"].flips.shape == (5, len(pair.layers))
    for build in FIGURES.values():
        build(pair)
    with pytest.raises(IsspError, match="no stored telemetry"):
        load_stored("edsr-tiny", 2, 0.5, directory=tmp_path)


def test_cli_analyze_then_plot(images, tmp_path, capsys):
    out = tmp_path / "run.json"
    args = ["analyze", "--steps", "4", "--batch-size", "2", "--patch", "8", "--val-every", "2"]
    assert main([*args, "--data", str(images), "--json", str(out)]) == 0
    assert "Mask entries flipped" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [len(m["loss"]) for m in data["methods"].values()] == [4, 4]
    assert main(["plot", str(out), "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "dynamics.html").exists()
    assert (tmp_path / "figures" / "flips.png").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", "--ratio", "1.5", "--json", "x.json"],
        ["analyze", "--methods", "issp,magic", "--json", "x.json"],
        ["analyze", "--steps", str(MAX_STEPS + 1), "--json", "x.json"],
        ["analyze", "--steps", "10"],
        ["plot", "missing.json", "--out", "figures"],
    ],
)
def test_cli_rejects_bad_arguments_with_exit_code_2(args, capsys):
    assert main(args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_plot_rejects_a_file_that_is_not_a_result(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["plot", str(tmp_path / "bad.json"), "--out", str(tmp_path)]) == 2
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert main(["plot", str(tmp_path / "other.json"), "--out", str(tmp_path)]) == 2


def test_loss_figure_shows_the_two_stage_learning_rate(images):
    final = run_to_end(tiny(images, protocol="two-stage", lr=2e-4, steps=12, prune_steps=3))
    rate = [t for t in FIGURES["loss"](final).data if t.name == "learning rate"][0]
    assert len(rate.y) == 12
    # Constant while pruning, the full rate again when fine-tuning starts, then halved.
    assert list(rate.y[:3]) == [2e-4] * 3 and rate.y[3] == 2e-4 and rate.y[-1] == 1e-4
