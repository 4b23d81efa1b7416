"""The paired-seed study of ISS-P against IHT, and the validation grid that sets its alpha
and learning rate.

A run is one ``TrainConfig``. For each seed, every method starts from the same
initialisation (the model is built right after ``torch.manual_seed(seed)``) and sees the
same batches (they are a pure function of seed and step), so ISS-P minus IHT at one seed
is a paired difference: the only thing that differs between the two runs is the pruning
rule. The zoo's edsr-tiny checkpoints are the study's seed-0 runs (``seed_run``): ``zoo
build`` copies those already finished here instead of training them again.

    python -m issp study grid --data ../shared/data/train     # alpha and lr, validation only
    python -m issp study run --data ../shared/data/train --test ../shared/data/test
    python -m issp study report                               # analysis/study.md and .json

One module per job, each importing only those above it in this list:

- ``plan``: the settings, the runs and their names, the folders they lie in;
- ``runner``: training and scoring a plan's runs side by side, reading their results;
- ``stats``: paired differences, the summary rows, Holm's correction, the goals;
- ``report``: the study's Markdown and JSON;
- ``grid``: the validation grid's phases, its choice and its report.

Callers use the names below as ``study.X``.
"""

from issp.study.grid import (
    GridChoice,
    bicubic_validation,
    choose_protocol,
    grid_markdown,
    promising_lrs,
    run_grid,
    write_grid,
)
from issp.study.plan import (
    ARCH,
    PATCH,
    PRECISION,
    PROTOCOL,
    RATIOS,
    REPORT_DIR,
    SEEDS,
    STEPS,
    STUDY_METHODS,
    WORK_DIR,
    RunFolders,
    StudyRun,
    default_plan,
    grid_plan,
    run_name,
    seed_run,
    study_plan,
)
from issp.study.report import (
    RESULTS_HEADING,
    STUDY_JSON,
    flips_markdown,
    holm_sentences,
    metric_label,
    registered_text,
    seed_count,
    study_markdown,
    summary_cells,
    verdict_markdown,
    verdict_sentence,
    write_study,
)
from issp.study.runner import execute, load_results, test_folders
from issp.study.stats import (
    Goal,
    PairedDifferences,
    SummaryRow,
    differences_by_seed,
    holm,
    holm_survivors,
    issp_minus_iht,
    mean_sd,
    study_goals,
    study_summary,
    summary_json,
)

__all__ = [
    "ARCH",
    "PATCH",
    "PRECISION",
    "PROTOCOL",
    "RATIOS",
    "REPORT_DIR",
    "RESULTS_HEADING",
    "SEEDS",
    "STEPS",
    "STUDY_JSON",
    "STUDY_METHODS",
    "WORK_DIR",
    "Goal",
    "GridChoice",
    "PairedDifferences",
    "RunFolders",
    "StudyRun",
    "SummaryRow",
    "bicubic_validation",
    "choose_protocol",
    "default_plan",
    "differences_by_seed",
    "execute",
    "flips_markdown",
    "grid_markdown",
    "grid_plan",
    "holm",
    "holm_sentences",
    "holm_survivors",
    "issp_minus_iht",
    "load_results",
    "mean_sd",
    "metric_label",
    "promising_lrs",
    "registered_text",
    "run_grid",
    "run_name",
    "seed_count",
    "seed_run",
    "study_goals",
    "study_markdown",
    "study_plan",
    "study_summary",
    "summary_cells",
    "summary_json",
    "test_folders",
    "verdict_markdown",
    "verdict_sentence",
    "write_study",
    "write_grid",
]
