"""What users read first (issue 26): every command's help, range errors that name the value,
`check`'s counting and class-weight advice, and the words of the code-extraction bars."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import write_dataset

import tlvision
from tlvision.cli import build_parser, main


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                found.append((f"{prefix}{name}", command))
                found += subcommands(command, f"{prefix}{name} ")
    return found


def test_every_command_has_a_description_examples_and_help_for_each_argument() -> None:
    commands = subcommands(build_parser())
    assert {"train", "lr-find", "evaluate", "compare", "check", "weights fetch"} <= {
        name for name, _ in commands
    }
    for name, command in commands:
        text = command.format_help()
        assert command.description, name
        assert "examples:\n  tlvision " in text, name
        for action in command._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            label = action.option_strings or [action.dest]
            assert action.help, f"{name} {label[0]}: no help"
            shown = action.default not in (None, False) and action.option_strings
            if shown:
                assert "default" in action.help, f"{name} {label[0]}: default not shown"


@pytest.mark.parametrize(
    ("command", "flag", "default"),
    [
        ("train", "--batch-size", "32"),
        ("train", "--momentum", "0.9"),
        ("train", "--weight-decay", "0.0"),
        ("train", "--schedule", "step"),
        ("train", "--seed", "0"),
        ("predict", "--top-k", "1"),
        ("predict", "--batch-size", "32"),
    ],
)
def test_options_users_asked_about_show_help_and_their_default(
    command: str, flag: str, default: str
) -> None:
    text = dict(subcommands(build_parser()))[command].format_help()
    flat = re.sub(r"\s+", " ", text)
    match = re.search(re.escape(flag) + r" [A-Z_{},a-z]+ (.*?)\(default: ([^)]*)\)", flat)
    assert match is not None, flag
    assert match.group(1).strip() and match.group(2) == default


def test_positionals_of_compare_and_evaluate_are_explained() -> None:
    commands = dict(subcommands(build_parser()))
    flat = re.sub(r"\s+", " ", commands["evaluate"].format_help())
    assert (
        "RUN_DIR a run directory" in flat
        and "DATA_SPLIT a split folder (DATA/val), a label table (DATA/val.csv)" in flat
    )
    assert "--json print the scores as JSON" in flat
    assert "RUN run directories to compare" in re.sub(
        r"\s+", " ", commands["compare"].format_help()
    )


def test_lr_find_help_lists_only_the_options_it_uses() -> None:
    command = dict(subcommands(build_parser()))["lr-find"]
    flags = {flag for action in command._actions for flag in action.option_strings}
    text = command.format_help()
    for unused in ("--epochs", "--schedule", "--step-gamma", "--out", "--lr", "--tensorboard",
                   "--overwrite", "--precision"):  # fmt: skip
        assert unused not in flags and f"[{unused} " not in text, unused
    for used in ("--strategy", "--backbone-lr-mult", "--batch-size", "--start-lr", "--steps"):
        assert used in flags and used in text, used


def test_range_errors_name_the_bad_value(
    tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["lr-find", str(tiny_dataset), "--start-lr", "0.5", "--end-lr", "0.1"])
    assert status == 2
    assert "--start-lr 0.5, --end-lr 0.1" in capsys.readouterr().err
    assert main(["train", str(tiny_dataset), "--nproc", "0"]) == 2
    assert "--nproc 0:" in capsys.readouterr().err
    assert main(["train", str(tiny_dataset), "--epochs", "0"]) == 2
    assert "--epochs 0:" in capsys.readouterr().err


def test_user_error_is_also_a_value_error(tiny_dataset: Path) -> None:
    assert issubclass(tlvision.UserError, ValueError)
    with pytest.raises(ValueError, match="--epochs 0"):
        tlvision.train(tiny_dataset, epochs=0)


def test_check_counts_one_problem_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data")
    (data / "train" / "circles" / "empty.jpg").write_bytes(b"")
    assert main(["check", str(data)]) == 1
    out = capsys.readouterr().out
    assert "Result: 1 problem (1 zero-byte); fix it and run" in out
    assert "1 problems" not in out
    (data / "train" / "squares" / "empty.jpg").write_bytes(b"")
    assert main(["check", str(data)]) == 1
    assert "Result: 2 problems (2 zero-byte); fix them" in capsys.readouterr().out


def test_check_suggests_class_weights_only_when_the_classes_are_uneven(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    balanced = write_dataset(tmp_path / "balanced", per_class={"train": 9, "val": 3})
    (next((balanced / "train" / "circles").iterdir())).unlink()  # 8 against 9: 1.062 / 0.944
    report = tlvision.check(balanced)
    weights = report.details["suggested_class_weights"]
    assert weights is not None and max(weights.values()) / min(weights.values()) < 1.2
    assert "class weights" not in str(report).lower()
    assert "class-weights" not in str(report)

    uneven = write_dataset(tmp_path / "uneven", per_class={"train": 12, "val": 3})
    for path in sorted((uneven / "train" / "circles").iterdir())[3:]:
        path.unlink()  # 3 against 12
    assert "Suggested class weights (--class-weights auto)" in str(tlvision.check(uneven))
