"""The one-machine check of C6: the machine effect on ISS-P and C6's calls redone."""

import copy
import json
import re

import pytest
from test_claims import make_results

from issp import IsspError
from issp.study import machine_check
from issp.study.claims import EDSR_CELLS
from issp.study.claims_report import checks_markdown


def retrained(results, shift):
    """ISS-P's runs of ``results`` as if retrained on the other machine, ``shift`` dB off."""
    again = [copy.deepcopy(r) for r in results if r["config"]["method"] == "issp"]
    for run in again:
        for key in ("set5", "set14"):
            run[key]["psnr"] += shift
    return again


def registered(calls):
    """A claims.json whose C6 made ``calls`` against GMP and RigL in every edsr-tiny cell."""
    evidence = [
        {"cell": cell.label, "rival": rival, "call": calls}
        for cell in EDSR_CELLS
        for rival in ("iht", "gmp", "rigl")
    ]
    return {"claims": [{"claim": "C6", "evidence": evidence}]}


@pytest.fixture(scope="module")
def tied():
    return make_results(lambda cell: 0.0, cells=EDSR_CELLS)


def test_a_machine_that_shifts_iss_p_is_measured_and_c6_redone_names_every_changed_call(tied):
    result = machine_check.summary(tied, retrained(tied, 0.3), registered("tie"))
    set5 = result["set5"]
    assert set5["machine_effect_over_cells"]["mean"] == pytest.approx(0.3)
    assert set5["machine_effect"]["edsr-tiny x4 0.99"]["differences"] == pytest.approx([0.3] * 5)
    assert {(t["call"], t["registered"]) for t in set5["c6_one_machine"]} == {("ahead", "tie")}
    assert len(set5["c6_one_machine"]) == 12
    assert set5["reading"].startswith("a machine effect of +0.300 dB [+0.300, +0.300]; ")
    assert (
        "agrees with the registered C6 in 0 of 12 comparisons (edsr-tiny x2 0.9 vs gmp: "
        in (set5["reading"])
    )
    table = machine_check.results_markdown(result, "cmd")
    row = r"\| edsr-tiny x2 0.9 \| gmp \| \+0\.\d{3} \[.*\] \| .* \| ahead \| tie \|"
    assert re.search(row, table)


def test_no_machine_effect_leaves_c6_as_registered(tied):
    result = machine_check.summary(tied, retrained(tied, 0.0), registered("tie"))
    assert result["set5"]["reading"] == (
        "no machine effect shown (+0.000 dB [+0.000, +0.000]); "
        "C6 on one machine agrees with the registered C6 in 12 of 12 comparisons"
    )


def test_an_unfinished_check_reads_only_what_it_has(tied):
    some = [r for r in retrained(tied, 0.1) if r["config"]["seed"] < 3]
    some = [r for r in some if r["config"]["scale"] == 4 or r["config"]["seed"] == 0]
    set5 = machine_check.summary(tied, some, registered("tie"))["set5"]
    assert set5["reading"].startswith("machine effect: not yet two seeds retrained in every cell")
    assert set5["machine_effect"]["edsr-tiny x4 0.9"]["mean"] == pytest.approx(0.1)
    assert set5["machine_effect"]["edsr-tiny x2 0.9"]["interval95"] is None
    assert set5["c6_one_machine"] == []


def test_it_trains_only_on_the_machine_gmp_and_rigl_trained_on(tmp_path):
    with pytest.raises(IsspError, match="this check trains on Intel.* only; this machine is AMD"):
        machine_check.run(None, tmp_path, 1, 1, machine="AMD EPYC, 2 cores, torch 2.13.0+cpu")


def test_the_claims_report_points_to_the_check_s_reading(tied, tmp_path):
    result = machine_check.summary(tied, retrained(tied, 0.0), registered("tie"))
    (tmp_path / "machine-check.json").write_text(json.dumps(result))
    text = checks_markdown(tmp_path)
    assert "- C6 with every run on one machine (`analysis/machine-check.md`, 30 of 30 runs): " in (
        text
    )
    assert text.rstrip().endswith(f"{result['set5']['reading']}.")
