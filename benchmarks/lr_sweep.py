"""lr-find against a learning-rate sweep, fine-tuning on the reference set (issue 11).

The range test's suggestion (100 fine-tuning steps on augmented train batches, a throwaway
model), then one `finetune` run per rate in the sweep, a few epochs each, every other option at
its default. The best rate is the one with the best final-epoch val accuracy (ties: the lower
rate); the acceptance asks for the suggestion within a factor of 3 of it.

    python benchmarks/lr_sweep.py --epochs 3
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from tlvision.config import TrainConfig
from tlvision.training.fit import fit
from tlvision.training.lr_find import find_learning_rate

REPOSITORY = Path(__file__).resolve().parents[1]
REFERENCE = REPOSITORY.parent / "shared" / "data" / "hymenoptera_data"
SWEEP = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REFERENCE)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="auto")
    arguments = parser.parse_args()
    quiet = lambda _message: None  # noqa: E731
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data {arguments.data}")
    with tempfile.TemporaryDirectory() as scratch:
        base = TrainConfig(
            data_dir=arguments.data, out_dir=Path(scratch) / "lr-find", strategy="finetune",
            epochs=arguments.epochs, device=arguments.device,
        )  # fmt: skip
        started = time.perf_counter()
        found = find_learning_rate(base, steps=arguments.steps, log=quiet, progress=False)
        print(
            f"lr-find: suggested {found.suggested:.3g} after {len(found.rates)} steps "
            f"({'stopped at divergence' if found.diverged else 'full ramp'}), "
            f"{time.perf_counter() - started:.0f}s",
            flush=True,
        )
        print("| lr | final val acc | best val acc (epoch) | seconds |\n|---|---|---|---|")
        finals = {}
        for rate in SWEEP:
            config = TrainConfig(
                data_dir=arguments.data, out_dir=Path(scratch) / f"lr-{rate:g}",
                strategy="finetune", epochs=arguments.epochs, learning_rate=rate,
                device=arguments.device,
            )  # fmt: skip
            summary = fit(config, log=quiet)
            finals[rate] = summary["final_val_acc"]
            print(
                f"| {rate:g} | {summary['final_val_acc']:.4f} | {summary['best_val_acc']:.4f} "
                f"({summary['best_epoch']}) | {summary['seconds']:.0f} |",
                flush=True,
            )
    best = max(SWEEP, key=lambda rate: (finals[rate], -rate))
    factor = max(found.suggested / best, best / found.suggested)
    print(
        f"best rate in the sweep {best:g} (final val acc {finals[best]:.4f}); suggested "
        f"{found.suggested:.3g}: a factor {factor:.2f} apart, "
        f"{'within' if factor <= 3 else 'NOT within'} 3 "
        f"({math.log10(factor):.2f} decades)"
    )


if __name__ == "__main__":
    main()
