"""Fine-tuning, the classic loop against tlvision's default `finetune`, epoch by epoch.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/finetune_speed.py \\
        --data ../shared/data/hymenoptera_data --extra ../datasets/large ../datasets/far

(OMP_WAIT_POLICY as tlvision sets it, given here since torch loads before tlvision does.)

For each dataset, in this one process, one after the other on the same threads: the classic
recipe's fine-tuning loop (recipe_loop.py: batch 4, SGD lr 0.001, StepLR every 7 epochs, 25
epochs; on the --extra sets cut short at --extra-loop-epochs, since 25 would take hours on a
2-core machine) and `tlvision.training.fit.fit` with strategy="finetune" and every other option at
its default. Per epoch: seconds, images/s (train + val images over the epoch's seconds) and val
accuracy; then one table row per route. "reaches the loop's best" is the wall time since the
start of the route (set-up included) at the end of the first epoch whose val accuracy is at
least the loop's best; tlvision's final accuracy is its last epoch's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tlvision.config import TrainConfig
from tlvision.data.layouts import find_splits
from tlvision.training.fit import fit

sys.path.insert(0, str(Path(__file__).parent))
from recipe_loop import run_recipe

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "hymenoptera_data"
FULL_LOOP_EPOCHS = 25


def run_loop(data: Path, epochs: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []

    def on_epoch(record: dict[str, Any]) -> None:
        records.append(record)
        print(f"  loop epoch {record['epoch']:>2}: {record['seconds']:6.1f}s  "
              f"val acc {record['val_acc']:.4f}", flush=True)  # fmt: skip

    run_recipe(data, fixed_features=False, epochs=epochs, on_epoch=on_epoch)
    return records


def run_tlvision(data: Path, out: Path) -> list[dict[str, Any]]:
    """Default finetune; each epoch's record with `elapsed`, the seconds since fit was called."""
    started = time.perf_counter()
    ends: list[float] = []

    def log(line: str) -> None:
        if line.startswith("epoch "):
            ends.append(time.perf_counter() - started)
        if line.startswith(("epoch ", "frozen prefix", "head started")):
            print(f"  tlvision {line}", flush=True)

    fit(TrainConfig(data_dir=data, out_dir=out, strategy="finetune"), log=log)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [record | {"elapsed": end} for record, end in zip(records, ends, strict=True)]


def first_reaching(records: list[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    return next((record for record in records if record["val_acc"] >= accuracy), None)


def summarise(
    name: str, records: list[dict[str, Any]], images: int, loop_best: float
) -> dict[str, Any]:
    per_epoch = statistics.median(record["seconds"] for record in records)
    reached = first_reaching(records, loop_best)
    return {
        "route": name,
        "epochs": len(records),
        "setup": records[0]["elapsed"] - records[0]["seconds"],
        "per_epoch": per_epoch,
        "images_per_second": images / per_epoch,
        "reached": None if reached is None else reached["elapsed"],
        "reached_epoch": None if reached is None else reached["epoch"],
        "final": records[-1]["val_acc"],
        "best": max(record["val_acc"] for record in records),
        "total": records[-1]["elapsed"],
    }


def table_rows(label: str, loop: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    rows = []
    for row in (loop, ours):
        reached = (
            "never" if row["reached"] is None
            else f"{row['reached']:.0f} s (epoch {row['reached_epoch']})"
        )  # fmt: skip
        rows.append(
            f"| {label} | {row['route']} | {row['epochs']} | {row['setup']:.0f} | "
            f"{row['per_epoch']:.1f} | {row['images_per_second']:.1f} | {reached} | "
            f"{row['final']:.4f} | {row['best']:.4f} | {row['total']:.0f} |"
        )
    speed = loop["per_epoch"] / ours["per_epoch"]
    sooner = (
        "n/a" if ours["reached"] is None or loop["reached"] is None
        else f"{loop['reached'] / ours['reached']:.1f}x"
    )  # fmt: skip
    rows.append(f"| {label} | ratio | | | {speed:.1f}x faster | | {sooner} sooner | | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--extra", type=Path, nargs="*", default=[])
    parser.add_argument("--extra-loop-epochs", type=int, default=3)
    parser.add_argument("--loop-epochs", type=int, default=FULL_LOOP_EPOCHS)
    arguments = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)  # fmt: skip
    header = [
        "| set | route | epochs | set-up s | s/epoch | img/s | reaches the loop's best "
        "| final val acc | best val acc | total s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows: list[str] = []
    sets = [(arguments.data, arguments.loop_epochs)]
    sets += [(extra, arguments.extra_loop_epochs) for extra in arguments.extra]
    with tempfile.TemporaryDirectory() as scratch:
        for data, loop_epochs in sets:
            label = os.path.relpath(data, REPOSITORY)
            splits = find_splits(data)
            images = len(splits.samples["train"]) + len(splits.samples["val"])
            print(f"{label}: {images} images; classic loop, {loop_epochs} epochs", flush=True)
            loop_records = run_loop(data, loop_epochs)
            loop_best = max(record["val_acc"] for record in loop_records)
            print(f"{label}: tlvision train --strategy finetune (defaults)", flush=True)
            ours = run_tlvision(data, Path(scratch) / label.replace("/", "_"))
            loop_name = (
                "classic loop" if loop_epochs >= FULL_LOOP_EPOCHS
                else f"classic loop, CUT SHORT at {loop_epochs} of {FULL_LOOP_EPOCHS} epochs"
            )  # fmt: skip
            rows += table_rows(
                label,
                summarise(loop_name, loop_records, images, loop_best),
                summarise("tlvision finetune (defaults)", ours, images, loop_best),
            )
            print("\n".join(header + rows), flush=True)


if __name__ == "__main__":
    main()
