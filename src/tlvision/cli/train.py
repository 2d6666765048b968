"""`tlvision train` and `tlvision lr-find`: the training options come from TrainConfig's fields
(tlvision.cli.options); the handlers call the API and print."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlvision import api
from tlvision.api.rate import LR_FIND_PLOT
from tlvision.cli.common import announce_layout, print_json, show_progress
from tlvision.cli.options import add_training_options, config_file_defaults, training_options
from tlvision.errors import UserError

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

# The training options the range test reads (tlvision.training.lr_find): not the rate it
# finds, nor what only matters after it (epochs, the schedule, the run directory).
LR_FIND_FIELDS = (
    "data_dir", "backbone", "weights", "strategy", "freeze_until", "stage", "head",
    "input_size", "batch_size", "backbone_lr_mult", "momentum", "weight_decay", "seed",
    "device", "num_workers", "views", "batchnorm", "cache_dir", "no_cache", "val_split",
    "class_weights",
)  # fmt: skip


def add_commands(commands: Commands) -> None:
    train = commands.add_parser(
        "train", help="train a classifier on DATA/train, validate on DATA/val"
    )
    add_training_options(train, data_optional=True)
    train.add_argument(
        "--no-report", action="store_true", help="do not write RUN/report.html at the end"
    )
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a stopped run from its last checkpoint, with the options it recorded; "
        "--epochs may change (to train longer or stop sooner), and --device and --workers; "
        "other options are refused",
    )
    train.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine (runs torchrun; one per GPU with cuda)",
    )
    train.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a run's config.toml: train as it says (options given here override it)",
    )
    train.set_defaults(handler=command_train, config_parser=train)

    lr_find = commands.add_parser(
        "lr-find", help="learning-rate range test: suggest --lr for these train options"
    )
    add_training_options(lr_find, LR_FIND_FIELDS)
    lr_find.add_argument("--start-lr", type=float, default=1e-6)
    lr_find.add_argument("--end-lr", type=float, default=1.0)
    lr_find.add_argument(
        "--steps", type=int, help="default 300 on codes (frozen routes), 100 for finetune"
    )
    lr_find.add_argument(
        "--plot", type=Path, default=Path(LR_FIND_PLOT), help="where to save the plot"
    )
    lr_find.add_argument("--json", action="store_true")
    lr_find.set_defaults(handler=command_lr_find)


def with_config_file(
    parser: argparse.ArgumentParser, arguments: argparse.Namespace, argv: Sequence[str]
) -> argparse.Namespace:
    """Parse again with a --config file's settings as the defaults: the command line wins."""
    from tlvision.runs.config_file import read_config_toml

    arguments.config_parser.set_defaults(**config_file_defaults(read_config_toml(arguments.config)))
    return parser.parse_args(argv)


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


def command_train(arguments: argparse.Namespace) -> int:
    from tlvision.compute.distributed import launch, launched_by_torchrun

    if arguments.nproc is not None and not launched_by_torchrun():
        return launch(arguments.nproc, without_option(arguments.argv, "--nproc"))
    if arguments.resume is not None:
        api.resume(
            arguments.resume, log=print, verbose=show_progress(), no_report=arguments.no_report,
            **options_given(arguments),
        )  # fmt: skip
        return 0
    if arguments.data is None:
        raise UserError(
            "train needs DATA (a folder with train/ and val/, or with one folder per class) "
            "or --resume RUN_DIR"
        )
    announce_layout(arguments.data, arguments.val_split)
    api.train(
        arguments.data, **training_options(arguments), no_report=arguments.no_report, log=print,
        verbose=show_progress(),
    )  # fmt: skip
    return 0


def options_given(arguments: argparse.Namespace) -> dict[str, Any]:
    """The training options set on the command line (not left at their defaults), by API name,
    DATA as `data`: what --resume is asked to change."""
    given = {
        name: value
        for name, value in training_options(arguments).items()
        if value != arguments.config_parser.get_default(name)
    }
    return {**given, "data": arguments.data} if arguments.data is not None else given


def report_after_training(run_dir: Path, data_dir: Path | None) -> None:
    """Written after the run's result is printed; its time, imports included, shown apart."""
    started = time.perf_counter()
    from tlvision.compute.devices import resolve_device
    from tlvision.report.page import write_report
    from tlvision.runs.reader import read_model_json

    device = str(read_model_json(run_dir).get("config", {}).get("device", "auto"))
    result = write_report(run_dir, data_dir, device=resolve_device(device))
    print(f"report: {result.path} ({time.perf_counter() - started:.1f}s)")


def command_lr_find(arguments: argparse.Namespace) -> int:
    announce_layout(arguments.data, arguments.val_split)
    quiet = arguments.json
    result = api.lr_find(
        arguments.data, start_lr=arguments.start_lr, end_lr=arguments.end_lr,
        steps=arguments.steps, plot=arguments.plot,
        log=lambda message: print(message, file=sys.stderr), verbose=not quiet,
        **training_options(arguments),
    )  # fmt: skip
    if quiet:
        print_json({**result.to_json(), "plot": str(arguments.plot)})
    else:
        print(result)
    return 0
