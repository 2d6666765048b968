"""Interrupted and resumed runs (issue 26): --epochs on resume, the options it refuses, Ctrl-C
before the first epoch and after one (a real SIGINT to a real training process)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import write_dataset

import tlvision
from tlvision.cli import main
from tlvision.runs.layout import TRAINING_CHECKPOINT
from tlvision.training.checkpoint import load_training_checkpoint

SOURCE = Path(tlvision.__file__).resolve().parents[1]  # the src/ this test imports
FAST = [
    "--strategy", "finetune", "--weights", "none", "--input-size", "32", "--batch-size", "4",
    "--workers", "0", "--no-cache", "--device", "cpu", "--no-report",
]  # fmt: skip


def metrics_of(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_honours_epochs_and_refuses_other_changes(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    arguments = ["train", str(tiny_dataset), "--out", str(run), *FAST, "--schedule", "cosine"]
    assert main([*arguments, "--epochs", "2"]) == 0
    capsys.readouterr()

    resumed = ["train", "--resume", str(run), "--epochs", "3", "--workers", "1", "--no-report"]
    assert main(resumed) == 0
    out = capsys.readouterr().out
    assert "--epochs 3: the run now trains to epoch 3 (recorded 2)" in out
    assert "--workers 1: the run goes on with it (recorded 0)" in out
    metrics = metrics_of(run)
    assert [record["epoch"] for record in metrics] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert tomllib.loads((run / "config.toml").read_text())["epochs"] == 3
    # the cosine schedule recomputed for 3 epochs: epoch 3 starts 2/3 of the way down it
    expected = metrics[0]["lr"] * (1 + math.cos(math.pi * 2 / 3)) / 2
    assert metrics[2]["lr"] == pytest.approx(expected, rel=1e-4)

    assert main(["train", "--resume", str(run), "--lr", "0.5", "--batch-size", "8"]) == 2
    error = capsys.readouterr().err
    assert "--batch-size, --lr cannot change on resume (only --epochs, --device and" in error
    assert f"tlvision train --config {run / 'config.toml'} --out NEW_DIR" in error
    assert main(["train", str(tmp_path / "other"), "--resume", str(run), "--epochs", "4"]) == 2
    assert "DATA cannot change on resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "has already trained 3 epochs" in capsys.readouterr().err
    assert len(metrics_of(run)) == 3  # the refusals changed nothing


def start_training(
    arguments: list[str], output: Path, hook: Path | None = None
) -> subprocess.Popen[bytes]:
    path = [str(hook)] if hook is not None else []
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(SOURCE)])}
    with output.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "tlvision.cli", *arguments], env=environment, stdout=sink,
            stderr=subprocess.STDOUT,
            # A suite started in the background (`cmd &` in a script) runs with SIGINT ignored;
            # the child would inherit that and never stop (as in test_robustness.py).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip


def wait_until(condition: object, process: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, output.read_text()[-3000:]
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out:\n{output.read_text()[-3000:]}")


def interrupt(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=120)


# Put first on the training process's path: before epoch 1 the process says so in a file and
# holds, so the SIGINT lands before any checkpoint however slowly the machine runs (without the
# hold, a loaded machine let the short run finish before the signal came).
HOLD_BEFORE_EPOCH_1 = """
import os
import time
from pathlib import Path

import tlvision.training.finetune as finetune

run_epoch = finetune.run_epoch


def hold_then_run(trainer, epoch):
    if epoch == 1:
        Path(os.environ["TLVISION_TEST_HOLDING"]).touch()
        while True:
            time.sleep(60)
    run_epoch(trainer, epoch)


finetune.run_epoch = hold_then_run
"""


def test_ctrl_c_before_the_first_epoch_leaves_a_run_to_resume_or_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_dataset(tmp_path / "data", per_class={"train": 24, "val": 6})
    run, output, hook = tmp_path / "run", tmp_path / "output.txt", tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_BEFORE_EPOCH_1)
    holding = tmp_path / "holding"
    monkeypatch.setenv("TLVISION_TEST_HOLDING", str(holding))
    process = start_training(
        ["train", str(data), "--out", str(run), *FAST, "--epochs", "2"], output, hook
    )
    wait_until(holding.is_file, process, output)
    assert interrupt(process) == 130
    assert not (run / TRAINING_CHECKPOINT).exists(), "interrupted too late: no test"
    text = output.read_text()
    assert f"interrupted before the run saved a checkpoint; {run} keeps its options" in text
    assert f"tlvision train --resume {run}" in text
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)

    assert main(["train", "--resume", str(run)]) == 0
    assert [record["epoch"] for record in metrics_of(run)] == [1, 2]
    assert main(["train", str(data), "--out", str(copy), *FAST, "--epochs", "1"]) == 2
    assert (
        main(["train", str(data), "--out", str(copy), *FAST, "--epochs", "1", "--overwrite"]) == 0
    )
    assert [record["epoch"] for record in metrics_of(copy)] == [1]


# Put first on the training process's path: once epoch 1's checkpoint is written, the process
# holds there (the loop has not moved on), so the SIGINT lands between the save and epoch 2.
HOLD_AFTER_EPOCH_1 = """
import time

import tlvision.training.finetune as finetune

save_checkpoint = finetune.save_checkpoint


def save_then_hold(setup, epoch, *arguments, **keywords):
    save_checkpoint(setup, epoch, *arguments, **keywords)
    while epoch == 1:
        time.sleep(60)


finetune.save_checkpoint = save_then_hold
"""


def test_ctrl_c_says_which_epoch_the_checkpoint_holds(tiny_dataset: Path, tmp_path: Path) -> None:
    run, output, hook = tmp_path / "run", tmp_path / "output.txt", tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_AFTER_EPOCH_1)
    process = start_training(
        ["train", str(tiny_dataset), "--out", str(run), *FAST, "--epochs", "3"], output, hook
    )
    wait_until(lambda: (run / TRAINING_CHECKPOINT).is_file(), process, output)
    time.sleep(0.5)
    assert interrupt(process) == 130
    assert load_training_checkpoint(run).epoch == 1
    assert f"interrupted in epoch 2; {run / TRAINING_CHECKPOINT} holds epoch 1" in (
        output.read_text()
    )
    assert main(["train", "--resume", str(run)]) == 0
    assert [record["epoch"] for record in metrics_of(run)] == [1, 2, 3]
