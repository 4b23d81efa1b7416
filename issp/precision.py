"""The bias test of bf16 autocast (``analysis/precision.md``): the 3-seed study's runs
again in bf16 with channels-last, each paired with its committed fp32 run of the same
name, to ask whether the cheaper arithmetic moves ISS-P minus IHT.
"""

from __future__ import annotations

from issp import study

FAST = "bf16"  # the precision under test, a key of issp.train.PRECISIONS
SEEDS = (0, 1, 2)  # the seeds of the study's fp32 runs it is paired with


def precision_plan(data: str | None, precision: str = FAST) -> list[study.StudyRun]:
    """The study's seed 0-2 runs (``study.default_plan``'s cells) in ``precision``."""
    return study.study_plan(
        study.PROTOCOL, study.STEPS, data, tuple(study.STEPS), study.RATIOS, SEEDS,
        precision=precision,
    )
