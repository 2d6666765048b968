"""Messy data and killed runs: broken files skipped, exact resume, NaN stop, val split."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from salted_data import make_salted

from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.data.images import load_rgb_image
from tlvision.data.layouts import find_splits
from tlvision.data.loading import ImageDataset
from tlvision.data.transforms import build_transforms
from tlvision.errors import UserError
from tlvision.runs.reader import load_run_model
from tlvision.training.checkpoint import load_training_checkpoint
from tlvision.training.fit import fit

FAST = ["--weights", "none", "--input-size", "48", "--batch-size", "8", "--workers", "0"]
BROKEN = {"zero.jpg", "truncated.jpg", "text.jpg", "bomb.png"}
ODD_MODES = {"cmyk.jpg", "rgba.png", "sixteen.png", "palette.png", "gray.jpg", "rotated.jpg"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def train_arguments(
    data: Path, out: Path, epochs: int, schedule: str = "cosine", *extra: str
) -> list[str]:
    return [
        "train", str(data), "--out", str(out), "--strategy", "finetune", "--backbone", "resnet18",
        "--epochs", str(epochs), "--lr", "0.02", "--schedule", schedule, *FAST, *extra,
    ]  # fmt: skip


def start_training(
    arguments: list[str], stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """`tlvision train` in its own process, its log unbuffered so the test can follow it, on
    as many threads as this one (so that its numbers match a run made here)."""
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "tlvision.cli", *arguments],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        # Ctrl-C as at a terminal: a shell without job control starts background jobs (`cmd &`
        # in a CI script) with SIGINT ignored, and the run would inherit that and never stop.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_epoch(process: subprocess.Popen[bytes], epoch: int) -> None:
    """Read the run's log until it reports `epoch`: that line comes after its checkpoint."""
    assert process.stdout is not None
    for line in process.stdout:
        words = line.decode().split()
        if words[:1] == ["epoch"] and words[1].startswith(f"{epoch}/"):
            return
    raise AssertionError("the run ended before it could be interrupted")


def from_the_second_pass(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Doctor the data source, not the loop: from each dataset's second pass on (epoch 2 for
    the train images), every image read goes through `change`."""
    reads: dict[int, int] = {}
    read_image = ImageDataset.__getitem__

    def doctored(dataset: ImageDataset, index: int) -> tuple[torch.Tensor, int]:
        image, label = read_image(dataset, index)
        reads[id(dataset)] = reads.get(id(dataset), 0) + 1
        return (change(image) if reads[id(dataset)] > len(dataset) else image), label

    monkeypatch.setattr(ImageDataset, "__getitem__", doctored)


def press_ctrl_c(image: torch.Tensor) -> torch.Tensor:
    raise KeyboardInterrupt


@pytest.fixture
def resume_dataset(dataset_factory) -> Path:  # type: ignore[no-untyped-def]
    return dataset_factory(
        classes=("circles", "squares", "stripes"), per_class={"train": 12, "val": 4}
    )


# One SIGKILL (a run in its own process) is enough: how a run ended does not change what its
# checkpoint holds, so the other schedules stop in-process, by Ctrl-C in epoch 2 (faster). The
# SIGKILL run has every speed-up of the default finetune on (the frozen prefix's kept views, the
# head started on codes, no loader processes) and BatchNorm's statistics frozen; the Ctrl-C
# runs decode and augment each epoch (--views 0), the path that the Ctrl-C is injected into.
@pytest.mark.parametrize(
    ("schedule", "interruption", "extra"),
    [
        ("cosine", "sigkill", ("--batchnorm", "frozen")),
        ("onecycle", "ctrl-c", ("--views", "0")),
        ("constant", "ctrl-c", ("--views", "0")),
    ],
)
def test_interrupted_then_resumed_gives_the_uninterrupted_results(
    resume_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], schedule: str, interruption: str, extra: tuple[str, ...],
) -> None:  # fmt: skip
    epochs = 3
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(train_arguments(resume_dataset, whole, epochs, schedule, *extra)) == 0
    kept_prefix = "frozen prefix (up to stage2) run once" in capsys.readouterr().out
    assert kept_prefix == (interruption == "sigkill")

    if interruption == "sigkill":
        process = start_training(train_arguments(resume_dataset, stopped, epochs, schedule, *extra))
        wait_for_epoch(process, 1)
        process.send_signal(signal.SIGKILL)
        process.wait()
    else:
        from_the_second_pass(monkeypatch, press_ctrl_c)
        assert main(train_arguments(resume_dataset, stopped, epochs, schedule, *extra)) == 130
        monkeypatch.undo()
    saved = load_training_checkpoint(stopped).epoch
    assert saved < epochs, "stopped too late to test resuming"
    assert not (stopped / "summary.json").exists()

    assert main(["train", "--resume", str(stopped)]) == 0
    resumed, uninterrupted = metrics(stopped), metrics(whole)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(resumed, uninterrupted, strict=True):
        # val_acc alone saturates on this easy set; the losses show the runs are the same run.
        assert a["val_acc"] == b["val_acc"] and a["train_acc"] == b["train_acc"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6, abs=1e-7)
        assert a["lr"] == pytest.approx(b["lr"])
    # The schedule really ran: one rate throughout for constant, a new one each epoch otherwise.
    distinct_rates = len({record["lr"] for record in uninterrupted})
    assert distinct_rates == (1 if schedule == "constant" else epochs)
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == saved
    assert (
        summary["best_val_acc"] == json.loads((whole / "summary.json").read_text())["best_val_acc"]
    )


def test_ctrl_c_keeps_the_last_epoch_and_says_how_to_resume(
    resume_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    process = start_training(train_arguments(resume_dataset, run, 20), stderr=subprocess.PIPE)
    wait_for_epoch(process, 1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert b"Traceback" not in stderr
    assert f"--resume {run}".encode() in stdout
    assert load_training_checkpoint(run).epoch >= 1


def test_a_nan_loss_after_a_good_epoch_stops_and_keeps_that_epoch(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # From the second pass over the train images (epoch 2) every pixel is NaN: epoch 1 is good
    # and epoch 2's first loss is NaN. --views 0: the images are read each epoch.
    from_the_second_pass(monkeypatch, lambda image: torch.full_like(image, float("nan")))
    run = tmp_path / "run"
    status = main(
        ["train", str(tiny_dataset), "--out", str(run), "--strategy", "finetune",
         "--backbone", "resnet18", "--epochs", "3", "--views", "0", *FAST]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2
    assert "loss became nan" in error and "--lr" in error and "\n" not in error.strip()
    assert "epoch 2:" in error and "last good epoch (1)" in error
    assert not (run / "model.safetensors").exists()
    records = metrics(run)
    assert [record["epoch"] for record in records] == [1]
    assert all(math.isfinite(records[0][key]) for key in ("train_loss", "val_loss"))
    checkpoint = load_training_checkpoint(run)
    assert checkpoint.epoch == 1
    assert checkpoint.info["best_epoch"] == 1
    assert checkpoint.info["best_val_acc"] == records[0]["val_acc"]
    for state in (checkpoint.model_state, checkpoint.best_state):
        assert all(t.isfinite().all() for t in state.values() if t.is_floating_point())


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


def eight_circles_two_squares(dataset_factory: Callable[..., Path]) -> Path:
    data = dataset_factory(per_class={"train": 8, "val": 2})
    for file in sorted((data / "train" / "squares").iterdir())[:6]:
        file.unlink()
    return data


def test_class_weights_auto(dataset_factory: Callable[..., Path], tmp_path: Path) -> None:
    data = eight_circles_two_squares(dataset_factory)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--class-weights", "auto",
                 "--epochs", "1", *FAST]) == 0  # fmt: skip
    weights = json.loads((run / "summary.json").read_text())["class_weights"]
    assert weights == pytest.approx([10 / (2 * 8), 10 / (2 * 2)])


def val_logits(run: Path, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The saved model's logits on the val images, and their labels."""
    loaded = load_run_model(run)
    transform = build_transforms(loaded.preprocessing)["val"]
    samples = find_splits(data).samples["val"]
    images = torch.stack([transform(load_rgb_image(path)) for path, _ in samples])
    with torch.no_grad():
        return loaded.model.eval()(images), torch.tensor([label for _, label in samples])


def test_class_weights_reach_the_fine_tuning_loss(
    dataset_factory: Callable[..., Path], tmp_path: Path
) -> None:
    data = eight_circles_two_squares(dataset_factory)
    records: dict[str, dict[str, float]] = {}
    for choice in ("none", "auto"):
        weighting = ["--class-weights", "auto"] if choice == "auto" else []
        assert main(["train", str(data), "--out", str(tmp_path / choice), "--strategy",
                     "finetune", "--backbone", "resnet18", "--epochs", "1", *weighting,
                     *FAST]) == 0  # fmt: skip
        records[choice] = metrics(tmp_path / choice)[0]
    # Same seed, data and order: only the loss can set the two runs apart from the first batch.
    assert records["auto"]["train_loss"] != records["none"]["train_loss"]

    # The val loss by hand from the saved model (the only epoch's): sum of w[y] * -log p(y) over
    # sum of w[y], on the one val batch of 4 images; w = 10 / (2 * count): 0.625 and 2.5.
    def by_hand(choice: str, weights: list[float]) -> float:
        logits, labels = val_logits(tmp_path / choice, data)
        losses = -torch.log_softmax(logits, dim=1)[torch.arange(len(labels)), labels]
        per_image = torch.tensor(weights)[labels]
        return float((per_image * losses).sum() / per_image.sum())

    weighted, unweighted = by_hand("auto", [0.625, 2.5]), by_hand("auto", [1.0, 1.0])
    assert records["auto"]["val_loss"] == pytest.approx(weighted, rel=1e-4)
    assert records["auto"]["val_loss"] != pytest.approx(unweighted, rel=1e-2)
    assert records["none"]["val_loss"] == pytest.approx(by_hand("none", [1.0, 1.0]), rel=1e-4)


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
