"""The commands `report`, `compare` and `lr-find`, and the hooks `train` calls (--lr find, the
report at the end): argparse builders and handlers, kept out of cli.py."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlvision.config import TrainConfig
    from tlvision.training.lr_find import RangeTest

LR_FIND_PLOT = "lr_find.png"
LR_FIND_JSON = "lr_find.json"


def register(commands: Any) -> None:
    """Add report, compare and lr-find to the `tlvision` subcommands."""
    from tlvision.cli import DATA_HELP, add_train_options

    report = commands.add_parser("report", help="write RUN/report.html: what the run learned")
    report.add_argument("run_dir", type=Path, metavar="RUN")
    report.add_argument("--data", type=Path, help="dataset folder (default: the run's own)")
    report.add_argument("--device", default="auto")
    report.set_defaults(handler=command_report)

    compare = commands.add_parser("compare", help="a table of runs and their val curves overlaid")
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN")
    compare.add_argument(
        "--html", type=Path, default=Path("compare.html"), help="page to write (%(default)s)"
    )
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(handler=command_compare)

    lr_find = commands.add_parser(
        "lr-find", help="learning-rate range test: suggest --lr for these train options"
    )
    lr_find.add_argument("data", type=Path, metavar="DATA", help=DATA_HELP)
    add_train_options(lr_find)
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


def command_report(arguments: argparse.Namespace) -> int:
    from tlvision.compute.devices import resolve_device
    from tlvision.report.page import write_report

    result = write_report(
        arguments.run_dir, arguments.data, device=resolve_device(arguments.device)
    )
    print(f"wrote {result.path} in {result.seconds:.1f}s (val predictions from {result.source})")
    return 0


def report_after_training(run_dir: Path, data_dir: Path | None) -> None:
    from tlvision.compute.devices import resolve_device
    from tlvision.report.page import write_report

    config_device = _run_device(run_dir)
    result = write_report(run_dir, data_dir, device=resolve_device(config_device))
    print(f"report: {result.path} ({result.seconds:.1f}s)")


def _run_device(run_dir: Path) -> str:
    from tlvision.runs.checkpoint import read_model_json

    return str(read_model_json(run_dir).get("config", {}).get("device", "auto"))


def command_compare(arguments: argparse.Namespace) -> int:
    from tlvision.jsonio import json_text
    from tlvision.report.compare import compare_rows, compare_text, write_compare_page

    rows = compare_rows(arguments.run_dirs)
    page = write_compare_page(arguments.run_dirs, rows, arguments.html)
    if arguments.json:
        print(json_text(rows))
    else:
        print(compare_text(rows))
        print(f"\nval curves overlaid: {page}")
    return 0


# api.train's keyword names that differ from TrainConfig's fields


def config_from_options(data: Path, options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig that `api.train(data, **options)` would run (`lr` `find`: a placeholder
    the range test does not read)."""
    from tlvision.config import FIELD_OF_OPTION, TrainConfig

    values = {FIELD_OF_OPTION.get(name, name): value for name, value in options.items()}
    if values.get("learning_rate") == "find":
        values["learning_rate"] = 1.0
    values["out_dir"] = Path(values.get("out_dir") or "runs/lr-find")
    return TrainConfig(data_dir=Path(data), **values)


def save_range_test(result: RangeTest, plot: Path, data: Path | None = None) -> None:
    from tlvision.jsonio import write_json_atomic
    from tlvision.report.plots import lr_find_plot

    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_bytes(lr_find_plot(result.rates, result.losses, result.suggested))
    if data is not None:
        write_json_atomic(data, result.to_json())


def command_lr_find(arguments: argparse.Namespace) -> int:
    from tlvision.cli import announce_layout
    from tlvision.jsonio import json_text
    from tlvision.training.lr_find import find_learning_rate

    announce_layout(arguments.data, arguments.val_split)
    quiet = arguments.json

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    from tlvision.cli import train_options

    config = config_from_options(arguments.data, train_options(arguments))
    result = find_learning_rate(
        config, start=arguments.start_lr, end=arguments.end_lr,
        steps=arguments.steps, log=log, progress=not quiet,
    )  # fmt: skip
    save_range_test(result, arguments.plot)
    if quiet:
        print(json_text({**result.to_json(), "plot": str(arguments.plot)}))
    else:
        print(
            f"suggested --lr {result.suggested:.3g} ({len(result.rates)} steps on {result.route}"
            f"{', stopped at divergence' if result.diverged else ''}); plot: {arguments.plot}"
        )
    return 0


def train_with_found_rate(data: Path, options: dict[str, Any], *, verbose: bool) -> Path:
    """train --lr find: the range test, then the run at the suggested rate; the test's plot
    and numbers are kept in the run directory. Returns the run directory."""
    from tlvision import api
    from tlvision.errors import UserError
    from tlvision.training.lr_find import find_learning_rate

    if options.get("strategy") == "auto":
        raise UserError(
            "--lr find needs a --strategy: with --strategy auto the advisor sets the rate "
            "(or run `tlvision advise`, then train its strategy with --lr find)"
        )
    started = time.perf_counter()
    result = find_learning_rate(config_from_options(data, options), progress=verbose)
    print(
        f"lr-find: suggested --lr {result.suggested:.3g} "
        f"({len(result.rates)} steps on {result.route}, {time.perf_counter() - started:.0f}s)"
    )
    run = api.train(data, **{**options, "lr": result.suggested}, log=print, verbose=verbose)
    save_range_test(result, run.run_dir / LR_FIND_PLOT, run.run_dir / LR_FIND_JSON)
    return Path(run.run_dir)
