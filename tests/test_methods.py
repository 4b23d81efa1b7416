"""Names, labels and colours of the pruning methods (issp.methods)."""

from issp.methods import COMPARED, LOCKSTEP, by_label, colour, label
from issp.pruning import METHODS


def test_every_method_compared_anywhere_is_one_the_pruner_runs():
    assert set(LOCKSTEP) <= set(METHODS) and LOCKSTEP[:2] == COMPARED == ("issp", "iht")


def test_labels_and_colours_are_those_the_figures_and_tabs_show():
    assert [label(m) for m in LOCKSTEP] == ["ISS-P", "IHT", "dense", "GMP", "RigL"]
    assert label("l1") == "l1", "a method without a label is shown by its name"
    assert len({colour(m) for m in (*LOCKSTEP, "greg", "l1")}) == 7, "each its own colour"
    assert by_label(COMPARED) == {"ISS-P": "issp", "IHT": "iht"}
