"""The ``zoo`` command: building, sweeping, scoring and verifying the checkpoint zoo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from issp import IsspError
from issp.cli_arguments import Parser, existing_path, positive_int

if TYPE_CHECKING:
    from issp.zoo import Verification


def add_zoo(commands: argparse._SubParsersAction) -> None:
    """``issp zoo`` and its sub-commands, in the order ``issp zoo --help`` lists them."""
    zoo = commands.add_parser("zoo", help="build or evaluate the checkpoint zoo")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True, parser_class=Parser)
    build = zoo_commands.add_parser("build", help="train every missing zoo checkpoint")
    build.add_argument("--data", type=existing_path, help="training images (default: bundled)")
    build.add_argument("--test", type=existing_path, help="folder with Set5/ and Set14/")
    build.add_argument("--device", default="cpu")
    build.add_argument("--only", help="only checkpoints whose name contains this")
    build.add_argument(
        "--train-studied",
        action="store_true",
        help="also train the edsr-tiny entries `issp study run` has not finished yet, instead "
        "of leaving them to it (a later build copies them from runs/study/)",
    )
    sweep = zoo_commands.add_parser(
        "sweep",
        help="ISS-P at several alphas against IHT on a validation split (analysis/alpha_sweep.md;"
        " the zoo's alpha now comes from `study grid`)",
    )
    sweep.add_argument("--data", type=existing_path, help="training images (default: bundled)")
    sweep.add_argument("--steps", type=positive_int, default=1000)
    sweep.add_argument("--device", default="cpu")
    table = zoo_commands.add_parser("eval", help="recompute the results table")
    table.add_argument(
        "--data", type=existing_path, required=True, help="folder with Set5/, Set14/"
    )
    verify = zoo_commands.add_parser(
        "verify", help="check every manifest entry: file, sha256, sparsity, Set5 PSNR"
    )
    verify.add_argument("--data", type=existing_path, help="folder with Set5/ (PSNR check)")
    for sub in (build, table, verify):
        sub.add_argument(
            "--zoo",
            type=Path,
            help="the zoo's folder (default: the checkout's checkpoints/); build a new zoo "
            "aside, e.g. runs/zoo-two-stage/, and swap it in when complete",
        )


def cmd_zoo(args: argparse.Namespace) -> int | None:
    """Run ``issp zoo <sub-command>``; ``verify`` returns 1 where a checkpoint fails."""
    from issp import zoo, zoo_report

    if args.zoo_command == "build":
        data = str(args.data) if args.data else None
        zoo.build(
            data,
            args.test,
            device=args.device,
            only=args.only,
            zoo_dir=args.zoo,
            train_studied=args.train_studied,
        )
        return
    if args.zoo_command == "sweep":
        data = str(args.data) if args.data else None
        print(zoo.sweep_alpha(data, steps=args.steps, device=args.device))
        return
    if args.zoo_command == "verify":
        if args.data is not None and not (args.data / "Set5").is_dir():
            raise IsspError(f"{args.data} has no Set5/ folder to check PSNR on")
        checks = zoo.verify_zoo(args.data, zoo_dir=args.zoo)
        for check in checks:
            print(_verify_line(check))
        failed = sum(not check.ok for check in checks)
        print(f"{len(checks) - failed} of {len(checks)} checkpoints verified")
        return 1 if failed else 0
    scores = zoo.evaluate_zoo(args.data, args.zoo)
    command = f"python -m issp zoo eval --data {args.data}"
    command += f" --zoo {args.zoo}" if args.zoo else ""
    table = zoo_report.results_markdown(scores.records, scores.bicubic, command)
    folders = zoo.ZooFolders.of(args.zoo)
    dynamics = zoo_report.dynamics_markdown(scores.records, folders.telemetry)
    table += f"\n{dynamics}" if dynamics else ""
    path = zoo_report.write_results(table, folders.zoo)
    print(table)
    print(f"wrote {path}")


def _verify_line(check: Verification) -> str:
    protocol = f"protocol: {check.protocol or 'not recorded'}"
    if not check.exists:
        return f"FAIL {check.file}: missing, {protocol}"
    if not check.sha256_ok:
        return f"FAIL {check.file}: sha256 MISMATCH, {protocol}"
    parts = ["sha256 ok", f"worst layer sparsity off by {check.sparsity_error:.2%}"]
    if check.set5_psnr is not None:
        recorded = "none" if check.set5_manifest is None else f"{check.set5_manifest:.2f}"
        parts.append(f"Set5 {check.set5_psnr:.2f} dB (manifest {recorded})")
    parts.append(protocol)
    return f"{'ok  ' if check.ok else 'FAIL'} {check.file}: " + ", ".join(parts)
