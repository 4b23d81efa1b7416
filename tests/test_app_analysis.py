"""The app's dynamics tabs (analysis.live) as plain functions, on tiny runs; no server."""

import json
import threading
import time

import plotly.graph_objects as go
import pytest
import torch
from conftest import photo, write_stored_run

from analysis import live
from analysis.lockstep import MAX_STEPS, LockstepConfig
from analysis.plots import FIGURES
from issp import IsspError, service


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    """Runs set one torch thread while they live; leave the setting as it was."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> LockstepConfig:
    """What the user does not pick, shrunk: three 64 px photos, 8 px patches, batch 2."""
    folder = tmp_path_factory.mktemp("photos")
    for seed in range(3):
        photo(64, 64, seed=seed).save(folder / f"photo{seed}.png")
    return LockstepConfig(batch_size=2, patch=8, val_every=6, val_crop=32, data=str(folder))


def config(base, steps=12, **overrides) -> LockstepConfig:
    request = {
        "arch": "edsr-tiny",
        "scale": 2,
        "ratio": 0.9,
        "alpha": 0.99,
        "steps": steps,
        "prune_steps": None,
        "seed": 0,
        "extra": (),
    }
    return live.live_config(**(request | overrides), base=base)


def session_run(runs, session, run_config, folders, every=3):
    """What the app's Train handler does, minus the UI: wait in line, then run."""
    with runs.admitted(session) as run:
        for status in runs.wait(run, every=0.05):
            yield live.LiveView((None,) * len(FIGURES), status)
        yield from live.live_run(run_config, run.stop, folders.new, every)


def test_a_run_streams_snapshots_then_a_summary_and_its_json(base, tmp_path):
    folders = service.ResultFolders(tmp_path)
    views = list(live.live_run(config(base), threading.Event(), folders.new, every=3))
    assert len(views) == 4
    assert [v.status.split(" step ")[1].split(" of")[0] for v in views[:3]] == ["3", "6", "9"]
    for view in views:
        assert len(view.figures) == len(FIGURES)
        assert all(isinstance(f, go.Figure) for f in view.figures)
    assert all(v.download is None for v in views[:3])
    final = views[-1]
    assert final.status.startswith("**Finished** all 12 steps")
    assert "Mask entries flipped" in final.status
    data = json.loads(final.download.read_text())
    assert data["finished"] and data["step"] == 12
    assert set(data["methods"]) == {"issp", "iht"}
    assert len(data["methods"]["issp"]["loss"]) == 12


def test_with_alpha_099_issp_flips_more_of_its_mask_than_iht(base, tmp_path):
    folders = service.ResultFolders(tmp_path)
    final = list(live.live_run(config(base, steps=20), threading.Event(), folders.new))[-1]
    flips = json.loads(final.download.read_text())["methods"]
    total = {m: sum(sum(layer) for layer in flips[m]["flips"].values()) for m in flips}
    assert total["issp"] > total["iht"]
    assert "ISS-P's mask kept moving" in final.status


def test_the_run_uses_one_torch_thread_and_the_chosen_methods(base):
    assert LockstepConfig().threads == 1
    chosen = config(base, extra=["GMP", "dense"], prune_steps=5)
    assert chosen.methods == ("issp", "iht", "dense", "gmp")
    assert (chosen.prune_steps, chosen.threads) == (5, 1)
    # The UI's number box sends 0 when left alone: Kp is then 60% of the steps.
    assert config(base, steps=100, prune_steps=0).train_config().kp == 60


def test_stop_ends_a_run_at_once(base, tmp_path):
    stop = threading.Event()
    folders = service.ResultFolders(tmp_path)
    views = live.live_run(config(base, steps=MAX_STEPS), stop, folders.new, every=2)
    assert "step 2 of 2,000" in next(views).status
    stop.set()
    started = time.monotonic()
    final = next(views)
    assert time.monotonic() - started < 5
    assert final.status.startswith("**Stopped** at step 2 of 2,000")
    assert json.loads(final.download.read_text())["step"] == 2
    with pytest.raises(StopIteration):
        next(views)


def test_a_second_run_from_the_same_session_stops_the_first(base, tmp_path):
    runs, folders = live.LiveRuns(capacity=2, slots=1), service.ResultFolders(tmp_path)
    first = session_run(runs, "alice", config(base, steps=MAX_STEPS), folders)
    assert "Running" in next(first).status
    second = session_run(runs, "alice", config(base), folders)
    # It waits only for the first to end at its next step, and takes its place.
    assert next(second).status.startswith("**Waiting:** 1 run ahead of yours")
    assert list(first)[-1].status.startswith("**Stopped**")
    assert list(second)[-1].status.startswith("**Finished**")
    assert runs.active() == 0, "finished runs leave nothing behind"


def test_runs_wait_their_turn_and_past_the_bound_are_refused_at_once(base, tmp_path):
    runs, folders = live.LiveRuns(capacity=2, slots=1), service.ResultFolders(tmp_path)
    alice = session_run(runs, "alice", config(base, steps=MAX_STEPS), folders)
    bob = session_run(runs, "bob", config(base), folders)
    next(alice)
    assert next(bob).status.startswith("**Waiting:** 1 run ahead of yours")
    carol = session_run(runs, "carol", config(base), folders)
    with pytest.raises(IsspError, match="the server is busy training: 2 runs"):
        next(carol)
    assert runs.active() == 2, "a refused run takes no place"
    # A session already in line may replace its run while the line is full.
    again = session_run(runs, "alice", config(base, steps=MAX_STEPS), folders)
    assert "Waiting" in next(again).status
    alice.close(), again.close()
    assert list(bob)[-1].status.startswith("**Finished**"), "bob's turn came"
    assert runs.active() == 0


def test_stop_reaches_a_waiting_run_and_a_closed_one_leaves_the_line(base, tmp_path):
    runs, folders = live.LiveRuns(capacity=3, slots=1), service.ResultFolders(tmp_path)
    alice = session_run(runs, "alice", config(base, steps=MAX_STEPS), folders)
    next(alice)
    bob = session_run(runs, "bob", config(base), folders)
    carol = session_run(runs, "carol", config(base), folders)
    next(bob), next(carol)
    assert runs.stop("bob")
    views = list(bob)
    assert views[-1].status == "**Stopped** before the first snapshot."
    assert views[-1].figures == (None,) * len(FIGURES)
    # A client that goes while its run waits: Gradio drops the stream, closing it.
    assert next(carol).status.startswith("**Waiting:** 1 run ahead")
    carol.close()
    assert runs.active() == 1 and not runs.stop("carol")
    alice.close()
    assert runs.active() == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": MAX_STEPS + 1}, f"at most {MAX_STEPS} steps"),
        ({"steps": 12.5}, "steps must be a whole number"),
        ({"steps": "many"}, "steps must be a whole number"),
        ({"arch": "swinir-light"}, "architecture must be one of edsr-tiny, swinir-tiny"),
        ({"extra": ["L1"]}, "extra methods must be among dense, GMP"),
        ({"prune_steps": 50}, "need 1 <= prune-steps <= steps"),
        ({"prune_steps": -5}, "pruning stage must be at least 1, got -5"),
        ({"alpha": 1.0}, r"alpha must be in \(0, 1\)"),
        ({"ratio": 1.2}, r"pruning ratio must be in \[0, 1\)"),
        ({"scale": 8}, "scale must be from 2 to 4, got 8"),
        ({"seed": -1}, "seed must be from 0 to 2,147,483,647, got -1"),
        ({"seed": 2**63}, "seed must be from 0 to 2,147,483,647, got 9223372036854775808"),
        ({"seed": 10**400}, "seed must be a whole number, got 1000"),
        ({"extra": "GMP"}, "extra methods must be among dense, GMP, got 'GMP'"),
        ({"extra": [["GMP"]]}, "extra methods must be among dense, GMP"),
    ],
)
def test_bad_requests_get_a_message_for_the_user(base, overrides, message):
    with pytest.raises(IsspError, match=message):
        config(base, **overrides)


@pytest.mark.parametrize("field", ["arch", "ratio", "steps", "seed", "extra"])
def test_a_huge_argument_is_quoted_back_in_80_characters(base, field):
    with pytest.raises(IsspError) as err:
        config(base, **{field: "9" * 10**6})
    message = str(err.value)
    assert len(message) < 200 and "9" * 80 not in message


def test_the_app_shows_a_streaming_handler_s_errors_to_the_user(base):
    import gradio as gr

    import app

    @app.shown_to_user
    def streams():
        yield config(base, steps=MAX_STEPS + 1)

    with pytest.raises(gr.Error, match="at most 2000 steps"):
        next(streams())


def test_the_alpha_sweep_streams_a_row_per_alpha(base):
    views = list(live.sweep_run(config(base, steps=6), [0.99, 0.0], threading.Event()))
    assert [len(v.rows) for v in views] == [0, 1, 2]
    assert views[0].figure is None and isinstance(views[-1].figure, go.Figure)
    assert [row["method"] for row in views[-1].rows] == ["iht", "issp"]
    assert views[-1].status.startswith("**Finished** 2 runs of 6 steps")
    assert views[0].status == "**Running** alpha 0 (IHT) (1 of 2)."
    assert views[1].status == "**Running** alpha 0.99 (2 of 2)."


def test_a_stopped_sweep_says_how_far_it_got(base):
    stop = threading.Event()
    views = live.sweep_run(config(base, steps=6), [0.0, 0.5, 0.99], stop)
    next(views), next(views)
    stop.set()
    assert [v.status for v in views] == ["**Stopped** after 1 of 3 alphas."]


@pytest.mark.parametrize(
    ("alphas", "steps", "message"),
    [
        ([], 10, "pick at least one alpha"),
        ([0.5, 1.0], 10, r"alphas must be in \[0, 1\)"),
        ([0.0, 0.5, 0.9], MAX_STEPS // 2, f"at most {MAX_STEPS:,} steps in all"),
    ],
)
def test_bad_sweeps_are_refused(alphas, steps, message):
    with pytest.raises(IsspError, match=message):
        live.sweep_alphas(alphas, steps)


def test_stored_tab_without_telemetry_says_so(tmp_path):
    assert live.stored_choices(tmp_path) == []
    view = live.stored_view(tmp_path / "missing", None)
    assert "No stored dynamics yet" in view.status
    assert view.figures == (None,) * len(FIGURES)


def test_stored_tab_draws_a_stored_pair_with_its_dense_run(tmp_path):
    for method, ratio in (("issp", 0.9), ("iht", 0.9), ("dense", 0.0)):
        write_stored_run(tmp_path, method, ratio)
    assert live.stored_choices(tmp_path) == ["edsr-tiny x2, ratio 0.9"]
    view = live.stored_view(tmp_path, None)
    assert all(isinstance(f, go.Figure) for f in view.figures)
    assert "Mask entries flipped: ISS-P" in view.status and "dense 0" in view.status
    with pytest.raises(IsspError, match="no stored run"):
        live.stored_view(tmp_path, "edsr-tiny x4, ratio 0.5")


def test_training_events_wait_in_their_own_bounded_line(fake_zoo, tmp_path):
    import app

    demo = app.build_app(
        service.ModelZoo(fake_zoo), service.Limits(), None, [], service.ResultFolders(tmp_path)
    )
    public = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"train_live", "stop_live", "alpha_sweep", "stored", "stored_settings"} <= set(public)
    # Never in Gradio's queue for long, so it always has room for upscaling.
    for name in ("train_live", "alpha_sweep"):
        assert public[name].concurrency_limit is None
    assert (app.TRAINING_SLOTS, app.TRAINING_RUNS) == (1, 4)
    # Stop must never wait behind the run it stops.
    assert public["stop_live"].concurrency_limit is None
    assert sorted(sum(app.FIGURE_TABS.values(), ())) == sorted(FIGURES), "every figure shown"
