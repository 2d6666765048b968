"""The out-of-distribution score of logits and the rule that calls an input unknown; how the
threshold is calibrated, and why energy, is tlvision.inference.rejection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import logsumexp, softmax

from tlvision.errors import UserError
from tlvision.runs.reader import read_rejection_file

SCORES = ("energy", "max-softmax")
DEFAULT_SCORE = "energy"
DEFAULT_VAL_REJECTED = 0.05  # the share of val images the calibrated threshold may reject
HISTOGRAM_BINS = 20
OFF, AUTO = "off", "auto"


def ood_scores(logits: np.ndarray, score: str = DEFAULT_SCORE) -> np.ndarray:
    """(N, classes) logits -> (N,) float64 scores, higher meaning more unlike the training
    classes."""
    values = np.asarray(logits, dtype=np.float64)
    if score == "energy":
        return np.asarray(-logsumexp(values, axis=1))
    if score == "max-softmax":
        return np.asarray(1.0 - softmax(values, axis=1).max(axis=1))
    raise UserError(f"unknown out-of-distribution score {score!r}; choose one of {SCORES}")


@dataclass(frozen=True)
class Rejection:
    """A score and the threshold above which an input is called unknown."""

    score: str
    threshold: float

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return ood_scores(logits, self.score)

    def unknown(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores > self.threshold)


def no_rejection_data(run_dir: Path | None) -> UserError:
    where = "this model" if run_dir is None else str(run_dir)
    fix = "`tlvision calibrate RUN_DIR`" if run_dir is None else f"`tlvision calibrate {run_dir}`"
    return UserError(
        f"{where}: no rejection data (rejection.json; the run was trained before tlvision "
        f"rejected unknown inputs): run {fix} to calibrate on its val images, or pass "
        "--reject off"
    )


def rejection_of_run(run_dir: Path | None, reject: str | float | None) -> Rejection | None:
    """What `--reject` asks for: None for off, the run's calibrated threshold for auto, or the
    run's score with the threshold given."""
    if reject is None or reject == OFF:
        return None
    document = None if run_dir is None else read_rejection_file(run_dir)
    if isinstance(reject, str) and reject != AUTO:
        try:
            reject = float(reject)
        except ValueError:
            raise UserError(
                f"--reject {reject}: choose auto (the run's calibrated threshold), off, or a "
                "score threshold (a number: inputs scoring above it are unknown)"
            ) from None
    if document is None:
        if reject == AUTO:
            raise no_rejection_data(run_dir)
        return Rejection(DEFAULT_SCORE, float(reject))
    threshold = float(document["threshold"]) if reject == AUTO else float(reject)
    return Rejection(str(document["score"]), threshold)
