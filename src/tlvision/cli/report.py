"""`tlvision report` and `tlvision compare`: what finished runs learned, as pages."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tlvision.cli.common import print_json

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def add_commands(commands: Commands) -> None:
    report = commands.add_parser("report", help="write RUN/report.html: what the run learned")
    report.add_argument("run_dir", type=Path, metavar="RUN")
    report.add_argument("--data", type=Path, help="dataset folder (default: the run's own)")
    report.add_argument("--device", default="auto", help="where the model runs (default auto)")
    report.set_defaults(handler=command_report)

    compare = commands.add_parser("compare", help="a table of runs and their val curves overlaid")
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN")
    compare.add_argument(
        "--out", "--html", type=Path, dest="out", metavar="PAGE",
        help="page to write (default: compare.html in the folder that holds the runs)",
    )  # fmt: skip
    compare.add_argument(
        "--overwrite", action="store_true", help="replace PAGE if it exists (default: refuse)"
    )
    compare.add_argument("--json", action="store_true", help="print the table as JSON")
    compare.set_defaults(handler=command_compare)


def command_report(arguments: argparse.Namespace) -> int:
    from tlvision.compute.devices import resolve_device
    from tlvision.report.page import write_report

    result = write_report(
        arguments.run_dir, arguments.data, device=resolve_device(arguments.device)
    )
    print(f"wrote {result.path} in {result.seconds:.1f}s (val predictions from {result.source})")
    return 0


def command_compare(arguments: argparse.Namespace) -> int:
    from tlvision.report.compare import compare_rows, compare_text, write_compare_page

    rows = compare_rows(arguments.run_dirs)
    page = write_compare_page(
        arguments.run_dirs, rows, arguments.out, overwrite=arguments.overwrite
    )
    if arguments.json:
        print_json(rows)
    else:
        print(compare_text(rows))
        print(f"\nval curves overlaid: {page}")
    return 0
