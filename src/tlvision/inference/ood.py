"""The out-of-distribution scores and the rule that calls an input unknown; how the threshold
is calibrated, and why the code-space score, is tlvision.inference.rejection.

"code-distance" (new runs) comes out of the network beside the logits (tlvision.models.ood);
"energy" and "max-softmax" are computed here from the logits (runs calibrated before, or with
`tlvision calibrate --score`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import logsumexp, softmax

from tlvision.errors import UserError
from tlvision.runs.layout import CODE_DISTANCE, OOD_SCORES
from tlvision.runs.reader import read_rejection_file

SCORES = OOD_SCORES  # `tlvision calibrate --score`'s choices
DEFAULT_SCORE = CODE_DISTANCE  # what training calibrates
DEFAULT_LOGIT_SCORE = "energy"  # a threshold given for a run without rejection.json
HISTOGRAM_BINS = 20
OFF, AUTO = "off", "auto"


def ood_scores(logits: np.ndarray, score: str = DEFAULT_SCORE) -> np.ndarray:
    """(N, classes) logits -> (N,) float64 scores of a logits score, higher meaning more unlike
    the training classes."""
    values = np.asarray(logits, dtype=np.float64)
    if score == "energy":
        return np.asarray(-logsumexp(values, axis=1))
    if score == "max-softmax":
        return np.asarray(1.0 - softmax(values, axis=1).max(axis=1))
    if score == CODE_DISTANCE:
        raise ValueError("the code-distance score comes from the network, not from the logits")
    raise UserError(f"unknown out-of-distribution score {score!r}; choose one of {SCORES}")


def check_score(score: str) -> str:
    if score not in SCORES:
        raise UserError(f"--score {score}: choose one of {', '.join(SCORES)}")
    return score


@dataclass(frozen=True)
class Rejection:
    """A score and the threshold above which an input is called unknown."""

    score: str
    threshold: float

    def scores(self, logits: np.ndarray, network_scores: np.ndarray | None = None) -> np.ndarray:
        """(N,) scores: the network's own (code-distance) or computed from the logits."""
        if self.score != CODE_DISTANCE:
            return ood_scores(logits, self.score)
        if network_scores is None:
            raise UserError(
                "the code-distance score comes out of the network, and this runtime's file gives "
                "the logits only: use --runtime onnx, torchscript or torch to reject"
            )
        return np.asarray(network_scores, dtype=np.float64)

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
        return Rejection(DEFAULT_LOGIT_SCORE, float(reject))
    threshold = float(document["threshold"]) if reject == AUTO else float(reject)
    return Rejection(str(document["score"]), threshold)
