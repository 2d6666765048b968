"""The advisor's race: every candidate measured on a seeded held-out part of train/ (never val/).

Frozen candidates: logistic regression on the pooled codes of stage2, stage3 and the top, at the
native-based input size and at the weights' own, one extraction pass per size (through the codes
cache). Fine-tuning candidates (partial, after stage2, and full) get a short trial: a few epochs
on the same fit sample at a reduced size, through `training.fit` like any run, compared with the
frozen codes at that size on the same sample; their gain over those frozen codes is what carries
over to the full-size run (decision.Entry).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlvision.backbones import BackboneSpec, WeightsChoice, create_model, preprocessing_for
from tlvision.codes_cache import FeatureCache
from tlvision.config import TrainConfig
from tlvision.data import DatasetSplits, default_num_workers, stratified_split
from tlvision.decision import Entry
from tlvision.heads import accuracy, fit_sklearn_head
from tlvision.split_codes import SplitCodes, extract_split_codes
from tlvision.stages import stage_label

Sample = tuple[Path, int]
Log = Callable[[str], None]

# The race's sample, from train/ only: a quarter of each class held out, 300 images at most in
# all (40 a class at most), and at most 600 of the rest to fit on (100 a class at most). Fixed
# counts, so the same data and seed race the same way, and the race's time does not grow with
# the dataset (it grows with the number of classes only below 15 classes).
HOLDOUT_SHARE = 0.25
HOLDOUT_IMAGES, HOLDOUT_PER_CLASS = 300, 40
FIT_IMAGES, FIT_PER_CLASS = 600, 100
RACE_STAGES: tuple[str | None, ...] = ("stage2", "stage3", None)  # stage4's pooled codes = top's
# A fixed regularisation for the race's probes (codes standardised first): the training run
# itself picks C by cross-validation on train; for ranking stages a fixed C was as good.
PROBE_C = 1.0
PROBE_MAX_ITER = 300
# The fine-tuning trial: 3 epochs at no more than 96 px (96 px trains about 4x faster than 128 on
# a CPU, measured); the partial candidate trains what follows stage2 (MobileNetV2: blocks 7-18).
TRIAL_EPOCHS = 3
TRIAL_MAX_SIZE = 96
PARTIAL_FREEZE_UNTIL = "stage2"


def sample_per_class(samples: Sequence[Sample], per_class: int, seed: int) -> list[Sample]:
    """At most `per_class` samples of each class, drawn with a seeded generator, in file order."""
    generator = torch.Generator().manual_seed(seed)
    chosen: list[Sample] = []
    for label in sorted({label for _, label in samples}):
        members = [sample for sample in samples if sample[1] == label]
        if len(members) > per_class:
            keep = sorted(torch.randperm(len(members), generator=generator)[:per_class].tolist())
            members = [members[index] for index in keep]
        chosen.extend(members)
    return chosen


def race_split(train: Sequence[Sample], seed: int) -> tuple[list[Sample], list[Sample]]:
    """(fit, holdout): a seeded, stratified split of train/ alone."""
    split = stratified_split(train, HOLDOUT_SHARE, seed)
    classes = len({label for _, label in train})
    fit_per_class = max(10, min(FIT_PER_CLASS, FIT_IMAGES // classes))
    holdout_per_class = max(5, min(HOLDOUT_PER_CLASS, HOLDOUT_IMAGES // classes))
    return (
        sample_per_class(split["train"], fit_per_class, seed),
        sample_per_class(split["val"], holdout_per_class, seed),
    )


@dataclass(frozen=True)
class RaceSetup:
    """What every measurement of the race shares."""

    splits: DatasetSplits  # "train": the fit sample, "val": the held-out part of train/
    backbone: BackboneSpec
    weights: WeightsChoice
    weights_argument: str | None
    cache: FeatureCache | None
    device: torch.device
    seed: int
    log: Log


def race_codes(setup: RaceSetup, input_size: int) -> dict[str | None, SplitCodes]:
    """Every race stage's codes of the fit and holdout samples at `input_size`, one pass."""
    preprocessing = preprocessing_for(setup.backbone, setup.weights, input_size=input_size)
    model = create_model(setup.backbone, len(setup.splits.class_names), setup.weights)
    return extract_split_codes(
        model, setup.backbone, setup.splits, weights=setup.weights.label,
        preprocessing=preprocessing, cache=setup.cache, stages=RACE_STAGES, seed=setup.seed,
        num_workers=default_num_workers(), device=setup.device, log=setup.log,
    )  # fmt: skip


def frozen_entries(setup: RaceSetup, input_size: int) -> tuple[list[Entry], dict[str | None, Any]]:
    """The frozen candidates at `input_size`, and the codes they were measured on."""
    started = time.perf_counter()
    codes = race_codes(setup, input_size)
    extraction_share = (time.perf_counter() - started) / len(RACE_STAGES)
    anchor = codes[None]
    scores = {stage: holdout_accuracy(setup, codes[stage]) for stage in RACE_STAGES}
    measured = (
        f"logistic regression (C={PROBE_C:g}) on {len(anchor.train_labels)} fit images, scored "
        f"on {len(anchor.val_labels)} held-out train images"
    )
    entries = [
        Entry(
            name=frozen_name(stage, input_size),
            strategy="linear-probe",
            stage=stage,
            input_size=input_size,
            accuracy=accuracy,
            measured=measured,
            seconds=extraction_share + seconds,
        )
        for stage, (accuracy, seconds) in scores.items()
    ]
    return entries, codes


def logreg_accuracy(
    train: np.ndarray, train_labels: Any, holdout: np.ndarray, holdout_labels: Any, classes: int
) -> float:
    """Holdout accuracy of logistic regression (standardised codes, fixed C, bounded iterations:
    near-separable codes otherwise run lbfgs for thousands of steps for the same ranking)."""
    layer = fit_sklearn_head(
        "logreg", train, train_labels, num_classes=classes, C=PROBE_C, max_iter=PROBE_MAX_ITER
    )
    return accuracy(layer, holdout, holdout_labels)


def holdout_accuracy(setup: RaceSetup, codes: SplitCodes) -> tuple[float, float]:
    """(accuracy, seconds) of logistic regression on one stage's fit codes, on the holdout."""
    started = time.perf_counter()
    score = logreg_accuracy(
        np.asarray(codes.train_views[0]), codes.train_labels, np.asarray(codes.val),
        codes.val_labels, len(setup.splits.class_names),
    )  # fmt: skip
    return score, time.perf_counter() - started


def frozen_name(stage: str | None, input_size: int) -> str:
    return f"frozen {stage_label(stage)} @{input_size}"


def learning_curve(codes: SplitCodes, num_classes: int, seed: int) -> dict[str, float]:
    """Holdout accuracy with 25%, 50% and 100% of the fit codes, stratified."""
    labels = np.asarray(codes.train_labels)
    train = np.asarray(codes.train_views[0])
    order = np.random.default_rng(seed).permutation(len(labels))
    curve: dict[str, float] = {}
    for share in (0.25, 0.5, 1.0):
        chosen = np.concatenate(
            [
                [index for index in order if labels[index] == label][
                    : max(2, round(share * int((labels == label).sum())))
                ]
                for label in range(num_classes)
            ]
        ).astype(np.int64)
        curve[f"{share:g}"] = logreg_accuracy(
            train[chosen], labels[chosen], np.asarray(codes.val), codes.val_labels, num_classes
        )
    return curve


def trial_size(native_input_size: int) -> int:
    return min(native_input_size, TRIAL_MAX_SIZE)


def link_dataset(root: Path, splits: DatasetSplits) -> Path:
    """DATA/train and DATA/val of symbolic links to the race's fit and holdout images, so a
    trial runs through `training.fit` like any run without copying a file."""
    for phase, folder in (("train", "train"), ("val", "val")):
        for name in splits.class_names:
            (root / folder / name).mkdir(parents=True, exist_ok=True)
        for index, (path, label) in enumerate(splits.samples[phase]):
            link = root / folder / splits.class_names[label] / f"{index:06d}-{path.name}"
            link.symlink_to(path.absolute())
    return root


def finetune_trials(
    setup: RaceSetup, *, native_input_size: int, frozen: Sequence[Entry]
) -> list[Entry]:
    """Partial and full fine-tuning: TRIAL_EPOCHS on the fit sample at the trial size, scored on
    the holdout after each epoch, beside `frozen` (the frozen candidates at the trial size;
    measured here when empty) on the same images (see decision.comparable_accuracy)."""
    from tlvision.runs import read_metrics
    from tlvision.training import fit  # training pulls in much; only the trials need it

    size = trial_size(native_input_size)
    splits = setup.splits
    if not frozen:
        frozen, _codes = frozen_entries(setup, size)
    reference = max(entry.accuracy for entry in frozen)
    entries = []
    with tempfile.TemporaryDirectory(prefix="tlvision-trial-") as scratch:
        data = link_dataset(Path(scratch) / "data", splits)
        for name, freeze_until in (
            (f"fine-tune after {PARTIAL_FREEZE_UNTIL} @{native_input_size}", PARTIAL_FREEZE_UNTIL),
            (f"fine-tune all @{native_input_size}", None),
        ):
            started = time.perf_counter()
            setup.log(f"advise: {TRIAL_EPOCHS}-epoch trial: {name.split(' @')[0]} at {size} px")
            config = TrainConfig(
                data_dir=data, out_dir=Path(scratch) / f"run-{freeze_until}",
                backbone=setup.backbone.name, weights=setup.weights_argument,
                strategy="finetune", freeze_until=freeze_until, input_size=size,
                epochs=TRIAL_EPOCHS, seed=setup.seed, device=str(setup.device), no_cache=True,
            )  # fmt: skip
            fit(config, log=lambda _: None)
            curve = tuple(float(row["val_acc"]) for row in read_metrics(config.out_dir))
            entries.append(
                Entry(
                    name=name,
                    strategy="finetune",
                    stage=freeze_until,
                    input_size=native_input_size,
                    accuracy=curve[-1],
                    measured=f"{TRIAL_EPOCHS}-epoch trial at {size} px on the fit sample: holdout "
                    + ", ".join(f"{value:.3f}" for value in curve)
                    + f" by epoch; the best frozen codes at {size} px: {reference:.3f}",
                    seconds=time.perf_counter() - started,
                    epoch_accuracy=curve,
                    frozen_reference=reference,
                )
            )
    return entries
