"""Live comparisons and alpha sweeps as streams of views (webapp.live), on tiny runs."""

import json
import threading

import plotly.graph_objects as go
import pytest
import torch
from fixtures import live_request

from analysis import lockstep
from analysis.lockstep import MAX_STEPS, LockstepConfig
from analysis.plots import FIGURES
from issp import IsspError
from issp.selection import PER_LAYER
from issp.train import PROTOCOLS, setup_run
from webapp import live
from webapp.files import ResultFolders

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_streams_snapshots_then_a_summary_and_its_json(live_base, tmp_path):
    folders = ResultFolders(tmp_path)
    views = list(live.live_run(live_request(live_base), threading.Event(), folders.new, every=3))
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
    # With alpha 0.99 ISS-P's mask moves where IHT's barely does, and the summary says so.
    flips = {m: sum(map(sum, data["methods"][m]["flips"].values())) for m in ("issp", "iht")}
    assert flips["issp"] > flips["iht"]
    assert "ISS-P's mask kept moving" in final.status


def test_the_run_uses_one_torch_thread_and_the_chosen_methods(live_base):
    assert LockstepConfig().threads == 1
    chosen = live_request(live_base, extra=["GMP", "dense"], prune_steps=5)
    assert chosen.methods == ("issp", "iht", "dense", "gmp")
    assert (chosen.prune_steps, chosen.threads) == (5, 1)
    # The UI's number box sends 0 when left alone: Kp is then the protocol's share.
    fraction = PROTOCOLS[LockstepConfig.protocol].kp_fraction
    assert live_request(live_base, steps=100, prune_steps=0).train_config().kp == 100 * fraction


def test_a_pattern_is_read_as_the_cli_reads_it_and_sets_the_ratio(live_base):
    for per_layer in (None, "", PER_LAYER):
        assert live_request(live_base, pattern=per_layer).pattern is None
        assert live.pattern_ratio(per_layer) is None
    assert live_request(live_base, ratio=0.95, pattern=" 19:20").pattern == "19:20"
    assert [live.pattern_ratio(p) for p in live.PATTERNS[1:]] == [0.5, 0.9, 0.95]


def test_a_2_4_run_leaves_at_least_2_zeros_in_every_group_of_4(live_base, tmp_path, monkeypatch):
    made = []

    def recorded(config, model):
        made.append(setup_run(config, model))
        return made[-1]

    monkeypatch.setattr(lockstep, "setup_run", recorded)
    config = live_request(live_base, ratio=0.5, pattern="2:4", extra=["dense", "GMP"])
    final = list(live.live_run(config, threading.Event(), ResultFolders(tmp_path).new))[-1]
    assert "ratio 0.5 in 2:4 groups" in final.status
    assert "_nm2-4_" in final.download.name
    pruners = {run.pruner.method: run.pruner for run in made}
    assert set(pruners) == {"issp", "iht", "dense", "gmp"}
    for method in ("issp", "iht", "gmp"):
        for name, weight in pruners[method].weights.items():
            assert weight.numel() % 4 == 0, "every pruned layer is cut in groups of 4"
            zeros = (weight.detach().reshape(-1, 4) == 0).sum(dim=1)
            assert torch.all(zeros >= 2), (method, name)
    # The pattern shapes magnitude selections only: dense trains as it does without one.
    assert all(torch.all(w != 0) for w in pruners["dense"].weights.values())


def test_a_group_larger_than_a_layer_is_refused_before_training(live_base, tmp_path):
    config = live_request(live_base, ratio=0.5, pattern="5000:10000")
    with pytest.raises(IsspError, match="larger than a layer"):
        next(live.live_run(config, threading.Event(), ResultFolders(tmp_path).new))


def test_stop_ends_a_run_at_once(live_base, tmp_path):
    stop = threading.Event()
    folders = ResultFolders(tmp_path)
    views = live.live_run(live_request(live_base, steps=MAX_STEPS), stop, folders.new, every=2)
    assert "step 2 of 2,000" in next(views).status
    stop.set()
    final = next(views)
    assert final.status.startswith("**Stopped** at step 2 of 2,000")
    assert json.loads(final.download.read_text())["step"] == 2
    with pytest.raises(StopIteration):
        next(views)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": MAX_STEPS + 1}, f"steps must be from 1 to {MAX_STEPS:,}, got {MAX_STEPS + 1}"),
        ({"steps": 12.5}, "steps must be a whole number"),
        ({"steps": "many"}, "steps must be a whole number"),
        ({"arch": "swinir-light"}, "architecture must be one of edsr-tiny, swinir-tiny"),
        ({"extra": ["L1"]}, "extra methods must be among dense, GMP, RigL"),
        ({"prune_steps": 50}, "need 1 <= prune-steps <= steps"),
        ({"prune_steps": -5}, f"pruning stage must be from 1 to {MAX_STEPS:,}, got -5"),
        ({"alpha": 1.0}, r"alpha must be in \(0, 1\)"),
        ({"ratio": 1.2}, r"pruning ratio must be in \[0, 1\)"),
        ({"scale": 8}, "scale must be from 2 to 4, got 8"),
        ({"seed": -1}, "seed must be from 0 to 2,147,483,647, got -1"),
        ({"seed": 2**63}, "seed must be from 0 to 2,147,483,647, got 9223372036854775808"),
        ({"seed": 10**400}, "seed must be a whole number, got 1000"),
        ({"extra": "GMP"}, "extra methods must be among dense, GMP, RigL, got 'GMP'"),
        ({"extra": [["GMP"]]}, "extra methods must be among dense, GMP, RigL"),
        ({"pattern": "2-4"}, "pattern must be 'per layer' or N:M with 0 < N < M, e.g. 2:4"),
        ({"pattern": "4:2"}, "pattern must be 'per layer' or N:M"),
        ({"pattern": ["2:4"]}, "pattern must be 'per layer' or N:M"),
        ({"pattern": "2:4"}, "pattern 2:4 prunes 0.5 of the weights, not 0.9"),
    ],
)
def test_bad_requests_get_a_message_for_the_user(live_base, overrides, message):
    with pytest.raises(IsspError, match=message):
        live_request(live_base, **overrides)


@pytest.mark.parametrize("field", ["arch", "ratio", "steps", "seed", "extra", "pattern"])
def test_a_huge_argument_is_quoted_back_in_80_characters(live_base, field):
    with pytest.raises(IsspError) as err:
        live_request(live_base, **{field: "9" * 10**6})
    message = str(err.value)
    assert len(message) < 200 and "9" * 80 not in message


def test_the_alpha_sweep_streams_a_row_per_alpha(live_base):
    views = list(live.sweep_run(live_request(live_base, steps=6), [0.99, 0.0], threading.Event()))
    assert [len(v.rows) for v in views] == [0, 1, 2]
    assert views[0].figure is None and isinstance(views[-1].figure, go.Figure)
    assert [row["method"] for row in views[-1].rows] == ["iht", "issp"]
    assert views[-1].status.startswith("**Finished** 2 runs of 6 steps")
    assert views[0].status == "**Running** alpha 0 (IHT) (1 of 2)."
    assert views[1].status == "**Running** alpha 0.99 (2 of 2)."


def test_a_stopped_sweep_says_how_far_it_got(live_base):
    stop = threading.Event()
    views = live.sweep_run(live_request(live_base, steps=6), [0.0, 0.5, 0.99], stop)
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
        live.checked_sweep(alphas, steps)


@pytest.mark.parametrize("field", ["steps", "prune_steps"])
def test_a_huge_step_count_is_refused_with_a_short_echo(field):
    settings = {"steps": 300, "prune_steps": 0} | {field: 1e308}
    with pytest.raises(IsspError) as err:
        live.live_config("edsr-tiny", 2, 0.9, 0.95, settings["steps"], settings["prune_steps"], 0)
    assert len(str(err.value)) < 120 and "1e+308" in str(err.value)
