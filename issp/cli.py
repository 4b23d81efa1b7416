"""Command-line interface: ``python -m issp <command> --help``.

This module builds the parser and runs the commands that have no sub-commands of their
own; ``zoo`` and ``study`` are ``issp.cli_zoo`` and ``issp.cli_study``, and the argument
types all three share are ``issp.cli_arguments``.

Bad arguments or files print one line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from issp import IsspError
from issp.cli_arguments import (
    Parser,
    existing_path,
    positive_float,
    positive_int,
    pruning_ratio,
    shrink_factor,
)
from issp.cli_study import add_study, cmd_study
from issp.cli_zoo import add_zoo, cmd_zoo
from issp.files import replacing, writable, write_text


def build_parser() -> Parser:
    """The parser of every command, in the order ``issp --help`` lists them."""
    parser = Parser(prog="issp", description="Sparse SR networks by Iterative Soft Shrinkage.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (
        _add_train,
        _add_eval,
        _add_upscale,
        _add_info,
        add_zoo,
        add_study,
        _add_analyze,
        _add_plot,
        _add_export,
    ):
        add(commands)
    return parser


def _add_train(commands: argparse._SubParsersAction) -> None:
    from issp.models import PRESETS, SCALES
    from issp.pruning import METHODS
    from issp.train import DEFAULT_PROTOCOL, PROTOCOLS, TrainConfig

    # Every default is TrainConfig's, the one place it is stated.
    default = TrainConfig()
    train = commands.add_parser("train", help="train (and prune) an SR network")
    train.add_argument("--arch", default=default.arch, choices=list(PRESETS))
    train.add_argument("--scale", type=int, default=default.scale, choices=list(SCALES))
    train.add_argument("--method", default=default.method, choices=list(METHODS))
    train.add_argument(
        "--ratio",
        type=pruning_ratio,
        help=f"pruning ratio r in [0, 1) (default: {default.ratio:g}, or N/M)",
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
    train.add_argument(
        "--alpha", type=shrink_factor, help="ISS-P shrink factor (default: protocol's)"
    )
    train.add_argument(
        "--steps", type=positive_int, default=default.steps, help="total training steps"
    )
    train.add_argument(
        "--prune-steps", type=positive_int, default=None, help="Kp, end of the pruning stage"
    )
    train.add_argument("--scope", choices=["local", "global"], default=default.scope)
    train.add_argument("--batch-size", type=positive_int, default=default.batch_size)
    train.add_argument("--patch", type=positive_int, default=default.patch, help="LR patch size")
    train.add_argument("--lr", type=positive_float, help="learning rate (default: protocol's)")
    train.add_argument(
        "--bf16", action="store_true", help="bfloat16 forward pass (loss, Adam, pruner in fp32)"
    )
    train.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels-last convs (default: where the architecture trains faster: edsr)",
    )
    train.add_argument("--data", type=existing_path, help="folder of training images")
    train.add_argument("--val", type=existing_path, help="folder of validation images")
    train.add_argument("--val-every", type=positive_int, default=default.val_every)
    train.add_argument("--workers", type=int, default=default.workers)
    train.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    train.add_argument("--device", default=default.device, help="cpu, cuda or cuda:N")
    train.add_argument("--seed", type=int, default=default.seed)
    train.add_argument("--resume", action="store_true", help="resume from <out>.state.pt")


def _add_eval(commands: argparse._SubParsersAction) -> None:
    from issp.models import SCALES

    evaluate = commands.add_parser("eval", help="PSNR/SSIM on a folder of HR images")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=existing_path)
    source.add_argument("--bicubic", action="store_true", help="evaluate bicubic upsampling")
    evaluate.add_argument("--data", type=existing_path, required=True)
    evaluate.add_argument("--scale", type=int, choices=list(SCALES), required=True)
    evaluate.add_argument("--tile", type=positive_int, default=None)
    evaluate.add_argument("--json", type=Path, help="also write the results as JSON")


def _add_upscale(commands: argparse._SubParsersAction) -> None:
    from issp.models import SCALES

    upscale = commands.add_parser("upscale", help="upscale an image")
    upscale.add_argument("input", type=existing_path)
    upscale.add_argument(
        "-o", "--output", type=Path, help="default: INPUT's name + _x<scale>.png, in this folder"
    )
    upscale.add_argument("--checkpoint", type=existing_path)
    upscale.add_argument("--scale", type=int, choices=list(SCALES))
    upscale.add_argument("--ratio", type=pruning_ratio)
    upscale.add_argument("--method", default="issp", help="zoo method (issp, iht, dense)")
    upscale.add_argument("--arch", default="edsr-tiny", help="zoo architecture")
    upscale.add_argument(
        "--tile",
        type=positive_int,
        help="LR tile size (default: the measured fastest for the scale)",
    )


def _add_info(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help="parameters, sparsity and FLOPs of a checkpoint")
    info.add_argument("checkpoint", type=existing_path)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--size", type=positive_int, default=256, help="LR side for FLOPs")


def _add_analyze(commands: argparse._SubParsersAction) -> None:
    from issp.methods import LOCKSTEP
    from issp.models import PRESETS, SCALES

    # Defaults of None defer to analysis.lockstep.LockstepConfig, the one place they live.
    analyze = commands.add_parser(
        "analyze", help="ISS-P vs IHT in lockstep (same init, same batches), written as JSON"
    )
    analyze.add_argument("--arch", choices=list(PRESETS))
    analyze.add_argument("--scale", type=int, choices=list(SCALES))
    analyze.add_argument("--ratio", type=pruning_ratio, help="pruning ratio r in [0, 1)")
    analyze.add_argument("--alpha", type=shrink_factor, help="ISS-P shrink factor in (0, 1)")
    analyze.add_argument("--steps", type=positive_int, help="training steps per method")
    analyze.add_argument("--prune-steps", type=positive_int, help="Kp, end of the pruning stage")
    analyze.add_argument("--methods", help=f"comma-separated, from {', '.join(LOCKSTEP)}")
    analyze.add_argument("--batch-size", type=positive_int)
    analyze.add_argument("--patch", type=positive_int, help="LR patch size")
    analyze.add_argument("--lr", type=float)
    analyze.add_argument("--val-every", type=positive_int, help="steps between PSNR checks")
    analyze.add_argument("--data", type=existing_path, help="folder of training images")
    analyze.add_argument("--seed", type=int)
    analyze.add_argument("--json", type=Path, required=True, help="result file to write")


def _add_plot(commands: argparse._SubParsersAction) -> None:
    plot = commands.add_parser("plot", help="figures (PNG + HTML) of an `analyze` result")
    plot.add_argument("result", type=existing_path, help="JSON written by `issp analyze`")
    plot.add_argument("--out", type=Path, required=True, help="folder for the figures")


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write a checkpoint as a dense ONNX model")
    export.add_argument("checkpoint", type=existing_path)
    export.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    export.add_argument(
        "--image", type=existing_path, help="verify on it (default: a bundled photo)"
    )


def cmd_train(args: argparse.Namespace) -> None:
    from issp.selection import parse_pattern
    from issp.train import TrainConfig, train

    chosen = {"alpha": args.alpha, "lr": args.lr}
    ratio = args.ratio
    if ratio is None:
        ratio = TrainConfig.ratio
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

    if args.json:
        writable(args.json)  # before the evaluation, not after it
    model = None
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, scale=args.scale)
    result = evaluate_folder(model, args.data, args.scale, tile=args.tile, progress=True)
    print(format_table(result))
    if args.json:
        # JSON has no infinity: an exact upscale (PSNR inf), and so the mean, is written null.
        write_text(args.json, json.dumps(finite(result), indent=2, allow_nan=False) + "\n")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (inf, NaN) in it replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def cmd_upscale(args: argparse.Namespace) -> None:
    from issp.checkpoint import load_checkpoint
    from issp.data import load_image
    from issp.machine import use_huge_pages
    from issp.upscale import SUFFIX_FORMATS, fast_tile, inference_model, upscale_image

    use_huge_pages()  # before the first large tensor, when torch reads it

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
    output = writable(args.output or Path(f"{args.input.stem}_x{scale}.png"))
    SUFFIX_FORMATS[output.suffix.lower()].check_fits(image.width * scale, image.height * scale)
    tile = args.tile or fast_tile(scale)
    result = upscale_image(inference_model(model), image, scale, tile=tile)
    with replacing(output) as partial:
        SUFFIX_FORMATS[output.suffix.lower()].save(result, partial)
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
    writable(args.json)
    with tqdm(total=config.steps, desc=" vs ".join(config.methods), file=sys.stderr) as bar:
        for last in run_lockstep(config, every=10):
            bar.update(last.step - bar.n)
    result = to_json(last)
    write_text(args.json, json.dumps(result, allow_nan=False) + "\n")
    print(result["summary"])
    print(f"wrote {args.json}")


def cmd_plot(args: argparse.Namespace) -> None:
    _need_analysis("plot")
    from analysis.figure_files import save_figures
    from analysis.lockstep import from_json

    try:
        data = json.loads(args.result.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IsspError(f"{args.result}: not a JSON result ({err})") from err
    paths = save_figures(from_json(data), args.out)
    print(f"wrote {len(paths)} files to {args.out}")


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


def one_line_warning(message: Warning | str, *_: object, **__: object) -> None:
    """Show a warning (a skipped image, say) as one line, without the library's source,
    above any progress bar rather than glued to its end."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors, 1 for a failed check)."""
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():  # puts showwarning back when the command ends
            warnings.showwarning = one_line_warning
            code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that closed the pipe shows here, not at exit
    except IsspError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (`| head`) stopped reading: stop quietly, as other command-line tools
        # do, with stdout pointed at devnull so that Python's own flush at exit cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code or 0


def main_entry() -> None:
    """Console-script entry point (``issp ...`` after ``pip install .``)."""
    raise SystemExit(main())
