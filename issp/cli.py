"""Command-line interface: ``python -m issp <command> --help``.

Bad arguments or files print one line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from issp import IsspError

if TYPE_CHECKING:
    from issp.zoo import Verification


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump)."""

    def error(self, message: str) -> None:
        raise IsspError(f"{self.prog}: {message}")


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1), got {text}")
    return value


def _alpha(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"alpha must be in (0, 1), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1,2, got {text}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.9,0.99, got {text}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text}")
    return values


def _existing(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return path


def build_parser() -> Parser:
    from issp.methods import LOCKSTEP
    from issp.models import PRESETS, SCALES
    from issp.pruning import METHODS
    from issp.train import DEFAULT_PROTOCOL, PRECISIONS, PROTOCOLS

    parser = Parser(prog="issp", description="Sparse SR networks by Iterative Soft Shrinkage.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = commands.add_parser("train", help="train (and prune) an SR network")
    train.add_argument("--arch", default="edsr-tiny", choices=list(PRESETS))
    train.add_argument("--scale", type=int, default=2, choices=list(SCALES))
    train.add_argument("--method", default="issp", choices=list(METHODS))
    train.add_argument(
        "--ratio", type=_ratio, help="pruning ratio r in [0, 1) (default: 0.9, or N/M)"
    )
    train.add_argument(
        "--pattern", help="N:M, e.g. 19:20: prune N of every M consecutive weights of a layer"
    )
    train.add_argument(
        "--protocol",
        default=DEFAULT_PROTOCOL,
        choices=list(PROTOCOLS),
        help="schedule, Kp fraction, Adam betas, pruned layers, default lr and alpha "
        "(two-stage: the study's and the zoo's; cosine: the first zoo's)",
    )
    train.add_argument("--alpha", type=_alpha, help="ISS-P shrink factor (default: protocol's)")
    train.add_argument("--steps", type=_positive, default=2000, help="total training steps")
    train.add_argument(
        "--prune-steps", type=_positive, default=None, help="Kp, end of the pruning stage"
    )
    train.add_argument("--scope", choices=["local", "global"], default="local")
    train.add_argument("--batch-size", type=_positive, default=16)
    train.add_argument("--patch", type=_positive, default=48, help="LR patch size")
    train.add_argument("--lr", type=_positive_float, help="learning rate (default: protocol's)")
    train.add_argument(
        "--bf16", action="store_true", help="bfloat16 forward pass (loss, Adam, pruner in fp32)"
    )
    train.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels-last convs (default: where the architecture trains faster: edsr)",
    )
    train.add_argument("--data", type=_existing, help="folder of training images")
    train.add_argument("--val", type=_existing, help="folder of validation images")
    train.add_argument("--val-every", type=_positive, default=200)
    train.add_argument("--workers", type=int, default=1)
    train.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="resume from <out>.state.pt")

    evaluate = commands.add_parser("eval", help="PSNR/SSIM on a folder of HR images")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=_existing)
    source.add_argument("--bicubic", action="store_true", help="evaluate bicubic upsampling")
    evaluate.add_argument("--data", type=_existing, required=True)
    evaluate.add_argument("--scale", type=int, choices=list(SCALES), required=True)
    evaluate.add_argument("--tile", type=_positive, default=None)
    evaluate.add_argument("--json", type=Path, help="also write the results as JSON")

    upscale = commands.add_parser("upscale", help="upscale an image")
    upscale.add_argument("input", type=_existing)
    upscale.add_argument(
        "-o", "--output", type=Path, help="default: INPUT's name + _x<scale>.png, in this folder"
    )
    upscale.add_argument("--checkpoint", type=_existing)
    upscale.add_argument("--scale", type=int, choices=list(SCALES))
    upscale.add_argument("--ratio", type=_ratio)
    upscale.add_argument("--method", default="issp", help="zoo method (issp, iht, dense)")
    upscale.add_argument("--arch", default="edsr-tiny", help="zoo architecture")
    upscale.add_argument(
        "--tile", type=_positive, help="LR tile size (default: the measured fastest for the scale)"
    )

    info = commands.add_parser("info", help="parameters, sparsity and FLOPs of a checkpoint")
    info.add_argument("checkpoint", type=_existing)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--size", type=_positive, default=256, help="LR side for FLOPs")

    zoo = commands.add_parser("zoo", help="build or evaluate the checkpoint zoo")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True, parser_class=Parser)
    build = zoo_commands.add_parser("build", help="train every missing zoo checkpoint")
    build.add_argument("--data", type=_existing, help="training images (default: bundled)")
    build.add_argument("--test", type=_existing, help="folder with Set5/ and Set14/")
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
    sweep.add_argument("--data", type=_existing, help="training images (default: bundled)")
    sweep.add_argument("--steps", type=_positive, default=1000)
    sweep.add_argument("--device", default="cpu")
    table = zoo_commands.add_parser("eval", help="recompute the results table")
    table.add_argument("--data", type=_existing, required=True, help="folder with Set5/, Set14/")
    verify = zoo_commands.add_parser(
        "verify", help="check every manifest entry: file, sha256, sparsity, Set5 PSNR"
    )
    verify.add_argument("--data", type=_existing, help="folder with Set5/ (PSNR check)")
    for sub in (build, table, verify):
        sub.add_argument(
            "--zoo",
            type=Path,
            help="the zoo's folder (default: the checkout's checkpoints/); build a new zoo "
            "aside, e.g. runs/zoo-two-stage/, and swap it in when complete",
        )

    study = commands.add_parser("study", help="paired-seed ISS-P vs IHT study and its grid")
    study_commands = study.add_subparsers(dest="study_command", required=True, parser_class=Parser)
    grid = study_commands.add_parser("grid", help="choose alpha and lr on a validation split")
    run = study_commands.add_parser("run", help="train and score every run of the study")
    report = study_commands.add_parser("report", help="write analysis/study.md from results")
    rescore = study_commands.add_parser(
        "rescore", help="re-score every committed study checkpoint on a folder of images"
    )
    rescore.add_argument("--test", type=_existing, required=True, help="a folder of HR images")
    rescore.add_argument("--name", help="the report's file name (default: the folder's)")
    precision = study_commands.add_parser(
        "precision", help="the bf16 bias test of analysis/precision.md: train, then report"
    )
    modes = study_commands.add_parser(
        "modes", help="N:M and GReg paired by seed (analysis/modes.md): train, then report"
    )
    for sub in (precision, modes):
        sub.add_argument("--data", type=_existing, help="training images (default: bundled)")
        sub.add_argument("--test", type=_existing, help="folder with Set5/ and Set14/")
        sub.add_argument("--jobs", type=_positive, default=2, help="runs side by side")
        sub.add_argument("--threads", type=_positive, help="torch threads per run")
        sub.add_argument(
            "--report", action="store_true", help="only write the report from finished runs"
        )
    # Defaults of None defer to issp.study (PROTOCOL, SEEDS, RATIOS, STEPS, PRECISION), which
    # the zoo's build reads too; importing it here would load scipy for every command.
    for sub in (grid, run, report, rescore):
        sub.add_argument("--protocol", choices=list(PROTOCOLS), help="default: issp.study.PROTOCOL")
        sub.add_argument("--seeds", type=_ints, help="e.g. 0,1,2 (default: issp.study.SEEDS)")
        sub.add_argument(
            "--ratios", type=_floats, help="e.g. 0.9,0.99 (default: issp.study.RATIOS)"
        )
        sub.add_argument(
            "--precision",
            choices=list(PRECISIONS),
            help="fp32, channels-last or bf16 autocast with channels-last; see "
            "analysis/precision.md (default: issp.study.PRECISION)",
        )
        sub.add_argument("--out", type=Path, default=None, help="report folder (analysis/)")
    for sub in (grid, run, report):
        sub.add_argument("--data", type=_existing, help="training images (default: bundled)")
        sub.add_argument("--jobs", type=_positive, default=2, help="runs side by side")
        sub.add_argument(
            "--threads", type=_positive, help="torch threads per run (default: cores / jobs)"
        )
        sub.add_argument("--work", type=Path, default=None, help="runs folder (runs/study/)")
    grid.add_argument("--steps", type=_positive, default=1000)
    grid.add_argument(
        "--lrs",
        type=_floats,
        default=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
        help="e.g. 1e-4,1e-3 (default: the rates analysis/protocol_grid.md ran)",
    )
    grid.add_argument("--alphas", type=_floats, default=(0.9, 0.95, 0.99), help="ISS-P's")
    grid.add_argument(
        "--screen",
        type=_positive_float,
        default=1.0,
        help="dB: seeds after the first run only the rates this close to the best",
    )
    for sub in (run, report):
        sub.add_argument("--test", type=_existing, help="folder with Set5/ and Set14/")
        sub.add_argument("--extra-test", type=_existing, action="append", default=[])
    for sub in (run, report, rescore):
        sub.add_argument(
            "--scales", type=_ints, help="e.g. 2,4 (default: those of issp.study.STEPS)"
        )
        sub.add_argument(
            "--steps", type=_ints, help="per scale, e.g. 3000,3000 (default: issp.study.STEPS)"
        )
        sub.add_argument("--lr", type=_positive_float, help="default: the protocol's")
        sub.add_argument("--alpha", type=_alpha, help="default: the protocol's")

    # Defaults of None defer to analysis.lockstep.LockstepConfig, the one place they live.
    analyze = commands.add_parser(
        "analyze", help="ISS-P vs IHT in lockstep (same init, same batches), written as JSON"
    )
    analyze.add_argument("--arch", choices=list(PRESETS))
    analyze.add_argument("--scale", type=int, choices=list(SCALES))
    analyze.add_argument("--ratio", type=_ratio, help="pruning ratio r in [0, 1)")
    analyze.add_argument("--alpha", type=_alpha, help="ISS-P shrink factor in (0, 1)")
    analyze.add_argument("--steps", type=_positive, help="training steps per method")
    analyze.add_argument("--prune-steps", type=_positive, help="Kp, end of the pruning stage")
    analyze.add_argument("--methods", help=f"comma-separated, from {', '.join(LOCKSTEP)}")
    analyze.add_argument("--batch-size", type=_positive)
    analyze.add_argument("--patch", type=_positive, help="LR patch size")
    analyze.add_argument("--lr", type=float)
    analyze.add_argument("--val-every", type=_positive, help="steps between PSNR checks")
    analyze.add_argument("--data", type=_existing, help="folder of training images")
    analyze.add_argument("--seed", type=int)
    analyze.add_argument("--json", type=Path, required=True, help="result file to write")

    plot = commands.add_parser("plot", help="figures (PNG + HTML) of an `analyze` result")
    plot.add_argument("result", type=_existing, help="JSON written by `issp analyze`")
    plot.add_argument("--out", type=Path, required=True, help="folder for the figures")

    export = commands.add_parser("export", help="write a checkpoint as a dense ONNX model")
    export.add_argument("checkpoint", type=_existing)
    export.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    export.add_argument("--image", type=_existing, help="verify on it (default: a bundled photo)")
    return parser


def cmd_train(args: argparse.Namespace) -> None:
    from issp.selection import parse_pattern
    from issp.train import TrainConfig, train

    chosen = {"alpha": args.alpha, "lr": args.lr}
    ratio = args.ratio
    if ratio is None:
        ratio = 0.9
        if args.pattern:
            n, m = parse_pattern(args.pattern)
            ratio = n / m
    config = TrainConfig.of_protocol(
        args.protocol,
        arch=args.arch,
        scale=args.scale,
        method=args.method,
        ratio=ratio,
        pattern=args.pattern,
        steps=args.steps,
        prune_steps=args.prune_steps,
        scope=args.scope,
        batch_size=args.batch_size,
        patch=args.patch,
        bf16=args.bf16,
        channels_last=args.channels_last,
        **{key: value for key, value in chosen.items() if value is not None},
        data=str(args.data) if args.data else None,
        val=str(args.val) if args.val else None,
        val_every=args.val_every,
        workers=args.workers,
        device=args.device,
        seed=args.seed,
    )
    history = train(config, args.out, resume=args.resume)
    if history["val_psnr"]:
        print(f"wrote {args.out}: validation PSNR {history['val_psnr'][-1]:.2f} dB")


def cmd_eval(args: argparse.Namespace) -> None:
    from issp.checkpoint import load_checkpoint
    from issp.evaluate import evaluate_folder, format_table

    model = None
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, scale=args.scale)
    result = evaluate_folder(model, args.data, args.scale, tile=args.tile, progress=True)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def cmd_upscale(args: argparse.Namespace) -> None:
    from issp.checkpoint import load_checkpoint
    from issp.data import load_image
    from issp.upscale import SUFFIX_FORMATS, fast_tile, inference_model, upscale_image

    if args.output is not None and args.output.suffix.lower() not in SUFFIX_FORMATS:
        raise IsspError(
            f"unsupported output format {args.output.suffix!r}; use {', '.join(SUFFIX_FORMATS)}"
        )
    image = load_image(args.input)
    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint, scale=args.scale)
        scale = int(meta["scale"])
    else:
        from issp.catalogue import load_zoo_model

        if args.scale is None or args.ratio is None:
            raise IsspError("upscale needs --checkpoint, or --scale and --ratio (and --method)")
        model, _ = load_zoo_model(args.arch, args.scale, args.method, args.ratio)
        scale = args.scale
    output = args.output or Path(f"{args.input.stem}_x{scale}.png")
    SUFFIX_FORMATS[output.suffix.lower()].check_fits(image.width * scale, image.height * scale)
    tile = args.tile or fast_tile(scale)
    result = upscale_image(inference_model(model), image, scale, tile=tile)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Save beside the target, then rename: a failed save never leaves a broken output.
    partial = output.with_name(f".{output.name}.partial{output.suffix}")
    try:
        SUFFIX_FORMATS[output.suffix.lower()].save(result, partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {output} ({result.width}x{result.height})")


def cmd_info(args: argparse.Namespace) -> None:
    from issp.checkpoint import checkpoint_info

    info = checkpoint_info(args.checkpoint, args.size)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    alpha = f"  alpha={info['alpha']}" if info["method"] == "issp" else ""
    what = f"method={info['method']}  ratio={info['ratio']:g}  pattern={info['pattern']}"
    print(f"{info['preset']} x{info['scale']}  {what}{alpha}")
    print(f"parameters {info['params']:,}  non-zero {info['nonzeros']:,}")
    size = "x".join(map(str, info["input_size"]))
    print(
        f"FLOPs at {size} LR: dense {info['flops_dense'] / 1e9:.3f} G, "
        f"sparse {info['flops_sparse'] / 1e9:.3f} G"
    )
    print(f"{'layer':40s} {'numel':>8s} {'nonzeros':>9s} {'sparsity':>9s}")
    for layer in info["layers"]:
        sparsity = 1 - layer["nonzeros"] / layer["numel"]
        print(f"{layer['name']:40s} {layer['numel']:8d} {layer['nonzeros']:9d} {sparsity:9.2%}")


def cmd_zoo(args: argparse.Namespace) -> int | None:
    from issp import report, zoo

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
    table = report.results_markdown(scores.records, scores.bicubic, command)
    folders = zoo.ZooFolders.of(args.zoo)
    dynamics = report.dynamics_markdown(scores.records, folders.telemetry)
    table += f"\n{dynamics}" if dynamics else ""
    path = report.write_results(table, folders.zoo)
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


def _need_analysis(command: str) -> None:
    """Fail in one line where ``analysis/`` cannot be imported: it ships with the source
    checkout only, not in the wheel (``pip install .``)."""
    if importlib.util.find_spec("analysis") is None:
        raise IsspError(
            f"`issp {command}` needs a source checkout of the repository (its analysis/ "
            f"folder): run `python -m issp {command}` from the checkout's root"
        )


def cmd_analyze(args: argparse.Namespace) -> None:
    _need_analysis("analyze")
    from tqdm import tqdm

    from analysis.lockstep import LockstepConfig, run_lockstep, to_json

    methods = None
    if args.methods is not None:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    given = {
        "arch": args.arch,
        "scale": args.scale,
        "ratio": args.ratio,
        "alpha": args.alpha,
        "steps": args.steps,
        "prune_steps": args.prune_steps,
        "methods": methods,
        "batch_size": args.batch_size,
        "patch": args.patch,
        "lr": args.lr,
        "val_every": args.val_every,
        "data": str(args.data) if args.data else None,
        "seed": args.seed,
    }
    config = LockstepConfig(**{key: value for key, value in given.items() if value is not None})
    config.validate()
    with tqdm(total=config.steps, desc=" vs ".join(config.methods), file=sys.stderr) as bar:
        for last in run_lockstep(config, every=10):
            bar.update(last.step - bar.n)
    result = to_json(last)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, allow_nan=False) + "\n")
    print(result["summary"])
    print(f"wrote {args.json}")


def cmd_plot(args: argparse.Namespace) -> None:
    _need_analysis("plot")
    from analysis.lockstep import from_json
    from analysis.plots import save_figures

    try:
        data = json.loads(args.result.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IsspError(f"{args.result}: not a JSON result ({err})") from err
    paths = save_figures(from_json(data), args.out)
    print(f"wrote {len(paths)} files to {args.out}")


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
        unknown = [f"x{scale}" for scale in scales if scale not in study.STEPS]
        if args.steps is None and unknown:
            known = ", ".join(f"x{scale}" for scale in study.STEPS)
            raise IsspError(f"give --steps for {', '.join(unknown)} (defaults for {known} only)")
        steps = args.steps or tuple(study.STEPS[scale] for scale in scales)
        if len(steps) != len(scales):
            raise IsspError(f"give one --steps value per scale ({len(scales)})")
        defaults |= {"scales": scales, "steps": steps}
    missing = {key: value for key, value in defaults.items() if getattr(args, key) is None}
    return argparse.Namespace(**(vars(args) | missing))


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


def _study_modes(args: argparse.Namespace, command: str) -> None:
    from issp import modes, study

    folders = study.RunFolders.of("modes", study.WORK_DIR, study.REPORT_DIR)
    runs = modes.modes_plan(str(args.data) if args.data else None)
    if not args.report:
        tests = study.test_folders(args.test)
        study.execute(runs, folders, tests, jobs=args.jobs, threads=args.threads)
    modes.write_modes(folders.results, command, study.REPORT_DIR)
    print(f"{modes.finished(runs, folders.results)} of {len(runs)} runs finished")


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


def cmd_study(args: argparse.Namespace) -> None:
    from issp import study

    command = "python -m issp " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m issp study"
    if args.study_command in ("precision", "modes"):
        {"precision": _study_precision, "modes": _study_modes}[args.study_command](args, command)
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


def cmd_export(args: argparse.Namespace) -> int | None:
    from issp.checkpoint import load_checkpoint
    from issp.data import default_image_paths, load_image, to_rgb_array, to_tensor
    from issp.export import TOLERANCE, export_onnx, onnx_metadata, require, verify_onnx

    require("onnxruntime")  # before the export, so a missing runtime fails fast
    model, meta = load_checkpoint(args.checkpoint)
    image = args.image or default_image_paths()[0]
    lr = to_tensor(to_rgb_array(load_image(image)))[None]
    metadata = onnx_metadata(meta)
    export_onnx(model, args.onnx, metadata)
    diff = verify_onnx(args.onnx, model, lr, int(meta["scale"]))
    print(f"wrote {args.onnx} ({', '.join(f'{k}={v}' for k, v in metadata.items())})")
    size = f"{lr.shape[-1]}x{lr.shape[-2]}"
    print(f"max abs difference, ONNX Runtime vs PyTorch, on {image} ({size}): {diff:.2g}")
    if diff > TOLERANCE:
        print(f"error: difference above {TOLERANCE:g}; do not deploy this model", file=sys.stderr)
        return 1


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "upscale": cmd_upscale,
    "info": cmd_info,
    "zoo": cmd_zoo,
    "study": cmd_study,
    "analyze": cmd_analyze,
    "plot": cmd_plot,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors, 1 for a failed check)."""
    try:
        args = build_parser().parse_args(argv)
        code = COMMANDS[args.command](args)
    except IsspError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code or 0


def main_entry() -> None:
    """Console-script entry point (``issp ...`` after ``pip install .``)."""
    raise SystemExit(main())
