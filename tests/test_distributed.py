"""torchrun with 2 CPU processes (gloo) on a small real image set: shares, reductions, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tlvision.cli import main
from tlvision.compute.devices import resolve_device
from tlvision.compute.distributed import ShardSampler, shard
from tlvision.data.layouts import find_splits
from tlvision.inference.evaluation import evaluate_run
from tlvision.runs.layout import TRAINING_CHECKPOINT
from tlvision.training.checkpoint import load_training_checkpoint

RECORDER = Path(__file__).with_name("record_run.py")
# No report: it decodes the val images again after training, which would blur the record of
# what each rank read during its epochs.
FAST = [
    "--weights",
    "none",
    "--input-size",
    "32",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--no-report",
]


def torchrun(script_and_args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        *script_and_args,
    ]  # fmt: skip


def environment(record_dir: Path) -> dict[str, str]:
    source = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TLVISION_RECORD_DIR": str(record_dir)}


def run_recorded(arguments: list[str], record_dir: Path) -> dict[int, list[tuple[str, str]]]:
    """Train under torchrun with 2 processes; each rank's decoded images as (kind, path)."""
    record_dir.mkdir()
    done = subprocess.run(
        torchrun([str(RECORDER), *arguments]), env=environment(record_dir),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = {}
    for rank in (0, 1):
        lines = (record_dir / f"rank{rank}.txt").read_text().splitlines()
        records[rank] = [tuple(line.split(" ", 1)) for line in lines]
    return records  # type: ignore[return-value]


def epoch_blocks(records: list[tuple[str, str]], data: Path) -> list[dict[str, list[str]]]:
    """A rank's decoded images cut into epochs: a train block, then a val block, per epoch."""
    epochs: list[dict[str, list[str]]] = []
    for _kind, path in records:
        phase = Path(path).relative_to(data).parts[0]
        if phase == "train" and (not epochs or epochs[-1]["val"]):
            epochs.append({"train": [], "val": []})
        epochs[-1][phase].append(path)
    return epochs


@pytest.fixture
def odd_dataset(dataset_factory) -> Path:  # type: ignore[no-untyped-def]
    """24 train images (even shares) and 15 val images (not divisible by 2: no padding)."""
    return dataset_factory(
        classes=("circles", "squares", "stripes"), per_class={"train": 8, "val": 5}
    )


def test_two_processes_see_each_image_once_and_report_the_whole_val_set(
    odd_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    records = run_recorded(
        ["train", str(odd_dataset), "--out", str(out), "--strategy", "finetune",
         "--epochs", "2", *FAST],
        tmp_path / "records",
    )  # fmt: skip
    splits = find_splits(odd_dataset)
    every = {
        phase: Counter(str(path) for path, _ in pairs) for phase, pairs in splits.samples.items()
    }
    per_rank = [epoch_blocks(records[rank], odd_dataset) for rank in (0, 1)]
    # after the 2 epochs rank 0 alone reads each train image once more: the saved model's
    # codes of them, which the rejection of unknown inputs measures distances to
    assert [len(epochs) for epochs in per_rank] == [3, 2]
    assert Counter(per_rank[0].pop()["train"]) == every["train"]
    for epoch in range(2):
        for phase in ("train", "val"):
            seen = Counter(per_rank[0][epoch][phase]) + Counter(per_rank[1][epoch][phase])
            assert seen == every[phase], f"epoch {epoch + 1} {phase}"
        # each rank trained on its own half, not the whole set
        assert len(per_rank[0][epoch]["train"]) == len(per_rank[1][epoch]["train"]) == 12
    assert per_rank[0][0]["train"] != per_rank[0][1]["train"], "reshuffled each epoch"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["val_images"] == 15
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = metrics[summary["best_epoch"] - 1]
    report = evaluate_run(out, odd_dataset / "val", device=resolve_device("cpu"))
    assert report.total == 15
    assert report.accuracy == best["val_acc"] == summary["best_val_acc"]


# Put first on a process's PYTHONPATH: rank 0 of a run holds, alive, once it has saved the
# checkpoint of epoch $TLVISION_TEST_HOLD_AFTER_EPOCH, so the run cannot get past that epoch
# before the test stops it. The code under test runs unchanged up to there.
HOLD_AFTER_CHECKPOINT = """
import os

if os.environ.get("RANK") == "0" and "TLVISION_TEST_HOLD_AFTER_EPOCH" in os.environ:
    import time

    from tlvision.training import fit

    hold_after = int(os.environ["TLVISION_TEST_HOLD_AFTER_EPOCH"])
    save_checkpoint = fit.save_checkpoint

    def save_then_hold(setup, epoch, *arguments, **keywords):
        save_checkpoint(setup, epoch, *arguments, **keywords)
        while epoch == hold_after:
            time.sleep(60)

    fit.save_checkpoint = save_then_hold
"""


def test_two_process_run_resumed_with_one_process_continues_its_epochs(
    odd_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, epochs, stopped = tmp_path / "run", 8, 3
    command = [
        sys.executable, "-m", "tlvision.cli", "train", str(odd_dataset), "--out", str(run),
        "--strategy", "finetune", "--epochs", str(epochs), "--schedule", "cosine", "--nproc", "2",
        *FAST,
    ]  # fmt: skip
    hook = tmp_path / "hold"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_AFTER_CHECKPOINT)
    env = environment(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    env["TLVISION_TEST_HOLD_AFTER_EPOCH"] = str(stopped)
    output = tmp_path / "output.txt"
    with output.open("w") as sink:
        process = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_for_checkpoint(run, process, stopped, output)
    finally:
        # torchrun passes SIGTERM on to both ranks and waits for them to end
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    checkpoint = load_training_checkpoint(run)
    assert checkpoint.epoch == stopped and checkpoint.info["processes"] == 2
    assert not (run / "summary.json").exists()
    # two processes run the whole network each epoch: the run records --views 0 ...
    assert checkpoint.info["config"]["views"] == 0
    assert "views = 0" in (run / "config.toml").read_text()

    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "frozen prefix" not in capsys.readouterr().out  # ... and one process goes on so
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in metrics] == list(range(1, epochs + 1))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == stopped and summary["processes"] == 1
    # The cosine schedule carried on where it was, though an epoch now has twice the steps:
    # epoch e starts at the rate a cosine over the whole run gives after e - 1 of its epochs.
    for record in metrics:
        share = (record["epoch"] - 1) / epochs
        expected = metrics[0]["lr"] * (1 + math.cos(math.pi * share)) / 2
        assert record["lr"] == pytest.approx(expected, rel=1e-4), record["epoch"]


def wait_for_checkpoint(
    run: Path, process: subprocess.Popen[bytes], epoch: int, output: Path
) -> None:
    """Until the run's checkpoint is that of `epoch` (it goes no further: see the hold)."""
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ended = process.poll() is not None
        assert not ended, f"the run ended before epoch {epoch}:\n{output.read_text()[-3000:]}"
        if (run / TRAINING_CHECKPOINT).exists() and load_training_checkpoint(run).epoch == epoch:
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of epoch {epoch} in 300 s:\n{output.read_text()[-3000:]}")


def test_code_extraction_under_two_ranks_computes_each_image_once(
    odd_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    records = run_recorded(
        ["train", str(odd_dataset), "--out", str(out), "--strategy", "feature-extract",
         "--epochs", "2", "--cache-dir", str(tmp_path / "cache"), *FAST],
        tmp_path / "records",
    )  # fmt: skip
    computed = Counter(path for rank in (0, 1) for kind, path in records[rank] if kind == "codes")
    splits = find_splits(odd_dataset)
    every = Counter(str(path) for phase in ("train", "val") for path, _ in splits.samples[phase])
    assert computed == every  # each image once, over both ranks
    assert {kind for kind, _ in records[1]} == {"codes"} and records[1], "rank 1 did its share"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["val_images"] == 15


def test_shards_cover_everything_once() -> None:
    items = list(range(15))
    shares = [shard_of(rank) for rank in range(4)]
    assert sorted(x for share in shares for x in share) == items
    assert [list(ShardSampler(15, rank, 4)) for rank in range(4)] == shares


def shard_of(rank: int) -> list[int]:
    from tlvision.compute.distributed import Distributed

    return shard(Distributed(rank=rank, world_size=4, active=True), list(range(15)))
