"""Run directories: made safely, filled at the end with the model and the summary.

A run directory holds model.safetensors + model.json (checkpoint.py), metrics.jsonl (one line
per epoch), summary.json, and while a run is under way its checkpoint or, for the frozen routes,
the config it was started with (for --resume).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlvision.compute.distributed import Distributed
from tlvision.config import TrainConfig
from tlvision.data.images import BadImageError, open_image_rgb
from tlvision.data.layouts import DatasetSplits
from tlvision.errors import UserError
from tlvision.jsonio import write_json_atomic
from tlvision.models.backbone import BackboneSpec
from tlvision.models.backbones import WeightsChoice
from tlvision.models.weights import Preprocessing
from tlvision.runs.checkpoint import TRAINING_CHECKPOINT, save_run_model
from tlvision.training.tracking import Tracker

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CODES_RUN_CONFIG = "run_config.json"  # the frozen routes' config, written first: for --resume
VAL_SPLIT_FILE = "val_split.json"

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunSetup:
    """Everything a run resolves from its config before it trains: data, model and device."""

    config: TrainConfig
    splits: DatasetSplits
    backbone: BackboneSpec
    weights: WeightsChoice
    preprocessing: Preprocessing
    device: torch.device
    num_workers: int
    class_weights: list[float] | None
    precision: str = "32"  # resolved: 32, bf16 or 16 (devices.resolve_precision)
    distributed: Distributed = field(default_factory=Distributed)
    tracker: Tracker | None = None  # rank 0's TensorBoard writer (None: no --tensorboard)


def refuse_to_overwrite(out_dir: Path, *, overwrite: bool) -> None:
    """Never overwrite a run without --overwrite, and never delete anything but a run."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"{out_dir}: already exists and is not empty; choose a new --out or pass "
                "--overwrite"
            )
        markers = (SUMMARY_FILE, METRICS_FILE, TRAINING_CHECKPOINT, CODES_RUN_CONFIG)
        if not any((out_dir / marker).exists() for marker in markers):
            raise UserError(
                f"{out_dir}: --overwrite replaces only tlvision run directories, and this one "
                "has no metrics.jsonl, summary.json or checkpoint; choose a new --out"
            )


def prepare_run_dir(out_dir: Path, *, overwrite: bool) -> None:
    """An empty run directory, replacing an earlier run only when `overwrite` allows it."""
    refuse_to_overwrite(out_dir, overwrite=overwrite)
    if out_dir.exists() and any(out_dir.iterdir()):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def write_val_split(setup: RunSetup) -> None:
    """Which files a --val-split run held out, so the split can be seen and reproduced."""
    if setup.splits.val_split is None:
        return
    write_json_atomic(
        setup.config.out_dir / VAL_SPLIT_FILE,
        {
            "fraction": setup.splits.val_split,
            "seed": setup.config.seed,
            "val_files": [str(path) for path, _ in setup.splits.samples["val"]],
        },
    )


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with (run_dir / METRICS_FILE).open("a") as handle:
        handle.write(json.dumps(record) + "\n")


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
    from torch.utils.data import DataLoader

    from tlvision.data.layouts import ImageDataset, build_transforms, collate_readable
    from tlvision.inference.evaluation import predict_probabilities

    names = list(setup.splits.class_names)
    transform = build_transforms(setup.preprocessing)["val"]
    dataset = ImageDataset(setup.splits.samples["val"], names, transform)
    loader = DataLoader(dataset, batch_size=setup.config.batch_size, collate_fn=collate_readable)
    probabilities, labels, _ = predict_probabilities(model, loader, torch.device("cpu"))
    predicted = probabilities.argmax(dim=1) if len(labels) else labels
    matrix = confusion_matrix(labels.numpy(), predicted.numpy(), labels=list(range(len(names))))
    setup.tracker.confusion(matrix, names, epoch)
    setup.tracker.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def finish_run(
    setup: RunSetup,
    model: nn.Module,
    log: Log,
    *,
    seconds: float,
    skipped: set[Path],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Save the model (safetensors + model.json) and summary.json; report skipped files.

    The saved weights are the best val epoch's; the summary gives the final epoch's val
    accuracy beside the best one, since the best was chosen on val.
    """
    config, backbone, weights = setup.config, setup.backbone, setup.weights
    metadata = {
        "classes": list(setup.splits.class_names),
        "backbone": backbone.name,
        "weights": weights.label,
        "pretrained": weights.pretrained,
        "preprocessing": setup.preprocessing.to_json(),
        "strategy": config.strategy,
        "config": config.to_json(),
    }
    if config.strategy == "linear-probe":
        metadata.update({"stage": config.stage, "head": config.head})
    save_run_model(config.out_dir, model, metadata)
    metrics = read_metrics(config.out_dir)
    best = max(metrics, key=lambda record: record["val_acc"])  # ties: the earliest epoch
    skipped_files = describe_skipped(skipped | set(setup.splits.broken_links))
    summary = {
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
        "train_images": len(setup.splits.samples["train"]),
        "val_images": len(setup.splits.samples["val"]),
        "val_split": setup.splits.val_split,
        "class_weights": setup.class_weights,
        "skipped_files": skipped_files,
        **extra,
        "device": str(setup.device),
        "precision": setup.precision,
        "processes": setup.distributed.world_size,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": setup.num_workers,
    }
    write_json_atomic(config.out_dir / SUMMARY_FILE, summary)
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


def _test_split_result(setup: RunSetup, log: Log) -> dict[str, Any]:
    """DATA/test, when there is one: the saved model scored on it once, at the very end, so the
    number the summary leads with was never used to choose anything (epoch, rate, strategy)."""
    test_dir = setup.config.data_dir / "test"
    if not test_dir.is_dir():
        return {}
    from tlvision.inference.evaluation import evaluate_run

    try:
        report = evaluate_run(setup.config.out_dir, test_dir, device=setup.device)
    except UserError as error:  # the model is saved: say why there is no test number, go on
        log(f"note: no test accuracy: {error}")
        return {"test_error": str(error)}
    log(f"test acc {report.accuracy:.4f} on {report.total} images of {test_dir} (scored once)")
    return {"test_acc": report.accuracy, "test_images": report.total}
