"""The advisor on real weights: its measurements, its decision rules and reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlvision import demo_data_dir
from tlvision.advisor import recommended_input_size
from tlvision.cli import main


def test_input_size_follows_native_resolution() -> None:
    assert recommended_input_size(371, 224) == 224  # photos: the weights' own size
    assert recommended_input_size(32, 224) == 64  # digits: twice native
    assert recommended_input_size(128, 224) == 128
    assert recommended_input_size(8, 224) == 64  # never below 64
    assert recommended_input_size(0, 224) == 224  # unreadable headers: the default


@pytest.mark.slow
def test_advice_on_demo_photos_is_frozen_features_and_reproducible(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    arguments = ["advise", str(demo_data_dir()), "--json", "--cache-dir", str(tmp_path)]
    assert main(arguments) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(arguments) == 0
    second = json.loads(capsys.readouterr().out)
    for key in ("strategy", "stage", "size", "similarity", "command"):
        assert first[key] == second[key]
    assert first["evidence"]["probe"] == second["evidence"]["probe"]
    assert first["size"] == "small" and first["similarity"] == "similar"
    # Small and similar: a linear classifier on the top codes.
    assert first["strategy"] == "feature-extract" and first["stage"] is None
    assert first["command"].startswith("tlvision train ")
    evidence = first["evidence"]
    assert evidence["size"]["train_images"] == 51
    assert 0 < evidence["pretrained_fit"]["imagenet_confidence"] <= 1
    assert set(evidence["probe"]) == {"stage2", "stage3", "stage4", "top"}


def test_advise_refuses_random_weights(
    tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["advise", str(tiny_dataset), "--weights", "none"]) == 2
    assert "pretrained" in capsys.readouterr().err


@pytest.mark.slow
def test_train_auto_runs_the_advice_and_records_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import shutil

    # Only train/: the advisor must measure the same seeded split that training then uses.
    data = tmp_path / "photos"
    shutil.copytree(demo_data_dir() / "train", data / "train")
    run = tmp_path / "run"
    common = ["--val-split", "0.25", "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]
    assert main(["train", str(data), "--strategy", "auto", *common]) == 0
    printed = capsys.readouterr().out
    assert "recommended:" in printed

    advice = json.loads((run / "advice.json").read_text())
    model = json.loads((run / "model.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert (advice["size"], advice["similarity"]) == ("small", "similar")
    assert advice["strategy"] == "feature-extract"
    assert model["strategy"] == summary["strategy"] == advice["strategy"]
    assert "--val-split 0.25" in advice["command"]
    size = advice["evidence"]["size"]
    assert (size["train_images"], size["val_images"]) == (
        summary["train_images"],
        summary["val_images"],
    )
    assert summary["val_split"] == 0.25 and (run / "val_split.json").is_file()
    assert summary["best_val_acc"] >= 0.9

    # An occupied --out is refused before the advisor spends its time, and the run survives.
    assert main(["train", str(data), "--strategy", "auto", *common]) == 2
    captured = capsys.readouterr()
    assert "--overwrite" in captured.err and "recommended:" not in captured.out
    assert json.loads((run / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_train_auto_with_no_cache_writes_no_codes_to_disk(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:

    cache = tmp_path / "cache"
    arguments = ["train", str(demo_data_dir()), "--strategy", "auto", "--no-cache"]
    assert main([*arguments, "--cache-dir", str(cache), "--out", str(tmp_path / "run")]) == 0
    assert "recommended:" in capsys.readouterr().out
    assert not cache.exists()  # neither the advisor nor the training run wrote codes
    assert (tmp_path / "run" / "model.safetensors").is_file()
