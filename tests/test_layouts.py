"""A flat DATA/<class>/*.jpg folder (no train/ or val/) in every command that reads a dataset.

Each command says once, on stderr, that it splits the folder 80/20 (seeded, stratified), and
every one of them sees the same split that `train` makes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlvision.cli import main
from tlvision.data.layouts import find_splits

FAST = ["--weights", "none", "--input-size", "48", "--epochs", "1", "--workers", "0"]
NOTE = "has no train/ and val/: using a seeded stratified 80/20 split of its class folders"


def stderr_note_once(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.err.count(NOTE) == 1, captured.err
    return captured.out


def test_train_on_a_flat_folder(
    flat_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["train", str(flat_dataset), "--out", str(run), "--seed", "5", *cache, *FAST]) == 0
    stderr_note_once(capsys)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["train_images"], summary["val_images"], summary["val_split"]) == (16, 4, 0.2)
    recorded = json.loads((run / "val_split.json").read_text())
    expected = find_splits(flat_dataset, seed=5).samples["val"]
    assert recorded["val_files"] == [str(path) for path, _ in expected]


def test_train_on_a_flat_folder_with_another_val_split(
    flat_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    arguments = ["train", str(flat_dataset), "--out", str(run), "--val-split", "0.5"]
    assert main([*arguments, "--strategy", "finetune", *FAST]) == 0
    assert "50/50 split" in capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["train_images"], summary["val_images"]) == (10, 10)


def test_check_on_a_flat_folder(flat_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(flat_dataset), "--json"]) == 0
    report = json.loads(stderr_note_once(capsys))
    assert report["layout"] == "flat"
    assert report["class_counts"] == {"all": {"circles": 10, "squares": 10}}


def test_probe_on_a_flat_folder(
    flat_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["probe", str(flat_dataset), "--weights", "none", "--input-size", "48",
                 "--stages", "top", "--heads", "logreg", "--no-cache", "--json"]  # fmt: skip
    assert main(arguments) == 0
    report = json.loads(stderr_note_once(capsys))
    [row] = report["rows"]
    assert row["stage"] == "top" and row["head"] == "logreg"


def test_advise_and_train_auto_on_a_flat_folder(
    flat_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["advise", str(flat_dataset), "--json", *cache]) == 0
    advice = json.loads(stderr_note_once(capsys))
    assert advice["evidence"]["size"]["train_images"] == 16
    assert advice["evidence"]["size"]["val_images"] == 4
    assert "--val-split" not in advice["command"]  # train splits a flat folder the same way

    run = tmp_path / "run"
    assert main(["train", str(flat_dataset), "--strategy", "auto", "--out", str(run), *cache]) == 0
    stderr_note_once(capsys)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["train_images"], summary["val_images"], summary["val_split"]) == (16, 4, 0.2)
    assert summary["strategy"] == json.loads((run / "advice.json").read_text())["strategy"]
