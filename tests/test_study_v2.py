import json
import math
from pathlib import Path

import pytest
from filelock import FileLock

from issp import IsspError
from issp.checkpoint import load_checkpoint
from issp.evaluate import evaluate_folder
from issp.study import v2
from issp.study.plan import REPORT_DIR, RunFolders
from issp.study.v2 import EDSR, GRID_SEEDS, SWINIR, Grid, Setting


def score(config) -> float:
    """Validation PSNR of a grid run: each method peaks at its own rate; ISS-P at alpha 0.9."""
    best = {"dense": 3e-3, "iht": 1e-2, "issp": 3e-3, "gmp": 1e-3, "rigl": 3e-3}[config.method]
    value = 31.0 - abs(config.lr - best) * 200 + config.seed * 0.001
    if config.method == "issp":
        value += {0.9: 0.05, 0.95: 0.0, 0.99: -0.05}[config.alpha]
    return value


def complete(grid: Grid, done: dict) -> list[list[str]]:
    """Run the grid to its end on ``score``; the names asked for at each step."""
    asked = []
    while runs := grid.next_runs():
        asked.append([run.name for run in runs])
        for run in runs:
            done[run.name] = {"val_psnr": score(run.config)}
    return asked


def test_the_grid_screens_extends_an_edge_and_picks_each_method_its_own_setting():
    done: dict = {}
    grid = Grid(EDSR, done, None, "bf16")
    asked = complete(grid, done)
    first = asked[0]
    # Step one: every rate at the first grid seed, both ratios (dense once).
    assert len(first) == 3 + 4 * 3 * 2 and all(
        name.endswith(f"_s{GRID_SEEDS[0]}") for name in first
    )
    chosen = grid.choice()
    assert chosen["dense"] == Setting("dense", 3e-3)
    assert chosen["gmp"].lr == 1e-3 and chosen["rigl"].lr == 3e-3
    # IHT's best was the top of the grid: 3e-2 ran beyond it, and lost to 1e-2.
    assert chosen["iht"].lr == 1e-2
    assert any("iht_r0.9_lr0.03" in name for step in asked for name in step)
    # ISS-P's alpha is chosen at its chosen rate.
    assert chosen["issp"] == Setting("issp", 3e-3, 0.9)
    # The screen: 1e-2 is 1.4 dB behind for ISS-P at seed 100, so it never ran at 101.
    names = {name for step in asked for name in step}
    assert "edsr-tiny_x2_issp_r0.9_a0.95_lr0.01_edges-dense_bf16_s101" not in names
    assert grid.screened["issp"] == [1e-2]


def test_a_diverged_rate_loses_whatever_its_place_among_the_rates():
    done: dict = {}
    grid = Grid(EDSR, done, None, "bf16")
    while runs := grid.next_runs(("iht",)):
        for run in runs:  # the grid's first rate blows up; a NaN first in max() won every test
            diverged = run.config.lr == 1e-3
            done[run.name] = {"val_psnr": math.nan if diverged else score(run.config)}
    assert grid.choice(("iht",))["iht"].lr == 1e-2 and 1e-3 in grid.screened["iht"]


def test_the_grid_is_a_function_of_the_finished_runs():
    done: dict = {}
    complete(Grid(EDSR, done, None, "bf16"), done)
    again = Grid(EDSR, dict(done), None, "bf16")
    assert again.next_runs() == [] and again.choice() == Grid(EDSR, done, None, "bf16").choice()


def test_swinir_takes_edsr_alpha_and_tunes_only_rates():
    done: dict = {}
    grid = Grid(SWINIR, done, None, "fp32", issp_alpha=0.9)
    asked = complete(grid, done)
    assert grid.choice()["issp"].alpha == 0.9
    assert not any("_a0.99_" in name for step in asked for name in step)


def test_the_study_runs_every_cell_at_five_seeds():
    chosen = {m: Setting(m, 3e-3) for m in v2.METHODS}
    assert len(v2.study_runs(EDSR, chosen, None, "bf16")) == 5 * 2 * (1 + 3 * 4)
    assert len(v2.study_runs(SWINIR, chosen, None, "fp32")) == 5 * (1 + 2 * 4)


def test_the_arithmetic_waits_for_the_precision_decision(tmp_path):
    decision = tmp_path / "precision.json"
    decision.write_text(json.dumps({"adopted": None}))
    with pytest.raises(IsspError, match="not decided"):
        v2.precision_of(EDSR, decision)
    decision.write_text(json.dumps({"adopted": True}))
    assert v2.precision_of(EDSR, decision) == "bf16"
    decision.write_text(json.dumps({"adopted": False}))
    assert v2.precision_of(EDSR, decision) == "channels-last"
    assert v2.precision_of(SWINIR, decision) == "fp32"


def test_training_needs_the_test_sets_it_scores_on():
    with pytest.raises(IsspError, match="give --test"):
        v2.run(None, None, jobs=1, threads=1)


def test_the_grid_report_lists_every_finished_run_with_its_score():
    done: dict = {}
    grid = Grid(EDSR, done, None, "bf16")
    for run in grid.next_runs(("iht",))[:2]:
        done[run.name] = {"config": {"arch": EDSR} | vars(run.config), "val_psnr": 33.25}
    text = "\n".join(v2._runs_markdown(EDSR, done))
    assert all(f"| {name} | 33.250 |" in text for name in done)
    assert v2._runs_markdown(SWINIR, done) == []


def test_only_the_runs_the_grid_chose_count_in_the_claims():
    done: dict = {}
    complete(Grid(EDSR, done, None, "bf16"), done)
    planned = v2.planned_names(done)
    assert len(planned) == 5 * 2 * (1 + 3 * 4)  # the edsr-tiny study; swinir's grid not run
    assert "edsr-tiny_x2_iht_r0.9_lr0.01_edges-dense_bf16_s0" in planned
    assert "edsr-tiny_x2_iht_r0.9_lr0.003_edges-dense_bf16_s0" not in planned


def alpha_step_left() -> dict:
    """Finished edsr-tiny grid runs of phase 1, every choice made but ISS-P's alpha."""
    done: dict = {}
    grid, first = Grid(EDSR, done, None, "bf16"), ("dense", "iht", "issp")
    alphas = ("_a0.9_", "_a0.99_")
    while runs := [r for r in grid.next_runs(first) if not any(a in r.name for a in alphas)]:
        for run in runs:
            done[run.name] = {"val_psnr": score(run.config)}
    return done


def test_steps_follow_the_protocol_s_order_and_wait_only_for_what_they_need():
    steps = v2.steps_from(alpha_step_left(), {}, None)
    assert [s.what for s in steps] == [
        "edsr-tiny grid (dense, iht, issp)",  # ISS-P's alpha step
        "edsr-tiny study (dense, iht)",  # chosen already: they need not wait for it
        "edsr-tiny grid (gmp, rigl)",
        "swinir-tiny grid (dense, iht, gmp, rigl)",  # its ISS-P waits for edsr-tiny's alpha
    ]
    assert all("_a0.9_" in r.name or "_a0.99_" in r.name for r in steps[0].runs)
    assert len(steps[1].runs) == 5 * 2 * (1 + 3)
    assert not any("issp" in r.name for r in steps[3].runs)


def test_a_process_goes_on_to_the_next_step_while_the_other_holds_the_first(tmp_path):
    folders = RunFolders(tmp_path / "work", tmp_path / "results")
    steps = v2.steps_from(alpha_step_left(), {}, None)
    steps = [v2.Step(s.what, s.runs, folders, s.scored) for s in steps]
    assert v2.next_batch(steps, jobs=2) == (steps[0], steps[0].runs)  # all of the first
    held = [FileLock(folders.work / f"{r.name}.lock", timeout=0) for r in steps[0].runs]
    for lock in held:  # the other process trains every run of the alpha step
        lock.acquire()
    step, runs = v2.next_batch(steps, jobs=2)
    assert step is steps[1] and runs == steps[1].runs[:2]  # a few at a time, then look again
    for run in steps[1].runs + steps[2].runs + steps[3].runs:
        folders.results.mkdir(exist_ok=True)
        run.result_path(folders.results).write_text("{}")
    assert v2.next_batch(steps, jobs=2) is None  # every run left is in other hands: wait
    for lock in held:
        lock.release()


CLAIMS_RUNS = REPORT_DIR / "study_runs" / "claims"
TEST_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "test"


@pytest.mark.skipif(not TEST_DATA.is_dir(), reason=f"benchmark images not found at {TEST_DATA}")
@pytest.mark.parametrize(
    "name",
    [
        "edsr-tiny_x4_issp_r0.95_a0.99_lr0.003_edges-dense_bf16_s3",
        "edsr-tiny_x2_rigl_r0.99_lr0.003_edges-dense_bf16_s4",
    ],
)
def test_a_committed_study_score_is_recomputed_from_its_checkpoint(name):
    committed = json.loads((CLAIMS_RUNS / f"{name}.json").read_text())
    model, meta = load_checkpoint(CLAIMS_RUNS / f"{name}.safetensors")
    for key, folder in (("set5", "Set5"), ("set14", "Set14")):
        again = evaluate_folder(model, TEST_DATA / folder, int(meta["scale"]))["images"]
        rows = committed[key]["images"]
        assert [(r["name"], r["psnr"]) for r in again] == [(r["name"], r["psnr"]) for r in rows]
        # SSIM's filter is a BLAS matrix product, whose last bit varies with its threads.
        assert [r["ssim"] for r in again] == pytest.approx([r["ssim"] for r in rows], abs=1e-12)
