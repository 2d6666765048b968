"""Rejecting unknown inputs: each set's run against foreign images from the other sets.

For every dataset given, trains a feature-extract run (tlvision's own `fit`, which stores the
train codes, calibrates the rejection threshold on val and writes RUN/rejection.json), then
scores its val images and --foreign val images from each other set. Per (set, foreign set) pair
and for each score:

- AUROC of telling foreign from val images (1.0: every foreign image scores above every val one),
- at the threshold calibrated on val (reject at most 5% of val): the share of val rejected and
  the share of foreign images rejected.

Scores: "code-distance (run)", what `--reject auto` uses: the run's own classifier (predict's
path, tlvision.inference.stream.classify) gives it beside the logits, and the threshold is the
one training wrote; energy and maximum softmax probability (the baseline) from the same logits,
calibrated here on val; and "knn-k5", the mean cosine distance to the 5 nearest stored train
codes (from the codes cache's codes), to choose k.

    python benchmarks/open_set.py ../shared/data/hymenoptera_data ../datasets/fashion \
        ../datasets/far --foreign 150

The k-NN codes are read through the codes cache (tlvision.labelling.pool), so a second run is
faster; the run's own score is computed by its classifier, as predict does, every time.
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
from tlvision.inference.rejection import calibrate, val_outputs_of
from tlvision.inference.runtime import TorchClassifier
from tlvision.labelling.pool import pool_codes
from tlvision.labelling.selection import normalised
from tlvision.runs.reader import LoadedModel, load_run_model, read_rejection_file, run_splits
from tlvision.training.fit import fit

SCORES = ("code-distance (run)", "knn-k5", "energy", "max-softmax")


def foreign_paths(data: Path, count: int, seed: int) -> list[Path]:
    files = sorted((data / "val").rglob("*.*")) or sorted((data / "train").rglob("*.*"))
    rng = np.random.default_rng(seed)
    return [files[i] for i in sorted(rng.choice(len(files), min(count, len(files)), False))]


def knn_distance(codes: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    similarity = normalised(codes) @ normalised(train).T
    return np.asarray(1.0 - np.sort(similarity, axis=1)[:, -k:].mean(axis=1))


def all_scores(loaded: LoadedModel, paths: list[Path], train: np.ndarray) -> dict[str, np.ndarray]:
    """Every score of `paths`: the run's through its classifier, the others beside it."""
    logits, network = val_outputs_of(TorchClassifier(loaded), paths)
    codes = pool_codes(loaded, paths, device=torch.device("cpu")).codes
    return {
        "code-distance (run)": network,
        "knn-k5": knn_distance(codes, train, 5),
        "energy": ood_scores(logits, "energy"),
        "max-softmax": ood_scores(logits, "max-softmax"),
        "logits": logits,
    }


def measure_set(data: Path, others: list[Path], args: argparse.Namespace, root: Path) -> list:
    out = root / data.name
    config = TrainConfig(
        data_dir=data, out_dir=out, strategy="feature-extract", device="cpu", overwrite=True
    )
    started = time.perf_counter()
    fit(config, log=lambda _message: None)
    seconds = time.perf_counter() - started
    loaded = load_run_model(out)
    document = read_rejection_file(out) or {}
    splits = run_splits(loaded.metadata)
    device = torch.device("cpu")
    train = pool_codes(loaded, [p for p, _ in splits.samples["train"]], device=device).codes
    val = all_scores(loaded, [p for p, _ in splits.samples["val"]], train)
    labels = np.asarray([label for _, label in splits.samples["val"]])
    accuracy = float(np.mean(val["logits"].argmax(1) == labels))
    print(
        f"{data.name}: trained in {seconds:.0f}s, val acc {accuracy:.3f}, "
        f"{document.get('train_codes')} train codes stored, threshold "
        f"{document.get('threshold', float('nan')):.4f}",
        flush=True,
    )
    thresholds = {
        "code-distance (run)": float(document["threshold"]),  # what training calibrated
        "knn-k5": float(np.quantile(val["knn-k5"], 0.95, method="higher")),
        "energy": calibrate(val["logits"], score="energy")["threshold"],
        "max-softmax": calibrate(val["logits"], score="max-softmax")["threshold"],
    }
    rows = []
    for other in others:
        foreign = all_scores(loaded, foreign_paths(other, args.foreign, args.seed), train)
        for kind in SCORES:
            val_scores, foreign_scores = val[kind], foreign[kind]
            threshold = thresholds[kind]
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
