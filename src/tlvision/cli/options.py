"""The training options as flags: one per TrainConfig field, made from the field (tlvision.config)
so that the command line, the API, config.toml and the report's reproduce line cannot drift."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tlvision.config import AUTO_STRATEGY, OptionField, option_fields


def learning_rate_argument(text: str) -> float | str:
    """--lr: a positive number, or `find` for the range test's suggestion."""
    if text == "find":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or `find`") from None


# Flags whose values the command line parses itself.
PARSERS: dict[str, Callable[[str], Any]] = {"learning_rate": learning_rate_argument}


def registry_names(registry: str) -> list[str]:
    """The names a registry-backed option takes (imports no torch)."""
    if registry == "backbone":
        from tlvision.models.backbone import BACKBONES

        return BACKBONES.names()
    from tlvision.training.strategy import STRATEGIES

    return [*STRATEGIES.names(), AUTO_STRATEGY]


def _help(option: OptionField) -> str:
    text = option.option.help
    if option.option.registry:
        text += f" (one of {', '.join(registry_names(option.option.registry))})"
    if option.option.registry == "strategy":
        from tlvision.training.strategy import strategy_help

        text += f". {strategy_help()}"
    shown = option.default is not None and option.default is not dataclasses.MISSING
    if shown and option.type is not bool:
        text += " (default: %(default)s)"
    return text


def add_training_options(
    parser: argparse.ArgumentParser,
    fields: Sequence[str] | None = None,
    *,
    data_optional: bool = False,
) -> None:
    """DATA and one flag per option: every TrainConfig field, or those named in `fields`.
    `data_optional`: DATA may be left out (train --resume and --config stand in for it)."""
    for option in option_fields():
        if fields is not None and option.field not in fields:
            continue
        if option.field == "data_dir":
            parser.add_argument(
                "data", type=Path, nargs="?" if data_optional else None, metavar="DATA",
                help=option.option.help,
            )  # fmt: skip
        elif option.type is bool:
            parser.add_argument(
                option.flag, dest=option.name, action="store_true", help=_help(option)
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.name,
                type=PARSERS.get(option.field, option.type),
                default=None if option.field == "out_dir" else option.default,
                choices=option.option.choices or None,
                metavar=option.option.metavar,
                help=_help(option),
            )


def training_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """The parsed options by their API keywords (`lr`, `workers`), DATA left out."""
    return {
        option.name: getattr(arguments, option.name)
        for option in option_fields()
        if option.field != "data_dir" and hasattr(arguments, option.name)  # lr-find has fewer
    }


def config_file_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """A config.toml's settings (by field) as defaults for the flags (by option name)."""
    by_field = {option.field: option.name for option in option_fields()}
    return {by_field[field]: value for field, value in values.items()}
