"""Rejecting inputs unlike the training classes: an out-of-distribution score and its threshold.

The score of new runs is "code-distance": one minus the largest cosine similarity between an
image's codes (the head's input) and the train images' codes, which the run stores
(RUN/ood_codes.safetensors, float16, at most MAX_TRAIN_CODES of them; tlvision.inference.
train_codes). The network computes it beside the logits in the same pass
(tlvision.models.ood), in torch and in the exported files alike, so every runtime and every
client of an export gets it without a second pass. Two scores from the logits alone remain for
runs calibrated with them (older runs, or `tlvision calibrate --score`):

- "energy": minus the log-sum-exp of the logits (Liu et al., 2020);
- "max-softmax": one minus the largest class probability (Hendrycks and Gimpel, 2017).

All are "higher: more unknown". benchmarks/open_set.py measures them side by side (README,
"Unknown inputs"): over the pairs of sets measured, the logits scores reach a mean AUROC of
about 0.71 and reject about a fifth of the foreign images at the calibrated threshold, the
code-space distance about 1.0 and nearly all of them, hence the default.
The threshold is calibrated on the run's val images at training time: the score that rejects
at most DEFAULT_VAL_REJECTED of them. It is written to RUN/rejection.json with a histogram of
the val scores (the report draws it); `tlvision calibrate RUN` (re)writes it, for older runs
too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlvision.errors import UserError
from tlvision.inference.ood import (
    DEFAULT_LOGIT_SCORE,
    DEFAULT_SCORE,
    HISTOGRAM_BINS,
    check_score,
    ood_scores,
)
from tlvision.inference.train_codes import MAX_TRAIN_CODES, codes_cache, sampled, train_codes
from tlvision.jsonio import write_json_atomic
from tlvision.models.ood import DEFAULT_VAL_REJECTED, CodeDistance, val_threshold
from tlvision.runs.layout import CODE_DISTANCE, OOD_CODES_FILE, REJECTION_FILE
from tlvision.runs.reader import LoadedModel
from tlvision.runs.writer import save_ood_codes

CPU = torch.device("cpu")
DEFAULT_K = 1  # nearest train codes averaged (benchmarks/open_set.py: k = 1 against 5)


def calibrate(
    val_logits: np.ndarray,
    *,
    score: str = DEFAULT_LOGIT_SCORE,
    val_rejected: float = DEFAULT_VAL_REJECTED,
) -> dict[str, Any]:
    """rejection.json's content for a logits score (energy, max-softmax): see
    `calibrate_scores`."""
    if len(val_logits) == 0:
        raise UserError("no readable val images to calibrate the rejection threshold on")
    return calibrate_scores(ood_scores(val_logits, score), score=score, val_rejected=val_rejected)


def calibrate_scores(
    values: np.ndarray, *, score: str, val_rejected: float = DEFAULT_VAL_REJECTED
) -> dict[str, Any]:
    """rejection.json's content: the threshold that rejects at most `val_rejected` of the val
    images' scores `values`, what it rejects there, and a histogram of them."""
    if len(values) == 0:
        raise UserError("no readable val images to calibrate the rejection threshold on")
    values = np.asarray(values, dtype=np.float64)
    threshold = val_threshold(values, val_rejected)
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
    return val_outputs_of(classifier, paths)[0]


def val_outputs_of(classifier: Any, paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's logits and network ood scores (NaN where it gives none) on the readable
    files of `paths`, through the one inference path (tlvision.inference.stream.classify)."""
    from tlvision.inference.stream import classify

    items = [item for item in classify(classifier, paths) if item.logits is not None]
    classes = len(classifier.class_names)
    if not items:
        return np.zeros((0, classes), np.float32), np.zeros(0)
    scores = [np.nan if item.ood_score is None else item.ood_score for item in items]
    return np.stack([item.logits for item in items]), np.asarray(scores)  # type: ignore[misc]


@dataclass(frozen=True)
class Calibration:
    """What a rejection threshold is calibrated with: the run, its images and the choices."""

    loaded: LoadedModel  # the saved model (run_dir None at the end of training)
    out_dir: Path  # where rejection.json and ood_codes.safetensors go
    train_paths: Sequence[Path]
    val_paths: Sequence[Path]
    weights_label: str  # of the pretrained weights: names the cached codes
    frozen_body: bool  # the codes cache holds the head's training codes
    config: dict[str, Any]  # the run's (cache_dir, no_cache, seed)
    device: torch.device = CPU
    score: str = DEFAULT_SCORE
    k: int = DEFAULT_K
    val_rejected: float = DEFAULT_VAL_REJECTED
    max_train_codes: int = MAX_TRAIN_CODES
    # the train_paths' codes at the val view, when the route holds them (the frozen routes)
    train_codes: np.ndarray | None = None
    # the readable val_paths' codes, when the route holds them (the frozen routes)
    val_codes: np.ndarray | None = None


def calibrate_loaded(job: Calibration) -> dict[str, Any]:
    """Write RUN/rejection.json (and, for the code-space score, RUN/ood_codes.safetensors)
    for `job.loaded`, calibrated on the val images through the classifier predict uses."""
    from tlvision.inference.runtime import TorchClassifier

    check_score(job.score)
    if not 0.0 <= job.val_rejected < 1.0:
        raise UserError(f"--val-rejected {job.val_rejected}: must be at least 0 and below 1")
    if job.score != CODE_DISTANCE:
        loaded = dataclasses.replace(job.loaded, ood=None)
        logits, _ = val_outputs_of(TorchClassifier(loaded, job.device), job.val_paths)
        document = calibrate(logits, score=job.score, val_rejected=job.val_rejected)
        (job.out_dir / OOD_CODES_FILE).unlink(missing_ok=True)
        write_rejection(job.out_dir, document)
        return document
    if job.k < 1:
        raise UserError(f"--k {job.k}: must be at least 1")
    chosen = sampled(len(job.train_paths), job.max_train_codes, int(job.config.get("seed", 0)))
    cache = codes_cache(job.config, job.frozen_body)
    if job.train_codes is not None:  # the frozen routes: the codes the head was trained on
        codes = np.asarray(job.train_codes[chosen], dtype=np.float32)
        source = "the head's training codes (frozen body)"
    else:
        paths = [job.train_paths[index] for index in chosen]
        codes = train_codes(
            job.loaded, paths, weights_label=job.weights_label, device=job.device, cache=cache
        )
        source = "the codes cache (frozen body)" if cache else "one pass of the saved model"
    k = min(job.k, len(codes))
    ood = CodeDistance(torch.from_numpy(codes), k=k)
    ood = ood.to(job.device)
    if job.val_codes is not None:  # a second pass of the body over val cost a warm run 5 s
        with torch.inference_mode():
            val_codes = torch.from_numpy(np.array(job.val_codes, dtype=np.float32))  # writable
            scores, val_source = ood(val_codes.to(job.device)).cpu().numpy(), "the head's codes"
    else:
        loaded = dataclasses.replace(job.loaded, ood=ood)
        _, scores = val_outputs_of(TorchClassifier(loaded, job.device), job.val_paths)
        val_source = "images"
    document = calibrate_scores(scores, score=CODE_DISTANCE, val_rejected=job.val_rejected)
    save_ood_codes(job.out_dir, codes)
    document.update(
        k=k, codes_file=OOD_CODES_FILE, train_codes=len(codes),
        train_images=len(job.train_paths), max_train_codes=job.max_train_codes,
        codes_from=source, val_scores_from=val_source,
    )  # fmt: skip
    write_rejection(job.out_dir, document)
    return document


def calibrate_run(
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    score: str = DEFAULT_SCORE,
    val_rejected: float = DEFAULT_VAL_REJECTED,
    k: int = DEFAULT_K,
) -> dict[str, Any]:
    """Calibrate a finished run on its val split (of `data_dir`, default its own data) and
    (re)write RUN/rejection.json: what training does at its end, for runs made before it did
    or calibrated with another score."""
    from tlvision.runs.reader import load_model_only, run_splits

    check_score(score)
    loaded = load_model_only(run_dir)  # rejection.json may be the old one: not read
    splits = run_splits(loaded.metadata, data_dir)
    job = Calibration(
        loaded=loaded, out_dir=run_dir,
        train_paths=[path for path, _label in splits.samples["train"]],
        val_paths=[path for path, _label in splits.samples["val"]],
        weights_label=str(loaded.metadata.get("weights")),
        frozen_body=loaded.metadata.get("body") == "frozen",
        config=dict(loaded.metadata.get("config", {})), score=score, k=k, val_rejected=val_rejected,
    )  # fmt: skip
    return calibrate_loaded(job)
