"""Messy data and killed runs: broken files skipped, exact resume, NaN stop, val split."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from salted_data import make_salted

from tlvision.checkpoint import TRAINING_CHECKPOINT, load_training_checkpoint
from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.data import find_splits
from tlvision.errors import UserError
from tlvision.training import fit

FAST = ["--weights", "none", "--input-size", "48", "--batch-size", "8", "--workers", "0"]
BROKEN = {"zero.jpg", "truncated.jpg", "text.jpg", "bomb.png"}
ODD_MODES = {"cmyk.jpg", "rgba.png", "sixteen.png", "palette.png", "gray.jpg", "rotated.jpg"}


def test_training_skips_broken_files_and_uses_odd_modes(tmp_path: Path) -> None:
    data = make_salted(tmp_path)
    out = tmp_path / "run"
    config = TrainConfig(
        data_dir=data, out_dir=out, backbone="resnet18", weights="none", input_size=48,
        epochs=1, batch_size=8, num_workers=0,
    )  # fmt: skip
    summary = fit(config, log=lambda _: None)
    skipped = {Path(entry["path"]).name: entry["reason"] for entry in summary["skipped_files"]}
    assert set(skipped) == BROKEN
    assert all(reason for reason in skipped.values())
    on_disk = json.loads((out / "summary.json").read_text())
    assert {Path(entry["path"]).name for entry in on_disk["skipped_files"]} == BROKEN
    used = {path.name for path, _ in find_splits(data).samples["train"]} - BROKEN
    assert used >= ODD_MODES


def metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_command(data: Path, out: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "tlvision.cli", "train", str(data), "--out", str(out),
        "--strategy", "finetune", "--backbone", "resnet18", "--epochs", str(epochs),
        "--lr", "0.02", "--schedule", "cosine", *FAST,
    ]  # fmt: skip


def wait_for_epoch(run: Path, epoch: int, process: subprocess.Popen[bytes]) -> int:
    """Poll the checkpoint until it reaches `epoch`; return the epoch it holds."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        if (run / TRAINING_CHECKPOINT).exists():
            saved = load_training_checkpoint(run).epoch
            if saved >= epoch:
                return saved
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture
def resume_dataset(dataset_factory) -> Path:  # type: ignore[no-untyped-def]
    return dataset_factory(
        classes=("circles", "squares", "stripes"), per_class={"train": 24, "val": 8}
    )


def test_sigkill_then_resume_gives_the_uninterrupted_results(
    resume_dataset: Path, tmp_path: Path
) -> None:
    epochs = 4
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(train_command(resume_dataset, whole, epochs), check=True, capture_output=True)

    process = subprocess.Popen(
        train_command(resume_dataset, killed, epochs),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = wait_for_epoch(killed, 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert saved < epochs, "killed too late to test resuming"
    assert not (killed / "summary.json").exists()

    assert main(["train", "--resume", str(killed)]) == 0
    resumed, uninterrupted = metrics(killed), metrics(whole)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(resumed, uninterrupted, strict=True):
        # val_acc alone saturates on this easy set; the losses show the runs are the same run.
        assert a["val_acc"] == b["val_acc"] and a["train_acc"] == b["train_acc"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6, abs=1e-7)
        assert a["lr"] == pytest.approx(b["lr"])
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == saved
    assert (
        summary["best_val_acc"] == json.loads((whole / "summary.json").read_text())["best_val_acc"]
    )


def test_ctrl_c_keeps_the_last_epoch_and_says_how_to_resume(
    resume_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    process = subprocess.Popen(
        train_command(resume_dataset, run, 20), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_epoch(run, 1, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert b"Traceback" not in stderr
    assert f"--resume {run}".encode() in stdout
    assert load_training_checkpoint(run).epoch >= 1


def test_a_nan_loss_stops_with_a_clear_message(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    status = main(
        ["train", str(tiny_dataset), "--out", str(run), "--strategy", "finetune",
         "--backbone", "resnet18", "--lr", "1e30", "--epochs", "3", *FAST]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2
    assert "loss became" in error and "--lr" in error and "\n" not in error.strip()
    assert not (run / "model.safetensors").exists()
    if (run / TRAINING_CHECKPOINT).exists():  # a good epoch before the blow-up is kept intact
        checkpoint = load_training_checkpoint(run)
        assert all(
            t.isfinite().all() for t in checkpoint.model_state.values() if t.is_floating_point()
        )


def test_val_split_is_stratified_seeded_and_recorded(tiny_dataset: Path, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(tiny_dataset / "val")
    with pytest.raises(UserError, match="--val-split"):
        find_splits(tiny_dataset)
    first = find_splits(tiny_dataset, val_split=0.25, seed=3)
    again = find_splits(tiny_dataset, val_split=0.25, seed=3)
    other = find_splits(tiny_dataset, val_split=0.25, seed=4)
    assert first.samples == again.samples and first.samples != other.samples
    assert first.class_counts("val") == [2, 2] and first.class_counts("train") == [6, 6]
    assert not {p for p, _ in first.samples["val"]} & {p for p, _ in first.samples["train"]}
    run = tmp_path / "run"
    assert main(["train", str(tiny_dataset), "--out", str(run), "--val-split", "0.25",
                 "--epochs", "1", "--seed", "3", *FAST]) == 0  # fmt: skip
    recorded = json.loads((run / "val_split.json").read_text())
    assert recorded["val_files"] == [str(path) for path, _ in first.samples["val"]]
    assert json.loads((run / "summary.json").read_text())["val_split"] == 0.25


def test_class_weights_auto(dataset_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = dataset_factory(per_class={"train": 8, "val": 2})
    for file in sorted((data / "train" / "squares").iterdir())[:6]:
        file.unlink()  # 8 circles, 2 squares
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--class-weights", "auto",
                 "--epochs", "1", *FAST]) == 0  # fmt: skip
    weights = json.loads((run / "summary.json").read_text())["class_weights"]
    assert weights == pytest.approx([10 / (2 * 8), 10 / (2 * 2)])


def test_resume_of_a_frozen_route_reruns_it(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", str(tiny_dataset), "--out", str(run), "--epochs", "2", *FAST]
    assert main(args) == 0
    expected = metrics(run)
    (run / "summary.json").unlink()  # as if killed before the end
    (run / "model.safetensors").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert metrics(run) == [
        {**record, "seconds": again["seconds"]}
        for record, again in zip(expected, metrics(run), strict=True)
    ]
    assert (run / "model.safetensors").exists()
