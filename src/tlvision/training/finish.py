"""The end of a run: the model and its summary written, each epoch's record on the way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.data.images import BadImageError, open_image_rgb
from tlvision.errors import UserError
from tlvision.runs.reader import read_metrics
from tlvision.runs.writer import append_metrics, save_run_model, write_summary
from tlvision.training.imbalance import imbalance_fields
from tlvision.training.run_setup import Log, RunSetup
from tlvision.training.strategy import strategy_of


def record_epoch(setup: RunSetup, record: dict[str, Any]) -> None:
    """One epoch's metrics: a metrics.jsonl line and, with --tensorboard, its scalars."""
    append_metrics(setup.config.out_dir, record)
    if setup.tracker is not None:
        setup.tracker.epoch(record)


def _track_confusion(setup: RunSetup, model: nn.Module, epoch: int) -> None:
    """The saved model's val confusion matrix into TensorBoard (only with --tensorboard)."""
    if setup.tracker is None:
        return
    from sklearn.metrics import confusion_matrix

    from tlvision.inference.evaluation import classify_samples
    from tlvision.inference.runtime import TorchClassifier
    from tlvision.runs.reader import LoadedModel

    names = tuple(setup.splits.class_names)
    loaded = LoadedModel(model.eval(), setup.backbone, names, setup.preprocessing, {})
    predictions = classify_samples(TorchClassifier(loaded), setup.splits.samples["val"])
    predicted = predictions.probabilities.argmax(axis=1)
    matrix = confusion_matrix(predictions.labels, predicted, labels=list(range(len(names))))
    setup.tracker.confusion(matrix, list(names), epoch)
    setup.tracker.close()


@dataclass(frozen=True)
class HeadCodes:
    """The codes a frozen route's head was trained and scored on (the head's input): the
    rejection's train codes and val scores need no second pass of the body."""

    train_paths: list[Path]
    train: np.ndarray  # (N_train, C), the centre crop's
    val: np.ndarray  # (N_val, C), the readable val images in order
    val_labels: np.ndarray  # (N_val,), their classes

    @property
    def val_set(self) -> tuple[np.ndarray, np.ndarray]:
        return self.val, self.val_labels


def calibrate_rejection(
    setup: RunSetup,
    model: nn.Module,
    log: Log,
    skipped: set[Path],
    head_codes: HeadCodes | None = None,
) -> dict[str, Any]:
    """RUN/rejection.json and RUN/ood_codes.safetensors: the train images' codes as the saved
    model sees them, and the code-space score's threshold on its val images
    (tlvision.inference.rejection), for every strategy; the summary's part of it."""
    from tlvision.inference.rejection import Calibration, calibrate_loaded
    from tlvision.runs.reader import LoadedModel

    names = tuple(setup.splits.class_names)
    loaded = LoadedModel(model.eval(), setup.backbone, names, setup.preprocessing, {})
    config = setup.config
    job = Calibration(
        loaded=loaded, out_dir=config.out_dir,
        train_paths=head_codes.train_paths if head_codes else
        [path for path, _ in setup.splits.samples["train"] if path not in skipped],
        train_codes=head_codes.train if head_codes else None,
        val_codes=head_codes.val if head_codes else None,
        val_paths=[path for path, _label in setup.splits.samples["val"]],
        weights_label=setup.weights.label, frozen_body=strategy_of(config).frozen_body,
        config={"cache_dir": config.cache_dir, "no_cache": config.no_cache, "seed": config.seed},
        device=setup.device,
    )  # fmt: skip
    try:
        document = calibrate_loaded(job)
    except UserError as error:
        log(f"note: no rejection threshold for unknown inputs: {error}")
        return {}
    log(
        f"unknown inputs: {document['score']} above {document['threshold']:.3f} "
        f"(rejects {document['val_rejected']:.1%} of val; {document.get('train_codes')} train "
        "codes stored)"
    )
    return {"rejection_threshold": document["threshold"], "rejection_score": document["score"]}


def describe_skipped(paths: set[Path]) -> list[dict[str, str]]:
    """Why each skipped file could not be read (decoded again once, at the end)."""
    described = []
    for path in sorted(paths):
        try:
            open_image_rgb(path)
            reason = "could not be read during training"
        except BadImageError as error:
            reason = error.reason
        described.append({"path": str(path), "reason": reason})
    return described


def model_metadata(setup: RunSetup) -> dict[str, Any]:
    """model.json: what rebuilds and explains the saved model."""
    config = setup.config
    return {
        "classes": list(setup.splits.class_names),
        "backbone": setup.backbone.name,
        "weights": setup.weights.label,
        "pretrained": setup.weights.pretrained,
        "preprocessing": setup.preprocessing.to_json(),
        "strategy": config.strategy,
        # whether the pretrained body trained: a frozen one's codes are in the cache
        "body": "frozen" if strategy_of(config).frozen_body else "trained",
        "config": config.to_json(),
    }


def finish_run(
    setup: RunSetup,
    model: nn.Module,
    log: Log,
    *,
    seconds: float,
    skipped: set[Path],
    extra: dict[str, Any],
    model_info: dict[str, Any] | None = None,
    head_codes: HeadCodes | None = None,
) -> dict[str, Any]:
    """Save the model (safetensors + model.json) and summary.json; report skipped files.

    The saved weights are the best val epoch's; the summary gives the final epoch's val
    accuracy beside the best one, since the best was chosen on val. `model_info` is what the
    strategy adds to model.json (the frozen routes: the stage and head read). `head_codes`:
    the codes the head trained and was scored on, when the route has them (the frozen ones), so
    the rejection needs no second pass.
    """
    config, backbone, weights = setup.config, setup.backbone, setup.weights
    metadata = {**model_metadata(setup), **(model_info or {})}
    save_run_model(config.out_dir, model, metadata)
    metrics = read_metrics(config.out_dir)
    best = max(metrics, key=lambda record: record["val_acc"])  # ties: the earliest epoch
    skipped_files = describe_skipped(skipped | set(setup.splits.broken_links))
    rejection = calibrate_rejection(setup, model, log, skipped, head_codes)
    summary = {
        # first: on imbalanced data it leads
        **imbalance_fields(setup, model, log, head_codes.val_set if head_codes else None),
        **_test_split_result(setup, log),
        "final_val_acc": metrics[-1]["val_acc"],
        "best_val_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "epochs": config.epochs,
        "seconds": seconds,
        "strategy": config.strategy,
        "backbone": backbone.name,
        "weights": weights.label,
        "classes": list(setup.splits.class_names),
        **_readable_images(setup, skipped),
        "val_split": setup.splits.val_split,
        "class_weights": setup.class_weights,
        "skipped_files": skipped_files,
        **rejection,
        **({"excluded": setup.excluded} if setup.excluded is not None else {}),
        **extra,
        **_compute_facts(setup),
    }
    write_summary(config.out_dir, summary)
    _track_confusion(setup, model, metrics[-1]["epoch"])
    if skipped_files:
        log(f"skipped {len(skipped_files)} unreadable files (listed in summary.json):")
        for entry in skipped_files:
            log(f"  {entry['path']}: {entry['reason']}")
    log(
        f"final val acc {summary['final_val_acc']:.4f} (best {best['val_acc']:.4f} at epoch "
        f"{best['epoch']}, the weights saved); {seconds:.0f}s; model saved to {config.out_dir}"
    )
    return summary


def _compute_facts(setup: RunSetup) -> dict[str, Any]:
    """Where and how the run computed: device, precision, processes, threads."""
    return {
        "device": str(setup.device),
        "precision": setup.precision,
        "processes": setup.distributed.world_size,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": setup.num_workers,
    }


def _readable_images(setup: RunSetup, skipped: set[Path]) -> dict[str, int]:
    """Train and val images the run read: the unreadable ones (listed apart) left out."""
    return {
        f"{phase}_images": sum(path not in skipped for path, _ in setup.splits.samples[phase])
        for phase in ("train", "val")
    }


def _test_split_result(setup: RunSetup, log: Log) -> dict[str, Any]:
    """The test split, when there is one (DATA/test, or DATA/test.csv for a CSV dataset): the
    saved model scored on it once, at the very end, so the number the summary leads with was
    never used to choose anything (epoch, rate, strategy, thresholds)."""
    data_dir = setup.config.data_dir
    test = data_dir / ("test.csv" if setup.splits.layout == "csv" else "test")
    if not test.exists():
        return {}
    from tlvision.inference.table_evaluation import MultiLabelReport, evaluate_data

    try:
        report = evaluate_data(setup.config.out_dir, test, split="test", device=setup.device)
    except UserError as error:  # the model is saved: say why there is no test number, go on
        log(f"note: no test score: {error}")
        return {"test_error": str(error)}
    if isinstance(report, MultiLabelReport):
        scores = report.metrics()
        log(
            f"test mAP {scores['map']:.4f}, micro F1 {scores['micro_f1']:.4f}, macro F1 "
            f"{scores['macro_f1']:.4f} at the thresholds, on {report.total} images of {test} "
            "(scored once)"
        )
        return {
            "test_map": scores["map"],
            "test_micro_f1": scores["micro_f1"],
            "test_macro_f1": scores["macro_f1"],
            "test_images": report.total,
        }
    log(f"test acc {report.accuracy:.4f} on {report.total} images of {test} (scored once)")
    return {"test_acc": report.accuracy, "test_images": report.total}
