"""The ``study`` command: its sub-commands' arguments and what each runs.

The arguments' defaults of None defer to ``issp.study`` (PROTOCOL, SEEDS, RATIOS, STEPS,
PRECISION), which the zoo's build reads too. ``issp.study`` is imported only once a study
command runs: it loads torch and scipy, which ``--help`` and the other commands can do
without.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from issp import IsspError
from issp.cli_arguments import (
    Parser,
    existing_path,
    float_list,
    int_list,
    positive_float,
    positive_int,
    shrink_factor,
)


def add_study(commands: argparse._SubParsersAction) -> None:
    """``issp study`` and its sub-commands, in the order ``issp study --help`` lists them."""
    study = commands.add_parser("study", help="paired-seed ISS-P vs IHT study and its grid")
    study_commands = study.add_subparsers(dest="study_command", required=True, parser_class=Parser)
    grid = study_commands.add_parser("grid", help="choose alpha and lr on a validation split")
    run = study_commands.add_parser("run", help="train and score every run of the study")
    report = study_commands.add_parser("report", help="write analysis/study.md from results")
    rescore = study_commands.add_parser(
        "rescore", help="re-score every committed study checkpoint on a folder of images"
    )
    rescore.add_argument("--test", type=existing_path, required=True, help="a folder of HR images")
    rescore.add_argument("--name", help="the report's file name (default: the folder's)")
    precision = study_commands.add_parser(
        "precision", help="the bf16 bias test of analysis/precision.md: train, then report"
    )
    zoo_precision = study_commands.add_parser(
        "zoo-precision",
        help="rule 3 of analysis/precision.md: fp32-CL vs bf16 at equal CPU time, for the zoo",
    )
    modes = study_commands.add_parser(
        "modes", help="N:M and GReg paired by seed (analysis/modes.md): train, then report"
    )
    claims = study_commands.add_parser(
        "claims",
        help="study v2 (analysis/claims-protocol.md): each method's grid, 5 seeds, the claims",
    )
    alpha_edge = study_commands.add_parser(
        "alpha-edge",
        help="ISS-P's alpha beyond study v2's grid (analysis/alpha-edge.md): train, then report",
    )
    machine_check = study_commands.add_parser(
        "machine-check",
        help="C6 with every run on one machine (analysis/machine-check.md): train, then report",
    )
    for sub in (precision, zoo_precision, modes, claims, alpha_edge, machine_check):
        _add_registered_test_options(sub)
    for sub in (grid, run, report, rescore):
        _add_plan_options(sub)
    for sub in (grid, run, report):
        _add_runner_options(sub)
    _add_grid_options(grid)
    for sub in (run, report):
        sub.add_argument("--test", type=existing_path, help="folder with Set5/ and Set14/")
        sub.add_argument("--extra-test", type=existing_path, action="append", default=[])
    for sub in (run, report, rescore):
        _add_cell_options(sub)


def _add_registered_test_options(sub: argparse.ArgumentParser) -> None:
    """The options of a test whose plan is registered in its report (precision, modes)."""
    sub.add_argument("--data", type=existing_path, help="training images (default: bundled)")
    sub.add_argument("--test", type=existing_path, help="folder with Set5/ and Set14/")
    sub.add_argument("--jobs", type=positive_int, default=2, help="runs side by side")
    sub.add_argument("--threads", type=positive_int, help="torch threads per run")
    sub.add_argument(
        "--report", action="store_true", help="only write the report from finished runs"
    )


def _add_plan_options(sub: argparse.ArgumentParser) -> None:
    from issp.train import PRECISIONS, PROTOCOLS

    sub.add_argument("--protocol", choices=list(PROTOCOLS), help="default: issp.study.PROTOCOL")
    sub.add_argument("--seeds", type=int_list, help="e.g. 0,1,2 (default: issp.study.SEEDS)")
    sub.add_argument("--ratios", type=float_list, help="e.g. 0.9,0.99 (default: issp.study.RATIOS)")
    sub.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        help="fp32, channels-last or bf16 autocast with channels-last; see "
        "analysis/precision.md (default: issp.study.PRECISION)",
    )
    sub.add_argument("--out", type=Path, default=None, help="report folder (analysis/)")


def _add_runner_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--data", type=existing_path, help="training images (default: bundled)")
    sub.add_argument("--jobs", type=positive_int, default=2, help="runs side by side")
    sub.add_argument(
        "--threads", type=positive_int, help="torch threads per run (default: cores / jobs)"
    )
    sub.add_argument("--work", type=Path, default=None, help="runs folder (runs/study/)")


def _add_grid_options(grid: argparse.ArgumentParser) -> None:
    grid.add_argument("--steps", type=positive_int, default=1000)
    grid.add_argument(
        "--lrs",
        type=float_list,
        default=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
        help="e.g. 1e-4,1e-3 (default: the rates analysis/protocol_grid.md ran)",
    )
    grid.add_argument("--alphas", type=float_list, default=(0.9, 0.95, 0.99), help="ISS-P's")
    grid.add_argument(
        "--screen",
        type=positive_float,
        default=1.0,
        help="dB: seeds after the first run only the rates this close to the best",
    )


def _add_cell_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--scales", type=int_list, help="e.g. 2,4 (default: those of issp.study.STEPS)"
    )
    sub.add_argument(
        "--steps", type=int_list, help="per scale, e.g. 3000,3000 (default: issp.study.STEPS)"
    )
    sub.add_argument("--lr", type=positive_float, help="default: the protocol's")
    sub.add_argument("--alpha", type=shrink_factor, help="default: the protocol's")


def cmd_study(args: argparse.Namespace) -> None:
    """Run ``issp study <sub-command>``."""
    from issp import study

    command = "python -m issp " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m issp study"
    registered = {
        "precision": _study_precision,
        "zoo-precision": _study_zoo_precision,
        "modes": _study_modes,
        "claims": _study_claims,
        "alpha-edge": _study_alpha_edge,
        "machine-check": _study_machine_check,
    }
    if args.study_command in registered:
        registered[args.study_command](args, command)
        return
    args = _study_defaults(args)
    data = str(getattr(args, "data", None) or "") or None
    out = args.out or study.REPORT_DIR
    if args.study_command == "grid":
        _study_grid(args, data, command, out)
        return
    runs = study.study_plan(
        args.protocol,
        dict(zip(args.scales, args.steps, strict=True)),
        data,
        args.scales,
        args.ratios,
        args.seeds,
        precision=args.precision,
        lr=args.lr,
        alpha=args.alpha,
    )
    if args.study_command == "rescore":
        _study_rescore(args, runs, command, out)
        return
    folders = study.RunFolders.of(args.protocol, args.work or study.WORK_DIR, out)
    tests = study.test_folders(args.test, args.extra_test)
    if args.study_command == "run":
        results = study.execute(runs, folders, tests, jobs=args.jobs, threads=args.threads)
    else:
        results = study.load_results(runs, folders.results)
    if not results:
        raise IsspError(f"no finished runs in {folders.results}; start them with `issp study run`")
    study.write_study(results, list(tests) + ["val"], command, out, planned=len(runs))
    print(f"{len(results)} of {len(runs)} runs finished; wrote {out / 'study.md'}")


def _study_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with issp.study's defaults for the options not given."""
    from issp import study

    defaults = {
        "protocol": study.PROTOCOL,
        "seeds": study.SEEDS,
        "ratios": study.RATIOS,
        "precision": study.PRECISION,
    }
    if args.study_command != "grid":
        scales = args.scales or tuple(study.STEPS)
        if not set(scales) <= study.PATCH.keys():
            known = ", ".join(map(str, study.PATCH))
            raise IsspError(f"--scales must be among {known}, got {','.join(map(str, scales))}")
        unknown = [f"x{scale}" for scale in scales if scale not in study.STEPS]
        if args.steps is None and unknown:
            known = ", ".join(f"x{scale}" for scale in study.STEPS)
            raise IsspError(f"give --steps for {', '.join(unknown)} (defaults for {known} only)")
        steps = args.steps or tuple(study.STEPS[scale] for scale in scales)
        if len(steps) != len(scales):
            raise IsspError(f"give one --steps value per scale ({len(scales)})")
        if min(steps) < 1:
            raise IsspError(f"--steps must be positive, got {','.join(map(str, steps))}")
        defaults |= {"scales": scales, "steps": steps}
    missing = {key: value for key, value in defaults.items() if getattr(args, key) is None}
    return argparse.Namespace(**(vars(args) | missing))


def _study_grid(args: argparse.Namespace, data: str | None, command: str, out: Path) -> None:
    from issp import study

    choice = study.run_grid(
        command,
        study.RunFolders.of("grid", args.work or study.WORK_DIR, out),
        out,
        protocol=args.protocol,
        steps=args.steps,
        data=data,
        lrs=args.lrs,
        alphas=args.alphas,
        ratios=args.ratios,
        seeds=args.seeds,
        precision=args.precision,
        screen=args.screen,
        jobs=args.jobs,
    )
    edges = "pruned" if choice.prune_edges else "dense"
    print(f"chosen: lr {choice.lr:g}, first/last conv {edges}, alpha {choice.alpha:g}")


def _study_precision(args: argparse.Namespace, command: str) -> None:
    from issp import precision, study

    data = str(args.data) if args.data else None
    folders = study.RunFolders.of(study.PROTOCOL, study.WORK_DIR, study.REPORT_DIR)
    if not args.report:
        tests = study.test_folders(args.test)
        runs = precision.precision_plan(data)
        study.execute(runs, folders, tests, jobs=args.jobs, threads=args.threads)
    pairs = precision.run_pairs(folders.results)
    if not pairs:
        raise IsspError(f"no bf16 run in {folders.results} has finished yet")
    reruns = precision.machine_reruns(folders.results, study.REPORT_DIR / "study_runs" / "rerun")
    summary = precision.write_precision(pairs, command, study.REPORT_DIR, reruns)
    print(f"{summary['pairs']} of {summary['planned_pairs']} pairs; {summary['decision']}")


def _study_zoo_precision(args: argparse.Namespace, command: str) -> None:
    from issp import study, zoo_precision

    if args.test is not None:
        raise IsspError("zoo-precision scores on validation only, as registered: drop --test")
    data = str(args.data) if args.data else None
    folders = study.RunFolders.of(zoo_precision.PLAN, study.WORK_DIR, study.REPORT_DIR)
    runs = zoo_precision.zoo_precision_plan(data, zoo_precision.load_times())
    if not args.report:
        # Validation only, as registered: the kept checkpoints can be re-scored later.
        study.execute(runs, folders, {}, jobs=args.jobs, threads=args.threads)
    summary = zoo_precision.write_zoo_precision(runs, folders.results, command, study.REPORT_DIR)
    print(f"{len(summary['pairs'])} pairs; {summary['decision']}")


def _study_modes(args: argparse.Namespace, command: str) -> None:
    from issp import modes, study

    folders = study.RunFolders.of("modes", study.WORK_DIR, study.REPORT_DIR)
    runs = modes.modes_plan(str(args.data) if args.data else None)
    if not args.report:
        tests = study.test_folders(args.test)
        study.execute(runs, folders, tests, jobs=args.jobs, threads=args.threads)
    modes.write_modes(folders.results, command, study.REPORT_DIR)
    print(f"{modes.finished(runs, folders.results)} of {len(runs)} runs finished")


def _study_claims(args: argparse.Namespace, command: str) -> None:
    from issp.study import v2

    if not args.report:
        v2.run(str(args.data) if args.data else None, args.test, args.jobs, args.threads)
    rows = v2.write_claims(command)
    for row in rows:
        print(
            f"{row.claim}: {row.verdict}"
            + ("" if row.status == row.verdict else f" [{row.status}]")
        )


def _study_alpha_edge(args: argparse.Namespace, command: str) -> None:
    from issp.study import alpha_edge

    if not args.report:
        data = str(args.data) if args.data else None
        alpha_edge.run(data, args.jobs, args.threads)
    print(alpha_edge.write(command)["reading"])


def _study_machine_check(args: argparse.Namespace, command: str) -> None:
    from issp.study import machine_check

    if not args.report:
        data = str(args.data) if args.data else None
        machine_check.run(data, args.test, args.jobs, args.threads)
    result = machine_check.write(command)
    for key in ("set5", "set14"):
        print(f"{key}: {result[key]['reading']}")


def _study_rescore(args: argparse.Namespace, runs: list, command: str, out: Path) -> None:
    from issp import rescore, study
    from issp.catalogue import score_key

    folders = study.RunFolders.of(args.protocol, study.WORK_DIR, out)
    key = score_key(args.test.name)  # Set14 -> set14, as the run files key their scores
    rescored = rescore.rescore(runs, folders.results, args.test, key)
    name = args.name or key
    report = rescore.write_rescore(rescored, key, args.test, command, out / "rescore", name)
    gap = rescore.reproduction(rescored, key)
    same = "" if gap is None else f"; largest gap to the committed scores {gap:.4f} dB"
    print(f"re-scored {len(rescored)} checkpoints{same}; wrote {report}")
