"""The pruning methods as the zoo, the app and the figures name and draw them.

``issp.pruning.METHODS`` lists every method a ``Pruner`` runs; this module says which of
them are compared where, how each is labelled and which colour it is drawn in. Each table
is written here once, so a tab, a figure and a report cannot disagree.
"""

from __future__ import annotations

# The two rules the zoo, the app and the analysis compare: soft shrinkage and hard
# thresholding of the same selection.
COMPARED = ("issp", "iht")
# What a live comparison may add to the pair as references: no pruning, gradual magnitude
# pruning, dynamic sparse training.
REFERENCES = ("dense", "gmp", "rigl")
LOCKSTEP = COMPARED + REFERENCES
# "bicubic" is no pruning method, but it is a row of every table and a line of every chart.
LABELS = {
    "issp": "ISS-P",
    "iht": "IHT",
    "dense": "dense",
    "gmp": "GMP",
    "greg": "GReg",
    "rigl": "RigL",
    "bicubic": "bicubic",
}
COLOURS = {
    "issp": "#d62728",
    "iht": "#1f77b4",
    "dense": "#7f7f7f",
    "gmp": "#2ca02c",
    "rigl": "#ff7f0e",
    "greg": "#8c564b",
}
OTHER_COLOUR = "#9467bd"


def label(method: str) -> str:
    """Display name of a method (``issp`` -> ``ISS-P``); an unknown name is shown as is."""
    return LABELS.get(method, method)


def colour(method: str) -> str:
    """The colour a method is drawn in, on every tab and in every figure."""
    return COLOURS.get(method, OTHER_COLOUR)


def by_label(methods: tuple[str, ...]) -> dict[str, str]:
    """``{label: method}`` for ``methods``: what a UI offers and what it means."""
    return {label(method): method for method in methods}
