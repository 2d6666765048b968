"""Reproducible, tracked runs: config.toml replays a run; TensorBoard holds its scalars."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tlvision.cli import build_parser, main
from tlvision.cli.options import training_options as train_options
from tlvision.cli.train import with_config_file as apply_config_file
from tlvision.errors import UserError
from tlvision.runs.config_file import read_config_toml

FAST = ["--weights", "none", "--input-size", "32", "--batch-size", "4", "--workers", "0"]


def metrics(run: Path) -> list[dict[str, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in r.items() if key != "seconds"} for r in records]


def test_config_replays_a_run_and_tensorboard_holds_its_scalars(
    tiny_dataset: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    first, replay = tmp_path / "first", tmp_path / "replay"
    assert main(["train", str(tiny_dataset), "--out", str(first), "--strategy", "finetune",
                 "--epochs", "2", "--schedule", "cosine", "--tensorboard", *FAST]) == 0  # fmt: skip
    assert main(["train", "--config", str(first / "config.toml"), "--out", str(replay)]) == 0

    assert metrics(replay) == metrics(first)
    saved = {run: tomllib.loads((run / "config.toml").read_text()) for run in (first, replay)}
    assert saved[replay].pop("out_dir") == str(replay.absolute())
    assert saved[first].pop("out_dir") == str(first.absolute())
    assert saved[replay] == saved[first]
    assert saved[first]["schedule"] == "cosine" and saved[first]["epochs"] == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(first / "tensorboard")).Reload()
    tags = events.Tags()
    for tag in ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"):
        assert tag in tags["scalars"]
    val_acc = [(event.step, event.value) for event in events.Scalars("accuracy/val")]
    assert val_acc == [(r["epoch"], pytest.approx(r["val_acc"])) for r in metrics(first)]
    learning_rates = [event.value for event in events.Scalars("lr")]
    assert learning_rates == [pytest.approx(r["lr"]) for r in metrics(first)]
    assert "confusion_matrix/val" in tags["images"]


def test_command_line_options_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'data_dir = "/data/set"\nout_dir = "/runs/a"\nepochs = 9\nlearning_rate = 0.5\n'
        'step_epochs = 3\nstrategy = "finetune"\n'
    )
    parser = build_parser()
    argv = ["train", "--config", str(config), "--epochs", "4", "--out", str(tmp_path / "b")]
    arguments = apply_config_file(parser, parser.parse_args(argv), argv)
    options = train_options(arguments)  # api.train's keywords
    assert options["epochs"] == 4 and options["out"] == tmp_path / "b"  # the command line wins
    assert options["lr"] == 0.5 and options["step_epochs"] == 3  # the file's
    assert arguments.data == Path("/data/set") and options["strategy"] == "finetune"


def test_a_bad_config_file_names_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("epochs = 3\nlearning_rat = 0.1\n")
    with pytest.raises(UserError, match="unknown setting 'learning_rat'"):
        read_config_toml(config)
    config.write_text('epochs = "three"\n')
    with pytest.raises(UserError, match="epochs"):
        read_config_toml(config)
