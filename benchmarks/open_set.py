"""Rejecting unknown inputs: each set's run against foreign images from the other sets.

For every dataset given, trains a feature-extract run (tlvision's own `fit`, which calibrates
the rejection threshold on val and writes RUN/rejection.json), then scores its val images and
--foreign val images from each other set. Per (set, foreign set) pair and for each score:

- AUROC of telling foreign from val images (1.0: every foreign image scores above every val one),
- at the threshold calibrated on val (reject at most 5% of val): the share of val rejected and
  the share of foreign images rejected.

Scores: energy (tlvision's, from the logits), maximum softmax probability (the baseline, from
the same logits) and, for comparison, the cosine distance to the nearest train code (k-NN in
code space; it needs the codes, which the exported logits-only file does not give).

    python benchmarks/open_set.py ../shared/data/hymenoptera_data /work/datasets/fashion \
        /work/datasets/far /work/datasets/glyphs --foreign 150

The codes are read through the codes cache (tlvision.labelling.pool), so a second run is fast.
"""

from __future__ import annotations

# isort: off
import tlvision  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLI does)
# isort: on

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from tlvision.config import TrainConfig
from tlvision.inference.ood import ood_scores
from tlvision.inference.rejection import calibrate
from tlvision.labelling.pool import PoolCodes, pool_codes
from tlvision.labelling.selection import nearest_distance, normalised
from tlvision.runs.reader import load_run_model, run_splits
from tlvision.training.fit import fit

SCORES = ("energy", "max-softmax", "knn-codes")


def foreign_paths(data: Path, count: int, seed: int) -> list[Path]:
    files = sorted((data / "val").rglob("*.*")) or sorted((data / "train").rglob("*.*"))
    rng = np.random.default_rng(seed)
    return [files[i] for i in sorted(rng.choice(len(files), min(count, len(files)), False))]


def scores_of(kind: str, found: PoolCodes, train_codes: np.ndarray) -> np.ndarray:
    if kind == "knn-codes":
        return nearest_distance(normalised(found.codes), normalised(train_codes))
    return ood_scores(found.logits, kind)


def measure_set(data: Path, others: list[Path], args: argparse.Namespace, root: Path) -> list:
    out = root / data.name
    config = TrainConfig(
        data_dir=data, out_dir=out, strategy="feature-extract", device="cpu", overwrite=True
    )
    started = time.perf_counter()
    fit(config, log=lambda _message: None)
    seconds = time.perf_counter() - started
    loaded = load_run_model(out)
    splits = run_splits(loaded.metadata)
    device = torch.device("cpu")
    train = pool_codes(loaded, [p for p, _ in splits.samples["train"]], device=device)
    val = pool_codes(loaded, [p for p, _ in splits.samples["val"]], device=device)
    labels = np.asarray([label for _, label in splits.samples["val"]])
    accuracy = float(np.mean(val.probabilities.argmax(1) == labels))
    print(f"{data.name}: trained in {seconds:.0f}s, val acc {accuracy:.3f}", flush=True)
    rows = []
    for other in others:
        foreign = pool_codes(loaded, foreign_paths(other, args.foreign, args.seed), device=device)
        for kind in SCORES:
            val_scores = scores_of(kind, val, train.codes)
            foreign_scores = scores_of(kind, foreign, train.codes)
            if kind == "knn-codes":
                threshold = float(np.quantile(val_scores, 0.95, method="higher"))
            else:
                threshold = calibrate(val.logits, score=kind)["threshold"]
            labels = np.r_[np.zeros(len(val_scores)), np.ones(len(foreign_scores))]
            auroc = roc_auc_score(labels, np.r_[val_scores, foreign_scores])
            rows.append(
                (data.name, other.name, kind, auroc, float(np.mean(val_scores > threshold)),
                 float(np.mean(foreign_scores > threshold)))
            )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", type=Path, nargs="+", help="at least three DATA folders")
    parser.add_argument("--foreign", type=int, default=150, help="images from each other set")
    parser.add_argument("--others", type=int, default=2, help="foreign sets per set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.datasets) < 3:
        parser.error("give at least three datasets")
    rows = []
    with tempfile.TemporaryDirectory(prefix="open-set-") as root:
        for index, data in enumerate(args.datasets):
            others = [
                args.datasets[(index + k) % len(args.datasets)] for k in range(1, 1 + args.others)
            ]
            rows += measure_set(data, others, args, Path(root))
    print("\n| set | foreign | score | AUROC | val rejected | foreign rejected |")
    print("|---|---|---|---|---|---|")
    for data, other, kind, auroc, val_rejected, foreign_rejected in rows:
        shares = f"{val_rejected:.1%} | {foreign_rejected:.1%}"
        print(f"| {data} | {other} | {kind} | {auroc:.3f} | {shares} |")
    print("\n| score | mean AUROC | mean val rejected | mean foreign rejected |")
    print("|---|---|---|---|")
    for kind in SCORES:
        mine = [row for row in rows if row[2] == kind]
        means = [np.mean([row[i] for row in mine]) for i in (3, 4, 5)]
        print(f"| {kind} | {means[0]:.3f} | {means[1]:.1%} | {means[2]:.1%} |")


if __name__ == "__main__":
    main()
