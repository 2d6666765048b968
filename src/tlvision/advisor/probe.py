"""The probe: how well each linear head reads each stage's frozen codes, from one pass.

`probe` scores heads on codes already extracted; `run_probe` is `tlvision probe`: extract every
asked stage's codes of a dataset in one pass, then probe them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tlvision.codes.cache import FeatureCache, default_cache_dir
from tlvision.codes.split_codes import extract_split_codes
from tlvision.compute.devices import resolve_device
from tlvision.config import DEFAULT_BACKBONE, HEADS
from tlvision.data.layouts import find_splits
from tlvision.data.loading import default_num_workers
from tlvision.errors import UserError
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights, create_model, preprocessing_for
from tlvision.models.stages import TOP_LABEL, stage_label
from tlvision.training.heads import (
    Codes,
    HeadTraining,
    TrainCodes,
    accuracy,
    code_views,
    label_array,
    train_linear_head,
)
from tlvision.training.sklearn_heads import fit_sklearn_head, select_C


@dataclass(frozen=True)
class ProbeRow:
    stage: str | None  # None: the top codes
    head: str
    val_acc: float
    train_acc: float
    seconds: float
    C: float | None = None  # the sklearn heads' chosen C

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": stage_label(self.stage),
            "head": self.head,
            "val_acc": self.val_acc,
            "train_acc": self.train_acc,
            "seconds": self.seconds,
            "C": self.C,
        }


def probe(
    train_codes_by_stage: Mapping[str | None, TrainCodes],
    val_codes_by_stage: Mapping[str | None, Codes],
    train_labels: Any,
    val_labels: Any,
    *,
    num_classes: int | None = None,
    heads: Sequence[str] = HEADS,
    seed: int = 0,
    C: float | None = None,
    log: Callable[[str], None] | None = None,
) -> list[ProbeRow]:
    """Validation accuracy of each head on each stage's codes, one row per (stage, head).

    Nothing is tuned on the validation set: the linear head trains a fixed number of epochs
    (AdamW, cosine schedule, standardised codes) and reports its last epoch; the sklearn heads
    pick C by cross-validation on the training codes unless `C` is given.
    """
    unknown = [head for head in heads if head not in HEADS]
    if unknown:
        raise UserError(f"unknown head(s) {', '.join(unknown)}; choose from {', '.join(HEADS)}")
    labels = label_array(train_labels)
    val_targets = label_array(val_labels)
    classes = (
        num_classes if num_classes is not None else int(max(labels.max(), val_targets.max())) + 1
    )
    rows: list[ProbeRow] = []
    for stage, train_codes in train_codes_by_stage.items():
        val_codes = val_codes_by_stage[stage]
        views = code_views(train_codes)
        for head in heads:
            started = time.perf_counter()
            layer, chosen = _fit_head(head, views, labels, val_codes, val_targets, classes, C, seed)
            row = ProbeRow(
                stage=stage,
                head=head,
                val_acc=accuracy(layer, val_codes, val_targets),
                train_acc=accuracy(layer, views[0], labels),
                seconds=time.perf_counter() - started,
                C=chosen,
            )
            rows.append(row)
            if log is not None:
                c_text = f"  C={chosen:g}" if chosen is not None else ""
                log(
                    f"probe {stage_label(stage):>8} {head:<6}  val acc {row.val_acc:.4f}  "
                    f"train acc {row.train_acc:.4f}  {row.seconds:.1f}s{c_text}"
                )
    return rows


def _fit_head(
    head: str,
    views: list[np.ndarray],
    labels: np.ndarray,
    val_codes: Codes,
    val_labels: np.ndarray,
    classes: int,
    C: float | None,
    seed: int,
) -> tuple[nn.Linear, float | None]:
    """The head on the codes, and the C the sklearn heads chose. The linear head trains a fixed
    30 epochs (AdamW, cosine schedule, standardised codes) and is its last epoch's."""
    if head == "linear":
        training = HeadTraining(
            epochs=30, learning_rate=1e-2, weight_decay=1e-4, optimizer="adamw",
            schedule="cosine", seed=seed, standardize=True, keep_best=False,
        )  # fmt: skip
        layer, _history = train_linear_head(
            views, labels, val_codes, val_labels, num_classes=classes, training=training
        )
        return layer, None
    chosen = C if C is not None else select_C(head, views, labels, seed=seed)
    return fit_sklearn_head(head, views, labels, num_classes=classes, C=chosen, seed=seed), chosen


def format_probe_table(rows: Sequence[ProbeRow]) -> str:
    """Val accuracy as a table: one line per stage (early to late as given), one column per head."""
    stages = list(dict.fromkeys(row.stage for row in rows))
    heads = list(dict.fromkeys(row.head for row in rows))
    by_cell = {(row.stage, row.head): row for row in rows}
    width = max(5, *(len(stage_label(stage)) for stage in stages))
    lines = [f"{'stage':<{width}}  " + "  ".join(f"{head:>7}" for head in heads)]
    for stage in stages:
        cells = []
        for head in heads:
            row = by_cell.get((stage, head))
            cells.append(f"{row.val_acc:>7.4f}" if row is not None else f"{'-':>7}")
        lines.append(f"{stage_label(stage):<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def parse_stages(names: Sequence[str] | None, all_stages: Sequence[str]) -> list[str | None]:
    """Stage names as given ("top" is the head's input); default: every stage and the top."""
    if not names:
        return [*all_stages, None]
    return [None if name == TOP_LABEL else name for name in names]


def run_probe(
    data_dir: Path,
    *,
    backbone_name: str = DEFAULT_BACKBONE,
    weights_argument: str | None = None,
    stages: Sequence[str] | None = None,
    heads: Sequence[str] = HEADS,
    input_size: int | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    seed: int = 0,
    val_split: float | None = None,
    device_name: str = "auto",
    batch_size: int = 32,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`val_split` (or a flat dataset) holds out the seeded split that `train` would make."""
    started = time.perf_counter()
    splits = find_splits(data_dir, val_split=val_split, seed=seed)
    if splits.multi_label:
        raise UserError(
            f"{data_dir}: multi-label labels (CSV tables); probe scores single-label accuracy and "
            "does not measure multi-label data: train a linear-probe and read its val mAP instead"
        )
    backbone = get_backbone(backbone_name)
    stage_list = parse_stages(stages, backbone.stage_names)
    for stage in stage_list:
        if stage is not None:
            backbone.stage(stage)
    weights = choose_weights(backbone, weights_argument)
    preprocessing = preprocessing_for(backbone, weights, input_size=input_size)
    model = create_model(backbone, len(splits.class_names), weights)
    cache = FeatureCache(cache_dir or default_cache_dir(), log=log) if use_cache else None
    codes = extract_split_codes(
        model, backbone, splits, weights=weights.label, preprocessing=preprocessing,
        cache=cache, stages=stage_list, seed=seed, batch_size=batch_size,
        num_workers=default_num_workers(), device=resolve_device(device_name), log=log,
    )  # fmt: skip
    rows = probe(
        {stage: codes[stage].train_views for stage in stage_list},
        {stage: codes[stage].val for stage in stage_list},
        codes[stage_list[0]].train_labels,
        codes[stage_list[0]].val_labels,
        num_classes=len(splits.class_names),
        heads=heads,
        seed=seed,
    )
    return {
        "backbone": backbone.name,
        "weights": weights.label,
        "input_size": preprocessing.crop_size,
        "stages": [stage_label(stage) for stage in stage_list],
        "rows": [row.to_json() for row in rows],
        "table": format_probe_table(rows),
        "seconds": time.perf_counter() - started,
    }
