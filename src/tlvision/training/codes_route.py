"""The frozen routes: the body runs once per image and view, then a head trains on CNN codes.

A head on the top codes (feature-extract) trains as the classic loop's last layer would (same
optimizer, schedule and epochs), but on cached codes, and goes back into the full model. A head
on an earlier stage's pooled codes (linear-probe --stage) makes a model that is the body cut at
that stage plus the head. The head is a softmax layer (torch) or, fitted without epochs,
logistic regression or a linear SVM (scikit-learn). No per-epoch checkpoint: the codes are
cached, so a killed run is simply run again from its recorded config (`CODES_RUN_CONFIG`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from tlvision.codes.cache import FeatureCache, default_cache_dir
from tlvision.codes.extraction import UnreadableImagesError
from tlvision.codes.split_codes import SplitCodes, extract_split_codes
from tlvision.compute import distributed
from tlvision.data.layouts import DatasetSplits
from tlvision.inference.multilabel import sigmoid
from tlvision.jsonio import write_json_atomic
from tlvision.models.network import head_of, install_head
from tlvision.models.stages import StageClassifier, stage_label
from tlvision.runs.layout import CODES_RUN_CONFIG
from tlvision.runs.writer import start_metrics
from tlvision.training.finish import HeadCodes, finish_run, record_epoch
from tlvision.training.heads import HeadTraining, accuracy, train_linear_head
from tlvision.training.multilabel_heads import logits_of
from tlvision.training.multilabel_route import (
    code_targets,
    log_multilabel,
    multilabel_results,
    train_multilabel_head,
)
from tlvision.training.run_setup import Log, RunSetup
from tlvision.training.sklearn_heads import fit_sklearn_head
from tlvision.training.strategy import epochs_of, views_of


def fit_on_codes(
    setup: RunSetup, model: nn.Module, log: Log, *, stage: str | None, head: str
) -> dict[str, Any]:
    """Train a `head` on `stage`'s codes (None: the top) and save the run; returns the summary.

    Under torchrun each rank computes the codes of its share of the images into the shared
    cache; then rank 0 reads them all back (cache hits) and trains the head alone, while the
    other ranks wait for it in `training.fit`. With --no-cache rank 0 does all the work.
    """
    started = time.perf_counter()
    config, job = setup.config, setup.distributed
    # --no-cache means no cache at all: codes stay in memory and nothing is written to disk.
    cache = (
        None if config.no_cache else FeatureCache(config.cache_dir or default_cache_dir(), log=log)
    )

    def split_codes(splits: DatasetSplits) -> SplitCodes:
        return extract_split_codes(
            model, setup.backbone, splits, weights=setup.weights.label,
            preprocessing=setup.preprocessing, cache=cache, stages=[stage],
            augmented_views=views_of(config), seed=config.seed, batch_size=config.batch_size,
            num_workers=setup.num_workers, device=setup.device, log=log,
        )[stage]  # fmt: skip

    if job.world_size > 1 and cache is not None:
        _cache_each_ranks_share(setup, split_codes)
    if not job.is_main:
        return {}
    codes = split_codes(setup.splits)
    start_metrics(config.out_dir)
    write_json_atomic(config.out_dir / CODES_RUN_CONFIG, config.to_json())
    log(
        f"{config.strategy}: {setup.backbone.name} ({setup.weights.label}) codes from "
        f"{stage_label(stage)}, head {head}, {len(codes.train_labels)} train x "
        f"{len(codes.train_views)} views / {len(codes.val_labels)} val images"
    )
    # the top's head starts from the model's new head, as the classic loop's would
    init = head_of(model, setup.backbone) if stage is None else None
    layer = _train_head(setup, codes, head, init, log)
    extra, model_info = _multilabel_fields(setup, codes, layer, log)
    final: nn.Module
    if stage is None:
        install_head(model, setup.backbone, layer)
        final = model
    else:
        final = StageClassifier.from_trained(setup.backbone, stage, model, layer)
    return finish_run(
        setup, final.cpu(), log,
        seconds=time.perf_counter() - started,
        skipped={Path(path) for path, *_ in codes.skipped},
        # a scikit-learn head is one fit: its summary says 1 epoch, not the configured count
        extra={"views": views_of(config), "head": head, "stage": stage,
               **({} if head == "linear" else {"epochs": 1}), **extra},
        model_info={"stage": stage, "head": head, **model_info},
        # the centre crop's codes (views come centre first) and val's: the rejection's
        head_codes=HeadCodes(
            [path for path, _ in codes.train_samples], codes.train_views[0], codes.val,
            codes.val_labels,
        ),
    )  # fmt: skip


def _cache_each_ranks_share(
    setup: RunSetup, split_codes: Callable[[DatasetSplits], SplitCodes]
) -> None:
    """Each rank computes the codes of its share into the shared cache, then waits for all."""
    job = setup.distributed
    shares = {phase: distributed.shard(job, s) for phase, s in setup.splits.samples.items()}
    # A share of nothing but unreadable images raises: rank 0's full pass reports them.
    with contextlib.suppress(UnreadableImagesError):
        split_codes(replace(setup.splits, samples=shares))
    distributed.barrier(job)  # every rank's codes are in the cache


def _multilabel_fields(
    setup: RunSetup, codes: SplitCodes, layer: nn.Linear, log: Log
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Multi-label data: the thresholds and metrics (summary, model.json); else nothing."""
    if not setup.splits.multi_label:
        return {}, {}
    _targets, val_targets = code_targets(setup, codes)
    summary, model_info = multilabel_results(
        setup, sigmoid(logits_of(layer, codes.val)), val_targets
    )
    log_multilabel(summary, log)
    return summary, model_info


def _train_head(
    setup: RunSetup, codes: SplitCodes, head_name: str, init: nn.Linear | None, log: Log
) -> nn.Linear:
    """The head on the codes, each epoch logged and appended to metrics.jsonl."""
    config = setup.config
    num_classes = len(setup.splits.class_names)

    def on_epoch(record: dict[str, Any]) -> None:
        record_epoch(setup, record)
        train = f"  train acc {record['train_acc']:.4f}" if "train_acc" in record else ""
        val_map = f"  val mAP {record['val_map']:.4f}" if "val_map" in record else ""
        log(f"epoch {record['epoch']:>3}  val acc {record['val_acc']:.4f}{val_map}{train}")

    if setup.splits.multi_label:
        return train_multilabel_head(setup, codes, head_name, init, on_epoch)
    if head_name == "linear":
        training = HeadTraining(
            epochs=epochs_of(config), learning_rate=config.learning_rate,
            batch_size=config.batch_size, weight_decay=config.weight_decay,
            momentum=config.momentum, schedule=config.schedule, step_epochs=config.step_epochs,
            step_gamma=config.step_gamma, seed=config.seed,
        )  # fmt: skip
        layer, _history = train_linear_head(
            codes.train_views, codes.train_labels, codes.val, codes.val_labels,
            num_classes=num_classes, training=training, init=init,
            class_weights=setup.class_weights, on_epoch=on_epoch,
        )  # fmt: skip
        return layer
    fit_started = time.perf_counter()
    layer = fit_sklearn_head(
        head_name, codes.train_views, codes.train_labels,
        num_classes=num_classes, seed=config.seed,
    )  # fmt: skip
    on_epoch(
        {
            "epoch": 1,
            "val_acc": accuracy(layer, codes.val, codes.val_labels),
            "seconds": time.perf_counter() - fit_started,
        }
    )
    return layer
