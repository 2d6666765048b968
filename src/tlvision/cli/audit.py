"""`tlvision audit DATA`: label issues, duplicates and leakage, strangers and overlapping
classes, from the cached codes (tlvision.auditor). Writes audit.json, audit.html and
audit_fixes.csv to --out; never changes the dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tlvision import api
from tlvision.api.audit_report import DEFAULT_FOLDS
from tlvision.cli.common import announce_layout, print_json, quiet, show_progress
from tlvision.cli.options import add_training_options

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

AUDIT_OPTIONS = (
    "data_dir", "backbone", "weights", "input_size", "val_split", "cache_dir", "no_cache",
    "seed", "device",
)  # fmt: skip


def add_commands(commands: Commands) -> None:
    audit = commands.add_parser(
        "audit",
        help="find mislabelled images, duplicates and leaks between splits, and strangers",
    )
    add_training_options(audit, AUDIT_OPTIONS)
    audit.add_argument(
        "--out", type=Path, metavar="DIR",
        help="write audit.json, audit.html and audit_fixes.csv here (default runs/audit-<time>)",
    )  # fmt: skip
    audit.add_argument(
        "--run", type=Path, metavar="RUN",
        help="read the images with this trained run's backbone, weights and input size",
    )  # fmt: skip
    audit.add_argument(
        "--folds", type=int, default=DEFAULT_FOLDS,
        help="cross-validation folds for the out-of-fold probabilities (default %(default)s)",
    )  # fmt: skip
    audit.add_argument("--json", action="store_true", help="print audit.json")
    audit.set_defaults(handler=command_audit)


def command_audit(arguments: argparse.Namespace) -> int:
    announce_layout(arguments.data, arguments.val_split)
    report = api.audit(
        arguments.data, out=arguments.out or api.default_out_dir("audit"), run=arguments.run,
        backbone=arguments.backbone, weights=arguments.weights,
        input_size=arguments.input_size, folds=arguments.folds, cache_dir=arguments.cache_dir,
        no_cache=arguments.no_cache, val_split=arguments.val_split, seed=arguments.seed,
        device=arguments.device, log=quiet if arguments.json else print,
        verbose=show_progress(),
    )  # fmt: skip
    print_json(report.to_json()) if arguments.json else print(report)
    return 0
