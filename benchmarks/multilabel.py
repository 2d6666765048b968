"""Multi-label routes side by side: the val mAP of every tlvision route on a CSV dataset, and a
few-line scikit-learn one-vs-rest logistic regression on the same CNN codes as the baseline.

    nice .venv/bin/python benchmarks/multilabel.py \\
        ../datasets/collages ../datasets/emoji-tags --finetune-epochs 2

It measures quality, not time (the shared lock is for timings), so it prints no seconds.

Each route trains from its defaults (mobilenet_v2, ImageNet weights) with one shared codes cache,
so the baseline reads exactly the codes the frozen routes trained on. mAP: the mean over classes
with a positive val image of scikit-learn's average precision; the routes' is the final epoch's
(`final_val_map` of summary.json).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tlvision.config import TrainConfig
from tlvision.training.fit import fit

ROUTES: dict[str, dict[str, Any]] = {
    "linear-probe --head logreg": {"strategy": "linear-probe", "head": "logreg"},
    "linear-probe --head svm": {"strategy": "linear-probe", "head": "svm"},
    "feature-extract (linear, BCE)": {"strategy": "feature-extract"},
    "finetune (BCE)": {"strategy": "finetune"},
}


def baseline_map(run_dir: Path, data: Path, cache_dir: Path) -> float:
    """One-vs-rest logistic regression (scikit-learn defaults, standardised codes) on the run's
    top codes, read back from the shared cache."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tlvision.codes.cache import FeatureCache
    from tlvision.codes.split_codes import extract_split_codes
    from tlvision.data.layouts import find_splits
    from tlvision.runs.reader import load_run_model

    loaded, splits = load_run_model(run_dir), find_splits(data)
    codes = extract_split_codes(
        loaded.model, loaded.backbone, splits, weights=loaded.metadata["weights"],
        preprocessing=loaded.preprocessing, cache=FeatureCache(cache_dir, log=lambda _: None),
        log=lambda _: None,
    )[None]  # fmt: skip
    train_y = splits.target_matrix(codes.train_labels.tolist())
    val_y = splits.target_matrix(codes.val_labels.tolist())
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=2000)))
    scores = model.fit(codes.train_views[0], train_y).predict_proba(codes.val)
    measured = [c for c in range(val_y.shape[1]) if 0 < val_y[:, c].sum() < len(val_y)]
    return float(np.mean([average_precision_score(val_y[:, c], scores[:, c]) for c in measured]))


def run_dataset(data: Path, work: Path, finetune_epochs: int) -> list[tuple[str, float]]:
    results = []
    for label, options in ROUTES.items():
        if options["strategy"] == "finetune":
            if finetune_epochs == 0:
                continue
            options = {**options, "epochs": finetune_epochs}
        out = work / data.name / label.split()[0] / options.get("head", "default")
        config = TrainConfig(
            data_dir=data, out_dir=out, cache_dir=work / "cache", device="cpu", **options
        )
        summary = fit(config, log=lambda _: None)
        results.append((label, summary["final_val_map"]))
        print(f"  {label}: mAP {summary['final_val_map']:.4f}", flush=True)
    probe_run = work / data.name / "linear-probe" / "logreg"
    baseline = baseline_map(probe_run, data, work / "cache")
    results.append(("baseline: sklearn one-vs-rest logreg", baseline))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", type=Path, nargs="+", help="CSV datasets (train.csv, val.csv)")
    parser.add_argument("--finetune-epochs", type=int, default=3, help="0: no finetune row")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tlvision-multilabel-") as temporary:
        for data in args.datasets:
            print(f"{data}:", flush=True)
            rows = run_dataset(data.resolve(), Path(temporary), args.finetune_epochs)
            best = max(value for label, value in rows if not label.startswith("baseline"))
            print(f"\n| {data.name}: route | val mAP |\n|---|---|")
            for label, value in rows:
                print(f"| {label} | {value:.4f} |")
            print(f"best route {best:.4f} vs baseline {rows[-1][1]:.4f}\n", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
