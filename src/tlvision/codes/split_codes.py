"""A dataset's codes: every stage's train views and val codes, unreadable images skipped."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.codes.cache import (
    VAL_VIEW,
    CodesSpec,
    FeatureCache,
    Log,
    View,
    stderr_log,
    train_views,
)
from tlvision.codes.extraction import UnreadableImagesError, extract_codes
from tlvision.data.layouts import DatasetSplits
from tlvision.data.preprocessing import Preprocessing
from tlvision.errors import UserError
from tlvision.models.backbone import BackboneSpec
from tlvision.models.stages import StageCodes

Extract = Callable[[list[tuple[Path, int]]], dict[str | None, np.ndarray]]


@dataclass(frozen=True)
class SplitCodes:
    """One stage's codes for a dataset: train views and val, with their labels.

    `train_views[i]` is (N_train, C), row j the code of `train_samples[j]` under view i: the
    val transform first (when asked for), then the augmented views. Heads pick one view per
    image per epoch (`train_linear_head`) or stack them (`stacked_train`). Unreadable images
    are left out of `train_samples` / `val_samples` and listed in `skipped` as (path, reason).
    """

    stage: str | None
    train_views: tuple[np.ndarray, ...]
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    train_samples: tuple[tuple[Path, int], ...] = ()
    val_samples: tuple[tuple[Path, int], ...] = ()
    skipped: tuple[tuple[Path, str], ...] = ()

    def stacked_train(self) -> tuple[np.ndarray, np.ndarray]:
        """Every train view as rows of one array (in memory), with repeated labels."""
        codes = np.concatenate([np.asarray(view) for view in self.train_views])
        return codes, np.tile(self.train_labels, len(self.train_views))


def _readable_codes(
    samples: list[tuple[Path, int]],
    skipped: list[tuple[Path, str]],
    extract: Extract,
) -> tuple[list[tuple[Path, int]], dict[str | None, np.ndarray]]:
    """Codes of `samples`; unreadable ones are dropped (into `skipped`) and the rest, all
    computed and cached by the first call, read back."""
    try:
        return samples, extract(samples)
    except UnreadableImagesError as error:
        skipped.extend(error.images)
        bad = {path for path, _reason in error.images}
        samples = [sample for sample in samples if sample[0] not in bad]
        if not samples:
            raise
        return samples, extract(samples)


@dataclass(frozen=True)
class _Passes:
    """Extraction passes of one traced extractor: one per view, every stage at once."""

    extractor: StageCodes
    specs: list[CodesSpec]  # one per stage, of the centre view
    options: dict[str, Any]  # extract_codes' cache, batch size, workers, device, log

    def codes_for(self, view: View, phase: str) -> Extract:
        specs = [replace(spec, view=view) for spec in self.specs]

        def extract(samples: list[tuple[Path, int]]) -> dict[str | None, np.ndarray]:
            return extract_codes(
                self.extractor,
                samples,
                specs=specs,
                description=f"{phase} codes ({view.label})",
                **self.options,
            )

        return extract


def extract_split_codes(
    model: nn.Module,
    backbone: BackboneSpec,
    splits: DatasetSplits,
    *,
    weights: str,
    preprocessing: Preprocessing,
    cache: FeatureCache | None,
    stages: Sequence[str | None] = (None,),
    augmented_views: int = 0,
    center_view: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    channels_last: bool | None = None,
    log: Log | None = None,
    phase_names: tuple[str, str] = ("train", "val"),
) -> dict[str | None, SplitCodes]:
    """Train and val codes for each stage: one pass per view (train: centre + augmented).
    Unreadable images are skipped, logged once and listed in each SplitCodes' `skipped`.
    `phase_names`: what the bars call the splits (the advisor's are both parts of train/)."""
    if augmented_views < 0 or (augmented_views == 0 and not center_view):
        raise UserError("give the training set at least one view (--views 0: the centre crop)")
    log = log or (cache.log if cache is not None else stderr_log)
    views = ([VAL_VIEW] if center_view else []) + list(train_views(augmented_views, seed))
    stages = list(dict.fromkeys(stages))
    passes = _Passes(
        StageCodes(model, backbone, stages),  # traced once, used for every pass
        [CodesSpec(backbone.name, weights, preprocessing, stage) for stage in stages],
        dict(cache=cache, batch_size=batch_size, num_workers=num_workers, device=device,
             channels_last=channels_last, log=log),
    )  # fmt: skip
    skipped, train_samples = list[tuple[Path, str]](), list(splits.samples["train"])
    train_codes = functools.partial(passes.codes_for, phase=phase_names[0])
    codes_for, per_view = passes.codes_for, []
    for view in views:
        train_samples, codes = _readable_codes(train_samples, skipped, train_codes(view))
        per_view.append(codes)
    if any(len(codes[stages[0]]) != len(train_samples) for codes in per_view):
        # a file became unreadable between views: read every view again for the final list
        per_view = [train_codes(view)(train_samples) for view in views]
    val_samples, val = _readable_codes(
        list(splits.samples["val"]), skipped, codes_for(VAL_VIEW, phase_names[1])
    )
    if skipped:
        log(f"skipped {len(skipped)} unreadable image(s): {_listed(skipped)}")
    return {
        stage: SplitCodes(
            stage=stage,
            train_views=tuple(codes[stage] for codes in per_view),
            train_labels=_labels(train_samples),
            val=val[stage],
            val_labels=_labels(val_samples),
            train_samples=tuple(train_samples),
            val_samples=tuple(val_samples),
            skipped=tuple(skipped),
        )
        for stage in stages
    }


def _listed(skipped: list[tuple[Path, str]]) -> str:
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return "; ".join(f"{path}: {reason}" for path, reason in skipped[:5]) + more


def _labels(samples: Sequence[tuple[Path, int]]) -> np.ndarray:
    return np.asarray([label for _path, label in samples], dtype=np.int64)
