"""The classic recipe's loop and `tlvision train` side by side on the reference set.

    python benchmarks/classic_recipe.py [--data ../shared/data/hymenoptera_data] [--epochs 25]

Prints, for both strategies, wall time and best val accuracy of each, and the ratio of times.
Everything runs in this one process, one after another, on the same machine and threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from tlvision.config import TrainConfig
from tlvision.training.fit import fit

sys.path.insert(0, str(Path(__file__).parent))
from recipe_loop import run_recipe

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "hymenoptera_data"


def run_tlvision(data: Path, out: Path, **options: object) -> dict[str, float]:
    started = time.perf_counter()
    summary = fit(TrainConfig(data_dir=data, out_dir=out, **options), log=lambda _: None)  # type: ignore[arg-type]
    return {"seconds": time.perf_counter() - started, "best_val_acc": summary["best_val_acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--finetune-short-epochs", type=int, default=3)
    parser.add_argument(
        "--strategies", nargs="+", default=["feature-extract", "finetune"],
        choices=["feature-extract", "finetune"],
    )  # fmt: skip
    arguments = parser.parse_args()
    data = os.path.relpath(arguments.data, REPOSITORY)  # as the README writes it, not absolute
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data {data}")
    rows: list[tuple[str, dict[str, float]]] = []

    def report(label: str, result: dict[str, float]) -> None:
        rows.append((label, result))
        print(
            f"{label:<52} {result['seconds']:>8.1f}s  best val acc {result['best_val_acc']:.4f}",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as scratch:
        for strategy in arguments.strategies:
            fixed = strategy == "feature-extract"
            recipe = run_recipe(arguments.data, fixed_features=fixed, epochs=arguments.epochs)
            report(f"recipe loop, {strategy}, {arguments.epochs} epochs, batch 4", recipe)
            ours = run_tlvision(
                arguments.data, Path(scratch) / strategy, strategy=strategy, epochs=arguments.epochs
            )
            report(f"tlvision train --strategy {strategy} (defaults)", ours)
            print(
                f"  -> tlvision is {recipe['seconds'] / ours['seconds']:.1f}x faster, "
                f"{ours['best_val_acc'] - recipe['best_val_acc']:+.4f} val accuracy"
            )
        short = arguments.finetune_short_epochs
        if "finetune" not in arguments.strategies:
            return
        report(
            f"tlvision train --strategy finetune --epochs {short}",
            run_tlvision(
                arguments.data, Path(scratch) / "short", strategy="finetune", epochs=short
            ),
        )


if __name__ == "__main__":
    main()
