"""`tlvision train` and `tlvision lr-find`: the training options come from TrainConfig's fields
(tlvision.cli.options); the handlers call the API and print."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlvision import api
from tlvision.cli.common import announce_layout, print_json, show_progress
from tlvision.cli.options import add_training_options, config_file_defaults, training_options
from tlvision.errors import UserError

if TYPE_CHECKING:
    from tlvision.training.lr_find import RangeTest

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

LR_FIND_PLOT = "lr_find.png"
LR_FIND_JSON = "lr_find.json"


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
        help="continue a stopped run from its last checkpoint (other options are ignored)",
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
    add_training_options(lr_find)
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
        api.resume(arguments.resume, log=print, verbose=show_progress())
        return finish_training(arguments, arguments.resume)
    if arguments.data is None:
        raise UserError(
            "train needs DATA (a folder with train/ and val/, or with one folder per class) "
            "or --resume RUN_DIR"
        )
    announce_layout(arguments.data, arguments.val_split)
    options = training_options(arguments)
    if arguments.lr == "find":
        run_dir = train_with_found_rate(arguments.data, options, verbose=show_progress())
    else:
        run_dir = api.train(arguments.data, **options, log=print, verbose=show_progress()).run_dir
    return finish_training(arguments, run_dir)


def finish_training(arguments: argparse.Namespace, run_dir: Path) -> int:
    """The run's report.html, unless --no-report; under torchrun rank 0 alone writes it."""
    if not arguments.no_report and os.environ.get("RANK", "0") == "0":
        report_after_training(run_dir, arguments.data)
    return 0


def report_after_training(run_dir: Path, data_dir: Path | None) -> None:
    from tlvision.compute.devices import resolve_device
    from tlvision.report.page import write_report
    from tlvision.runs.reader import read_model_json

    device = str(read_model_json(run_dir).get("config", {}).get("device", "auto"))
    result = write_report(run_dir, data_dir, device=resolve_device(device))
    print(f"report: {result.path} ({result.seconds:.1f}s)")


def train_with_found_rate(data: Path, options: dict[str, Any], *, verbose: bool) -> Path:
    """train --lr find: the range test, then the run at the suggested rate; the test's plot
    and numbers are kept in the run directory. Returns the run directory."""
    from tlvision.config import AUTO_STRATEGY
    from tlvision.training.lr_find import find_learning_rate

    if options.get("strategy") == AUTO_STRATEGY:
        raise UserError(
            "--lr find needs a --strategy: with --strategy auto the advisor sets the rate "
            "(or run `tlvision advise`, then train its strategy with --lr find)"
        )
    started = time.perf_counter()
    result = find_learning_rate(range_test_config(data, options), progress=verbose)
    print(
        f"lr-find: suggested --lr {result.suggested:.3g} "
        f"({len(result.rates)} steps on {result.route}, {time.perf_counter() - started:.0f}s)"
    )
    run = api.train(data, **{**options, "lr": result.suggested}, log=print, verbose=verbose)
    save_range_test(result, run.run_dir / LR_FIND_PLOT, run.run_dir / LR_FIND_JSON)
    return Path(run.run_dir)


def range_test_config(data: Path, options: dict[str, Any]) -> Any:
    """The TrainConfig the range test measures: the run's, its rate set by each step."""
    from tlvision.config import config_from_options

    options = {**options, "lr": 1.0}
    return config_from_options(data, options.pop("out", None) or "runs/lr-find", options)


def save_range_test(result: RangeTest, plot: Path, data: Path | None = None) -> None:
    from tlvision.jsonio import write_json_atomic
    from tlvision.report.plots import lr_find_plot

    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_bytes(lr_find_plot(result.rates, result.losses, result.suggested))
    if data is not None:
        write_json_atomic(data, result.to_json())


def command_lr_find(arguments: argparse.Namespace) -> int:
    from tlvision.training.lr_find import find_learning_rate

    announce_layout(arguments.data, arguments.val_split)
    quiet = arguments.json
    config = range_test_config(arguments.data, training_options(arguments))
    result = find_learning_rate(
        config, start=arguments.start_lr, end=arguments.end_lr, steps=arguments.steps,
        log=lambda message: print(message, file=sys.stderr), progress=not quiet,
    )  # fmt: skip
    save_range_test(result, arguments.plot)
    if quiet:
        print_json({**result.to_json(), "plot": str(arguments.plot)})
    else:
        print(
            f"suggested --lr {result.suggested:.3g} ({len(result.rates)} steps on {result.route}"
            f"{', stopped at divergence' if result.diverged else ''}); plot: {arguments.plot}"
        )
    return 0
