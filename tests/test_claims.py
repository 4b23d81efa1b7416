import numpy as np
import pytest

from issp import IsspError
from issp.study.claims import CELLS, SEEDS, diverged
from issp.study.claims_report import (
    cell_means,
    claim_rows,
    claims_json,
    claims_markdown,
    secondary_rows,
)
from issp.study.stats import holm


def make_results(gap, cells=CELLS, rivals=None, flips=(2000, 1000), cv=(0.2, 0.4), noise=0.01):
    """Run files for every cell, method and seed: IHT, GMP and RigL score 30 dB (+ seed
    noise), ISS-P 30 + gap(cell) (+ its own noise; a tuple gives one gap per seed);
    ``rivals`` shifts a rival per cell."""
    rng = np.random.default_rng(0)
    results = []
    for cell in cells:
        for seed in SEEDS:
            shared = rng.normal(0, noise)
            for method in ("issp", "iht", "gmp", "rigl"):
                psnr = 30.0 + shared + rng.normal(0, noise)
                issp_gap = gap(cell)[seed] if isinstance(gap(cell), tuple) else gap(cell)
                psnr += issp_gap if method == "issp" else (rivals or {}).get((cell, method), 0)
                issp = method == "issp"
                results.append(
                    {
                        "config": {
                            "arch": cell.arch,
                            "scale": cell.scale,
                            "ratio": cell.ratio,
                            "method": method,
                            "seed": seed,
                        },
                        "set5": {"psnr": psnr},
                        "set14": {"psnr": psnr},
                        "dynamics": {
                            "flips_before_kp": (flips[0] if issp else flips[1]) + rng.integers(50)
                        },
                        "gradient_flow": {
                            "grad_cv": (cv[0] if issp else cv[1]) + rng.normal(0, 0.01),
                            "layer_spread": 0.5 + rng.normal(0, 0.01),
                            "loss_end_of_pruning": 0.03 + rng.normal(0, 0.001),
                        },
                    }
                )
    return results


def verdicts(results):
    return {row.claim: row for row in claim_rows(results)}


def test_a_clear_lead_everywhere_supports_c1_c3_c4_c5_and_ranks_issp_first():
    rows = verdicts(make_results(lambda cell: 0.5))
    for claim in ("C1", "C3", "C4", "C5"):
        assert rows[claim].verdict == "supported" and rows[claim].status == "final"
    assert rows["C1"].test.endswith("Holm over the 8 cells")
    assert rows["C6"].test.endswith("Holm over the 24 comparisons")
    assert rows["C6"].verdict.startswith("ISS-P best in 8 of 8 cells; in no cell: ")
    # A constant gap is not amplified: neither slope excludes zero.
    assert rows["C2"].verdict == "ratio: not shown; scale: not shown"


def test_a_loss_is_reported_as_plainly_as_a_win():
    rows = verdicts(make_results(lambda cell: -0.5, flips=(1000, 2000), cv=(0.4, 0.2)))
    for claim in ("C1", "C3", "C4", "C5"):
        assert rows[claim].verdict == "contradicted"
    assert rows["C6"].verdict == (
        "ISS-P behind IHT in 8 of 8 cells; ISS-P behind GMP in 8 of 8 cells; "
        "ISS-P behind RigL in 8 of 8 cells; in no cell: ISS-P best, ISS-P tied with the best"
    )


def test_a_gap_that_grows_with_ratio_and_scale_supports_c2():
    rows = verdicts(make_results(lambda cell: (cell.ratio - 0.9) * 10 + (cell.scale == 4)))
    assert rows["C2"].verdict == "supported"


def test_no_difference_is_not_shown_and_c4_needs_a_majority_of_cells():
    # Gaps that cancel over the seeds: a mean of exactly 0.
    gaps = (0.1, -0.1, 0.2, -0.2, 0.0)
    rows = verdicts(make_results(lambda cell: gaps, flips=(1000, 1000), noise=0.0))
    assert rows["C1"].verdict == "not shown" and rows["C4"].verdict == "not shown"


def test_a_stronger_baseline_in_one_cell_is_named():
    cell = CELLS[0]
    rows = verdicts(make_results(lambda c: 0.5, rivals={(cell, "gmp"): 1.0}))
    assert f"{cell.label}: ISS-P behind GMP (ranks: GMP 1, ISS-P 2, " in rows["C6"].figure
    assert rows["C6"].verdict.startswith("ISS-P best in 7 of 8 cells; ISS-P behind GMP in 1 of 8")


def test_unfinished_cells_make_an_interim_report_and_missing_ones_a_pending_claim():
    results = [r for r in make_results(lambda cell: 0.5) if r["config"]["arch"] == "edsr-tiny"]
    last = CELLS[5]
    rows = verdicts(  # the last edsr cell lacks one ISS-P run
        [
            r
            for r in results
            if (
                r["config"]["ratio"],
                r["config"]["scale"],
                r["config"]["method"],
                r["config"]["seed"],
            )
            != (last.ratio, last.scale, "issp", 4)
        ]
    )
    assert rows["C1"].status == "interim (5 of 8 cells)"
    assert rows["C1"].test.endswith("Holm over the 5 cells in so far (8 at the end)")
    assert rows["C2"].verdict == "pending" and rows["C3"].verdict == "pending"
    text = claims_markdown(claim_rows(results), results, "python -m issp study claims")
    assert text.count("\n| C") == 6 and "**pending**" in text
    assert {row["claim"] for row in claims_json(claim_rows(results))} == {
        f"C{k}" for k in range(1, 7)
    }


@pytest.mark.parametrize("gap", [0.5, -0.5])
def test_holm_is_over_the_claims_cells(gap):
    evidence = verdicts(make_results(lambda cell: gap))["C1"].evidence
    assert len(evidence) == 8 and all(e["p_holm"] >= e["p"] for e in evidence)


def test_a_diverged_run_leaves_only_its_cell_uncalled_and_is_named():
    results = make_results(lambda cell: 0.5)
    broken = next(
        r
        for r in results
        if (r["config"]["method"], r["config"]["seed"]) == ("iht", 2)
        and r["config"]["ratio"] == CELLS[0].ratio
        and r["config"]["scale"] == CELLS[0].scale
        and r["config"]["arch"] == CELLS[0].arch
    )
    broken["set5"]["psnr"] = float("nan")
    rows = verdicts(results)
    assert rows["C1"].verdict == "supported" and rows["C1"].status == "interim (7 of 8 cells)"
    assert all(e["call"] == "ahead" for e in rows["C1"].evidence)
    assert diverged(results) == [f"{CELLS[0].label} iht seed 2 (Set5)"]
    assert rows["C6"].status == "interim (7 of 8 cells)"
    assert rows["C6"].test.endswith("Holm over the 21 comparisons in so far (24 at the end)")


def test_two_runs_of_one_seed_are_refused_not_chosen_between():
    results = make_results(lambda cell: 0.5)
    with pytest.raises(IsspError, match="two issp runs of seed 0"):
        claim_rows([*results, results[0]])


def test_holm_refuses_a_nan_instead_of_pushing_every_later_p_to_one():
    assert holm([0.01, 0.02, 0.03, 0.04]) == pytest.approx([0.04, 0.06, 0.06, 0.06])
    with pytest.raises(IsspError, match="NaN"):
        holm([0.01, float("nan"), 0.02])


def test_set14_is_reported_beside_set5_and_c3_c5_carry_their_reported_figures():
    results = make_results(lambda cell: 0.5)
    secondary = {row.claim: row for row in secondary_rows(results)}
    assert list(secondary) == ["C1", "C2", "C3", "C6"] and "Set14" in secondary["C1"].test
    assert secondary["C1"].verdict == "supported"
    rows = verdicts(results)
    assert "both cells, per seed: +0.49" in rows["C3"].figure
    reported = {e["reported"] for e in rows["C5"].evidence if "reported" in e}
    assert reported == {"loss at the end of pruning", "layer spread"}
    text = claims_markdown(claim_rows(results), results, "cmd", list(secondary.values()))
    assert "## Set14 (secondary" in text and "RigL's limitation" in text
    # Dense, in no test, is the context of every cell of its architecture and scale.
    dense = [r | {"config": r["config"] | {"method": "dense", "ratio": 0.0}} for r in results[:1]]
    table = "\n".join(cell_means(results + dense))
    assert "| edsr-tiny x2 0.99 | 30.500 (n=1) |" in table and "| edsr-tiny x4 0.9 | - |" in table


def test_a_diverged_run_is_counted_in_its_cell_s_context_not_averaged():
    results = make_results(lambda cell: 0.5)
    first = CELLS[0]
    seeds = [
        r
        for r in results
        if r["config"]["method"] == "iht"
        and r["config"]["ratio"] == first.ratio
        and r["config"]["arch"] == first.arch
        and r["config"]["scale"] == first.scale
    ]
    finite = [r["set5"]["psnr"] for r in seeds[1:]]
    seeds[0]["set5"]["psnr"] = float("nan")
    row = next(line for line in cell_means(results) if line.startswith(f"| {first.label} |"))
    iht = row.split(" | ")[3]  # cell, dense, ISS-P, IHT, ...
    assert iht.startswith(f"{np.mean(finite):.3f} ± ") and iht.endswith("(n=4, 1 diverged)")
    for seed in seeds:
        seed["set5"]["psnr"] = float("inf")
    row = next(line for line in cell_means(results) if line.startswith(f"| {first.label} |"))
    assert row.split(" | ")[3] == "- (n=0, 5 diverged)"
