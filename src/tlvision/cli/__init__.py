"""The `tlvision` command: train, evaluate, predict, serve, demo, weights, backbones.

The commands are the Python API (api.py) plus printing: each handler calls the API function of
the same name with the parsed options and prints what it returns. Every problem the user can fix
is a UserError: one line on stderr naming the file and the fix, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlvision import __version__, api
from tlvision.cli.deploy import TTA_HELP
from tlvision.cli.deploy import add_commands as add_deploy_commands
from tlvision.cli.report import register as register_report_commands
from tlvision.config import (
    ADVISE_TIME_BUDGET_MINUTES,
    BATCHNORM_MODES,
    DEFAULT_BACKBONE,
    HEADS,
    TrainConfig,
)
from tlvision.errors import UserError
from tlvision.jsonio import json_text

DATA_HELP = "dataset folder: with train/ and val/, or flat with one folder per class"
VAL_SPLIT_HELP = (
    "hold out this stratified, seeded share of each class as val when there is no val/ folder "
    "(default 0.2 for a flat DATA/<class>/ folder)"
)


def _show_progress() -> bool:
    """Progress bars when someone watches: stderr is a terminal (tqdm's own rule)."""
    return sys.stderr.isatty()


def _add_cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir", type=Path, help="CNN-codes cache (default: ~/.cache/tlvision/features)"
    )
    parser.add_argument("--no-cache", action="store_true", help="keep CNN codes in memory only")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    from tlvision.config import (
        EPOCHS,
        FINETUNE_EPOCHS,
        FINETUNE_FREEZE_UNTIL,
        FINETUNE_VIEWS,
        PRECISIONS,
        SCHEDULES,
        STRATEGIES,
    )
    from tlvision.models.backbones import BACKBONES

    defaults = TrainConfig(data_dir=Path("."), out_dir=Path("."))
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<strategy>-<time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument(
        "--backbone", default=defaults.backbone, help=f"one of {', '.join(BACKBONES)}"
    )
    parser.add_argument(
        "--weights",
        help="pretrained weights: a name such as IMAGENET1K_V1 (default: the backbone's first), "
        "a .pth/.safetensors file, or none for random initialisation",
    )
    parser.add_argument(
        "--strategy",
        default=defaults.strategy,
        choices=[*STRATEGIES, "auto"],
        help="auto: measure the data (as `tlvision advise` does) and run the recommendation",
    )
    parser.add_argument(
        "--freeze-until",
        metavar="STAGE",
        help="finetune: keep the stages up to and including STAGE frozen (default "
        f"{FINETUNE_FREEZE_UNTIL}; none: train every stage; names: `tlvision backbones`)",
    )
    parser.add_argument(
        "--stage",
        help="linear-probe: take pooled codes from this stage instead of the top",
    )
    parser.add_argument(
        "--head",
        default=defaults.head,
        choices=HEADS,
        help="linear-probe: softmax layer (torch), logistic regression or linear SVM (sklearn)",
    )
    parser.add_argument(
        "--views",
        type=int,
        default=defaults.views,
        help="frozen routes: augmented views per train image beside the centre crop (default 0); "
        "finetune: augmented views beside the centre crop whose frozen-prefix output is kept "
        "(default "
        f"{FINETUNE_VIEWS}; 0 augments afresh each epoch and runs the whole network)",
    )
    _add_cache_options(parser)
    parser.add_argument(
        "--backbone-lr-mult",
        type=float,
        default=defaults.backbone_lr_mult,
        help="pretrained layers learn at this times --lr (default 0.1; 0.03 with --batchnorm "
        "frozen)",
    )
    parser.add_argument(
        "--batchnorm",
        choices=BATCHNORM_MODES,
        default=defaults.batchnorm,
        help="finetune: train (BatchNorm follows the batches' statistics) or frozen (ImageNet's "
        "statistics kept; default: chosen by measuring how far the data sits from them)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        metavar="PIXELS",
        help="side of the square the network sees (default: the weights' own, 224 for most)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=defaults.epochs,
        help=f"default {EPOCHS}; finetune: {FINETUNE_EPOCHS} (it starts from a trained head)",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--lr",
        type=learning_rate_argument,
        default=defaults.learning_rate,
        help="the new head's; `find`: run the learning-rate range test first (tlvision lr-find)",
    )
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--workers",
        type=int,
        help="data-loader processes (default: one per CPU core, up to 8; none when fine-tuning "
        "on the CPU)",
    )
    parser.add_argument("--val-split", type=float, metavar="FRACTION", help=VAL_SPLIT_HELP)
    parser.add_argument(
        "--class-weights",
        choices=["auto"],
        help="auto: weight the loss by inverse class frequency, for imbalanced classes",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="do not write RUN/report.html at the end"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a stopped run from its last checkpoint (other options are ignored)",
    )
    parser.add_argument(
        "--precision",
        default=defaults.precision,
        choices=PRECISIONS,
        help="auto: bf16 mixed precision on a CUDA GPU that has it, else 32; 16: float16 "
        "with a gradient scaler (CUDA)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine (runs torchrun; one per GPU with cuda)",
    )
    parser.add_argument(
        "--tensorboard", action="store_true", help="write TensorBoard events to RUN/tensorboard/"
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a run's config.toml: train as it says (options given here override it)",
    )


def learning_rate_argument(text: str) -> float | str:
    """--lr: a positive number, or `find` for the range test's suggestion."""
    if text == "find":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or `find`") from None


def train_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """The parsed train flags as api.train's keywords (the same names)."""
    names = (
        "strategy", "backbone", "epochs", "out", "overwrite", "weights", "freeze_until", "stage",
        "head", "views", "cache_dir", "no_cache", "input_size", "batch_size", "lr",
        "backbone_lr_mult", "batchnorm", "momentum", "weight_decay", "schedule", "seed", "device",
        "workers", "val_split", "class_weights", "precision", "tensorboard",
    )  # fmt: skip
    options = {name: getattr(arguments, name) for name in names}
    # settings with no option of their own come only from --config
    return options | {name: getattr(arguments, name) for name in CONFIG_ONLY if name in arguments}


CONFIG_ONLY = ("step_epochs", "step_gamma")  # TrainConfig fields set only through --config


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """`argv` less `option VALUE` / `option=VALUE` (what the launcher must not pass on)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == option:
            skip = True
        elif not token.startswith(option + "="):
            kept.append(token)
    return kept


def apply_config_file(
    parser: argparse.ArgumentParser, arguments: argparse.Namespace, argv: Sequence[str]
) -> argparse.Namespace:
    """Parse again with a --config file's settings as the defaults: the command line wins."""
    from tlvision.training.tracking import option_defaults

    arguments.train_parser.set_defaults(**option_defaults(arguments.config))
    return parser.parse_args(argv)


def announce_layout(data_dir: Path, val_split: float | None) -> None:
    """One line on stderr when a flat dataset is split for the user (stdout may be JSON)."""
    from tlvision.data.layouts import layout_note

    note = layout_note(data_dir, val_split)
    if note is not None:
        print(note, file=sys.stderr)


def command_train(arguments: argparse.Namespace) -> int:
    from tlvision.compute.distributed import launch, launched_by_torchrun

    if arguments.nproc is not None and not launched_by_torchrun():
        return launch(arguments.nproc, without_option(arguments.argv, "--nproc"))
    if arguments.resume is not None:
        api.resume(arguments.resume, log=print, verbose=_show_progress())
        return finish_training(arguments, arguments.resume)
    if arguments.data is None:
        raise UserError(
            "train needs DATA (a folder with train/ and val/, or with one folder per class) "
            "or --resume RUN_DIR"
        )
    announce_layout(arguments.data, arguments.val_split)
    options = train_options(arguments)
    if arguments.lr == "find":
        from tlvision.cli.report import train_with_found_rate

        run_dir = train_with_found_rate(arguments.data, options, verbose=_show_progress())
    else:
        run = api.train(arguments.data, **options, log=print, verbose=_show_progress())
        run_dir = run.run_dir
    return finish_training(arguments, run_dir)


def finish_training(arguments: argparse.Namespace, run_dir: Path) -> int:
    """The run's report.html, unless --no-report; under torchrun rank 0 alone writes it."""
    if not arguments.no_report and os.environ.get("RANK", "0") == "0":
        from tlvision.cli.report import report_after_training

        report_after_training(run_dir, arguments.data)
    return 0


def command_evaluate(arguments: argparse.Namespace) -> int:
    report = api.load(arguments.run_dir).evaluate(
        arguments.split_dir, device=arguments.device, tta=arguments.tta
    )
    print(json_text(report.to_json()) if arguments.json else report.to_text())
    return 0


def command_probe(arguments: argparse.Namespace) -> int:
    announce_layout(arguments.data, arguments.val_split)
    table = api.probe(
        arguments.data,
        val_split=arguments.val_split,
        backbone=arguments.backbone,
        weights=arguments.weights,
        stages=arguments.stages,
        heads=arguments.heads,
        input_size=arguments.input_size,
        cache_dir=arguments.cache_dir,
        no_cache=arguments.no_cache,
        seed=arguments.seed,
        device=arguments.device,
        log=(lambda _: None) if arguments.json else print,
        verbose=_show_progress(),
    )
    print(json_text(table.to_json()) if arguments.json else table)
    return 0


def command_advise(arguments: argparse.Namespace) -> int:
    announce_layout(arguments.data, arguments.val_split)
    advice = api.advise(
        arguments.data,
        backbone=arguments.backbone,
        weights=arguments.weights,
        seed=arguments.seed,
        time_budget=arguments.time_budget,
        cache_dir=arguments.cache_dir,
        no_cache=arguments.no_cache,
        val_split=arguments.val_split,
        device=arguments.device,
        log=(lambda _: None) if arguments.json else print,
        verbose=_show_progress(),
    )
    print(json_text(advice.to_json()) if arguments.json else advice)
    return 0


def command_check(arguments: argparse.Namespace) -> int:
    announce_layout(arguments.data, None)
    report = api.check(arguments.data, verbose=_show_progress())
    print(json_text(report.to_json()) if arguments.json else report)
    return report.exit_status


def command_demo(arguments: argparse.Namespace) -> int:
    data_dir = api.demo_data_dir()
    out_dir = arguments.out or api.default_out_dir("demo")
    print(f"demo: a 3-class set of {data_dir} (fish, monument, tool; see ATTRIBUTION.md)")
    print(
        f"step 1: tlvision train {data_dir} --strategy feature-extract "
        f"--epochs {arguments.epochs} --out {out_dir}"
    )
    run = api.train(
        data_dir,
        out=out_dir,
        epochs=arguments.epochs,
        overwrite=arguments.overwrite,
        device=arguments.device,
        log=print,
        verbose=_show_progress(),
    )
    print(f"\nstep 2: tlvision evaluate {out_dir} {data_dir / 'val'}")
    print(run.evaluate(data_dir / "val", device=arguments.device).to_text())
    examples = [next(iter(sorted((data_dir / "val" / name).iterdir()))) for name in run.classes]
    print(f"\nstep 3: tlvision predict {out_dir} IMAGE")
    for example, prediction in zip(
        examples, run.predict(examples, device=arguments.device), strict=True
    ):
        name, probability = prediction.top[0]
        print(f"  {example.parent.name}/{example.name} -> {name} ({probability:.3f})")
    from tlvision.cli.report import report_after_training

    print(f"\nstep 4: tlvision report {out_dir}")
    report_after_training(out_dir, data_dir)
    print(
        f"\ndone: training took {run.summary['seconds']:.1f}s; final val accuracy "
        f"{run.summary['final_val_acc']:.3f} (best {run.summary['best_val_acc']:.3f} at epoch "
        f"{run.summary['best_epoch']}); the run is in {out_dir} (model.safetensors, model.json, "
        "metrics.jsonl, summary.json, report.html)"
    )
    return 0


def command_weights_fetch(arguments: argparse.Namespace) -> int:
    from tlvision.models.backbones import get_backbone
    from tlvision.models.weights import ensure_weights_file

    backbone_name, _, weights_name = arguments.name.partition(":")
    backbone = get_backbone(backbone_name)
    spec = backbone.weights_named(weights_name) if weights_name else backbone.default_weights
    path = ensure_weights_file(spec)
    print(f"{backbone.name} {spec.name}: {path}")
    return 0


def command_weights_list(arguments: argparse.Namespace) -> int:
    from tlvision.models.backbones import BACKBONES, get_backbone
    from tlvision.models.weights import hub_checkpoints_dir

    cache = hub_checkpoints_dir()
    rows = []
    for name in BACKBONES:
        for spec in get_backbone(name).weights:
            sources = ["hub cache"]
            sources += ["url"] if spec.url else []
            sources += [f"package {spec.package.requirement}"] if spec.package else []
            state = "cached" if (cache / spec.filename).is_file() else "-"
            rows.append((f"{name}:{spec.name}", state, ", ".join(sources)))
    width = max(len(row[0]) for row in rows)
    print(f"hub cache: {cache}")
    for label, state, where in rows:
        print(f"{label:<{width}}  {state:<6}  {where}")
    return 0


def command_backbones(arguments: argparse.Namespace) -> int:
    from tlvision.models.backbones import BACKBONES, get_backbone

    for name in BACKBONES:
        spec = get_backbone(name)
        default = " (default)" if name == DEFAULT_BACKBONE else ""
        print(
            f"{name}{default}: {spec.feature_size} features, head {spec.head}, "
            f"weights {', '.join(w.name for w in spec.weights)}, "
            "stages "
            + ", ".join(
                f"{stage.name} ({stage.channels} ch, stride {stage.stride})"
                for stage in spec.stages
            )
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlvision",
        description="Train, evaluate and use an image classifier by transfer learning.",
    )
    parser.add_argument("--version", action="version", version=f"tlvision {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a classifier on DATA/train, validate on DATA/val"
    )
    train.add_argument("data", type=Path, nargs="?", metavar="DATA", help=DATA_HELP)
    add_train_options(train)
    train.set_defaults(handler=command_train, train_parser=train)

    evaluate = commands.add_parser("evaluate", help="accuracy, per-class P/R/F1, confusion matrix")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("split_dir", type=Path, metavar="DATA_SPLIT_DIR", help="e.g. DATA/val")
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--tta", action="store_true", help=TTA_HELP)
    evaluate.set_defaults(handler=command_evaluate)

    add_deploy_commands(commands)

    probe = commands.add_parser(
        "probe", help="val accuracy of linear heads on each stage's frozen codes"
    )
    probe.add_argument("data", type=Path, metavar="DATA", help=DATA_HELP)
    probe.add_argument("--backbone", default=DEFAULT_BACKBONE)
    probe.add_argument("--weights")
    probe.add_argument(
        "--stages", nargs="+", metavar="STAGE", help="default: every stage and the top"
    )
    probe.add_argument(
        "--heads",
        nargs="+",
        default=list(HEADS),
        choices=HEADS,
    )
    probe.add_argument("--input-size", type=int, metavar="PIXELS")
    probe.add_argument("--val-split", type=float, metavar="FRACTION", help=VAL_SPLIT_HELP)
    _add_cache_options(probe)
    probe.add_argument("--seed", type=int, default=TrainConfig.seed)
    probe.add_argument("--device", default=TrainConfig.device)
    probe.add_argument("--json", action="store_true")
    probe.set_defaults(handler=command_probe)

    advise = commands.add_parser(
        "advise", help="measure the data and recommend a strategy, with the evidence"
    )
    advise.add_argument("data", type=Path, metavar="DATA", help=DATA_HELP)
    advise.add_argument("--backbone", default=DEFAULT_BACKBONE)
    advise.add_argument("--weights")
    advise.add_argument(
        "--time-budget",
        type=float,
        default=ADVISE_TIME_BUDGET_MINUTES,
        metavar="MINUTES",
        help="for the training run",
    )
    _add_cache_options(advise)
    advise.add_argument("--val-split", type=float, metavar="FRACTION", help=VAL_SPLIT_HELP)
    advise.add_argument("--seed", type=int, default=TrainConfig.seed)
    advise.add_argument("--device", default="auto", help="where the run will train")
    advise.add_argument("--json", action="store_true")
    advise.set_defaults(handler=command_advise)

    check = commands.add_parser(
        "check", help="find broken, odd, duplicated and leaking files in a dataset"
    )
    check.add_argument("data", type=Path, metavar="DATA", help=DATA_HELP)
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=command_check)

    demo = commands.add_parser("demo", help="train and evaluate on the embedded demo set")
    demo.add_argument("--out", type=Path)
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(handler=command_demo)

    weights = commands.add_parser("weights", help="fetch or list pretrained weights")
    weights_commands = weights.add_subparsers(
        dest="weights_command", required=True, metavar="ACTION"
    )
    fetch = weights_commands.add_parser("fetch", help="put weights into the torch hub cache")
    fetch.add_argument("name", metavar="BACKBONE[:WEIGHTS]", help="e.g. mobilenet_v2")
    fetch.set_defaults(handler=command_weights_fetch)
    weights_list = weights_commands.add_parser("list", help="known weights and whether cached")
    weights_list.set_defaults(handler=command_weights_list)

    backbones = commands.add_parser("backbones", help="list backbones and their stages")
    backbones.set_defaults(handler=command_backbones)
    register_report_commands(commands)
    return parser


def never_fail_on_file_names() -> None:
    """Let stdout and stderr write any file name.

    A name that is not valid UTF-8 arrives as a str with lone surrogates (see tlvision.data.layouts); a
    strict stream (a UTF-8 locale such as en_US.UTF-8, or PYTHONIOENCODING=utf-8) would raise
    on it half-way through a report. Such a stream writes it as a backslash escape instead
    ("\\udcff", the spelling of the JSON files). Streams that already cope are left alone:
    surrogateescape (C and C.UTF-8 locales) writes the name's original bytes, as `ls` does.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    never_fail_on_file_names()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = parser.parse_args(argv)
    try:
        if getattr(arguments, "config", None) is not None:
            arguments = apply_config_file(parser, arguments, argv)
        arguments.argv = argv
        status: int = arguments.handler(arguments)
    except UserError as error:
        print(f"tlvision: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("tlvision: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
