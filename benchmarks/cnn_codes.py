"""The classic fixed-feature-extractor loop against `tlvision train --strategy feature-extract`.

    python benchmarks/cnn_codes.py [--data ../shared/data/hymenoptera_data]

One process, one after another on the same machine: the recipe's loop (25 epochs, batch 4,
the frozen body run on every image every epoch), then tlvision with a cold CNN-codes cache (a
fresh directory) and again with the warm cache. Prints seconds, ratios and best val accuracy,
then the probe table of every stage for the same data.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from tlvision.advisor.probe import run_probe
from tlvision.config import TrainConfig
from tlvision.training.fit import fit

sys.path.insert(0, str(Path(__file__).parent))
from recipe_loop import run_recipe

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "hymenoptera_data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=25)
    arguments = parser.parse_args()
    data = os.path.relpath(arguments.data, REPOSITORY)  # as the README writes it, not absolute
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data {data}")

    recipe = run_recipe(arguments.data, fixed_features=True, epochs=arguments.epochs)
    print(
        f"recipe loop, fixed feature extractor, {arguments.epochs} epochs: "
        f"{recipe['seconds']:.1f}s, best val acc {recipe['best_val_acc']:.4f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        for label in ("cold", "warm"):
            started = time.perf_counter()
            config = TrainConfig(
                data_dir=arguments.data,
                out_dir=Path(scratch) / label,
                epochs=arguments.epochs,
                cache_dir=cache,
            )
            summary = fit(config, log=lambda _: None)
            seconds = time.perf_counter() - started
            print(
                f"tlvision feature-extract, {label} cache: {seconds:.1f}s "
                f"({recipe['seconds'] / seconds:.1f}x faster), best val acc "
                f"{summary['best_val_acc']:.4f} "
                f"({summary['best_val_acc'] - recipe['best_val_acc']:+.4f})",
                flush=True,
            )
        report = run_probe(arguments.data, cache_dir=cache, log=lambda _: None)
        print(f"\nprobe, val accuracy by stage and head ({report['seconds']:.1f}s, warm cache):")
        print(report["table"])


if __name__ == "__main__":
    main()
