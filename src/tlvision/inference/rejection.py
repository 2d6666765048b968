"""Rejecting inputs unlike the training classes: an out-of-distribution score and its threshold.

The score is computed from the logits every runtime already gives (torch, ONNX Runtime, an
export's client), so rejecting costs no second pass and no second network output:

- "energy" (the default): minus the log-sum-exp of the logits (Liu et al., 2020). An input the
  head has no evidence for has small logits for every class, so a high energy;
- "max-softmax": one minus the largest class probability (Hendrycks and Gimpel, 2017), the
  baseline.

Both are "higher: more unknown". benchmarks/open_set.py measures them side by side with the
cosine distance to the nearest train code (README, "Unknown inputs"): over 8 pairs of sets,
energy and max-softmax both reach a mean AUROC of 0.71, energy rejecting more foreign images
at the calibrated threshold (21.5% against 14.1%), so energy is the default of the two. The
code-space distance reached 1.000 and 99.8%, but needs each image's codes, which the classifier
interface and the exported files (logits only) do not give yet: the next step.
The threshold is calibrated on the run's val images at training time: the score that rejects
at most DEFAULT_VAL_REJECTED of them. It is written to RUN/rejection.json with a histogram of
the val scores (the report draws it); `tlvision calibrate RUN` writes it for older runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlvision.errors import UserError
from tlvision.inference.ood import DEFAULT_SCORE, DEFAULT_VAL_REJECTED, HISTOGRAM_BINS, ood_scores
from tlvision.jsonio import write_json_atomic
from tlvision.runs.layout import REJECTION_FILE


def calibrate(
    val_logits: np.ndarray,
    *,
    score: str = DEFAULT_SCORE,
    val_rejected: float = DEFAULT_VAL_REJECTED,
) -> dict[str, Any]:
    """rejection.json's content: the threshold that rejects at most `val_rejected` of the val
    images, what it rejects there, and a histogram of their scores."""
    if len(val_logits) == 0:
        raise UserError("no readable val images to calibrate the rejection threshold on")
    values = ood_scores(val_logits, score)
    threshold = float(np.quantile(values, 1.0 - val_rejected, method="higher"))
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    return {
        "score": score,
        "threshold": threshold,
        "target_val_rejected": val_rejected,
        "val_rejected": float(np.mean(values > threshold)),
        "val_images": len(values),
        "val_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "higher_means": "more unlike the training classes",
    }


def write_rejection(run_dir: Path, document: dict[str, Any]) -> None:
    write_json_atomic(run_dir / REJECTION_FILE, document)


def val_logits_of(classifier: Any, paths: Sequence[Path]) -> np.ndarray:
    """The classifier's logits on the readable files of `paths` (unreadable ones left out)."""
    from tlvision.inference.stream import classify

    rows = [item.logits for item in classify(classifier, paths) if item.logits is not None]
    classes = len(classifier.class_names)
    return np.stack(rows) if rows else np.zeros((0, classes), np.float32)


def calibrate_run(
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    score: str = DEFAULT_SCORE,
    val_rejected: float = DEFAULT_VAL_REJECTED,
) -> dict[str, Any]:
    """Calibrate a finished run on its val split (of `data_dir`, default its own data) and write
    RUN/rejection.json: what training does at its end, for runs made before it did."""
    from tlvision.inference.runtime import TorchClassifier
    from tlvision.runs.reader import load_run_model, run_splits

    if not 0.0 <= val_rejected < 1.0:
        raise UserError(f"--val-rejected {val_rejected}: must be at least 0 and below 1")
    loaded = load_run_model(run_dir)
    splits = run_splits(loaded.metadata, data_dir)
    paths = [path for path, _label in splits.samples["val"]]
    document = calibrate(
        val_logits_of(TorchClassifier(loaded), paths), score=score, val_rejected=val_rejected
    )
    document["val_logits_from"] = "images"
    write_rejection(run_dir, document)
    return document
