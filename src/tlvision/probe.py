"""`tlvision probe`: how well a linear head reads each stage's frozen codes, from one pass."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tlvision.backbones import choose_weights, create_model, get_backbone, preprocessing_for
from tlvision.data import default_num_workers, find_splits
from tlvision.features import (
    TOP_LABEL,
    FeatureCache,
    default_cache_dir,
    extract_split_codes,
    stage_label,
)
from tlvision.heads import format_probe_table, probe
from tlvision.training import resolve_device


def parse_stages(names: Sequence[str] | None, all_stages: Sequence[str]) -> list[str | None]:
    """Stage names as given ("top" is the head's input); default: every stage and the top."""
    if not names:
        return [*all_stages, None]
    return [None if name == TOP_LABEL else name for name in names]


def run_probe(
    data_dir: Path,
    *,
    backbone_name: str = "mobilenet_v2",
    weights_argument: str | None = None,
    stages: Sequence[str] | None = None,
    heads: Sequence[str] = ("linear", "logreg", "svm"),
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
