"""The advisor's race: every candidate measured on train/ alone (never val/).

Frozen candidates: logistic regression on the pooled codes of stage2, stage3 and the top, at the
native-based input size and at the weights' own, one extraction pass per size (through the codes
cache, so the chosen frozen run reuses them), scored as the run trains them: the run's C grid,
each C scored by 5-fold cross-validation over the race's pool (all of train/ up to 1,200 images),
the best C's score counts. Fine-tuning candidates get a trial: partial (after stage2) first,
full only when partial comes within the margin of the frozen codes (decision.full_trial_plan);
each the advised run's epochs on a fit sample of the pool at a reduced size, through
`training.fit` like any run, scored on a held-out part of the pool beside the frozen codes at
that size on the same images; their gain over those frozen codes is what carries over
(decision.comparable_accuracy).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlvision.advisor.decision import MAX_FINETUNE_EPOCHS, Entry, full_trial_plan
from tlvision.codes.cache import FeatureCache
from tlvision.codes.split_codes import SplitCodes, extract_split_codes
from tlvision.config import NO_FREEZING, TrainConfig
from tlvision.data.layouts import DatasetSplits, stratified_split
from tlvision.data.loading import default_num_workers
from tlvision.models.backbone import BackboneSpec
from tlvision.models.network import create_model, preprocessing_for
from tlvision.models.stages import stage_label
from tlvision.models.weights import WeightsChoice
from tlvision.training.heads import accuracy
from tlvision.training.sklearn_heads import (
    DEFAULT_C_GRID,
    best_C,
    cross_validated_scores,
    fit_sklearn_head,
)
from tlvision.training.strategies import finetune, linear_probe

Sample = tuple[Path, int]
Log = Callable[[str], None]

# The race's pool: all of train/ up to POOL_IMAGES, beyond that a seeded stratified sample of
# that many (class shares kept). A pool of up to 1,200 images scored by 5-fold CV (each fit on
# 80 % of it) put the pick within the margin of the best val accuracy on 5 of the 6 tuning sets
# (2,000 images: the same picks, twice the time); a 600/300 fit/holdout split with a fixed C and a
# learning-curve extrapolation did on 3 (it underrated the 224-px top codes, which gain most from
# more data and from C chosen by CV). Fixed counts: the same data and seed race the same way, and
# the race's time stops growing with the dataset beyond 1,200 train images.
POOL_IMAGES = 1200
CV_FOLDS = 5
# The fine-tuning trials' sample, from the pool: a quarter of each class held out, 300 images at
# most in all (40 a class at most), and at most 900 of the rest to fit on (150 a class at most):
# the whole pool when it is full. 600 fit images underrated partial fine-tuning more (shapes,
# tuning set: 0.853 predicted against 0.887 with 900, and 0.951 on val).
HOLDOUT_SHARE = 0.25
HOLDOUT_IMAGES, HOLDOUT_PER_CLASS = 300, 40
FIT_IMAGES, FIT_PER_CLASS = 900, 150
# The fine-tuning trial: the advised run's most epochs (decision.MAX_FINETUNE_EPOCHS), so its
# last epoch is measured, not extrapolated (3 epochs underrated partial fine-tuning on every
# tuning set: far 0.931 predicted against 0.962 with 5, 0.959 on val), at no more than 96 px
# (96 px trains about 4x faster than 128 on a CPU; 128 px predicted the same on clip art, 0.776);
# the partial candidate trains what follows the backbone's partial-freeze stage (stage2 for the
# five-stage backbones; MobileNetV2: blocks 7-18).
TRIAL_EPOCHS = MAX_FINETUNE_EPOCHS
TRIAL_MAX_SIZE = 96


def race_stages(backbone: BackboneSpec) -> tuple[str | None, ...]:
    """The stages whose pooled codes are raced (BackboneSpec.race_stages), then the top."""
    return (*backbone.race_stages, None)


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


def race_pool(train: Sequence[Sample], seed: int) -> list[Sample]:
    """All of `train` up to POOL_IMAGES; beyond, a seeded stratified sample of that many."""
    if len(train) <= POOL_IMAGES:
        return list(train)
    return stratified_split(train, POOL_IMAGES / len(train), seed)["val"]


def race_split(train: Sequence[Sample], seed: int) -> tuple[list[Sample], list[Sample]]:
    """(fit, holdout) for the fine-tuning trials: a seeded, stratified split of train/ alone."""
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
        preprocessing=preprocessing, cache=setup.cache, stages=race_stages(setup.backbone),
        seed=setup.seed,
        num_workers=default_num_workers(), device=setup.device, log=setup.log,
        phase_names=("train sample", "train holdout"),  # val/ is never read
    )  # fmt: skip


@dataclass(frozen=True)
class FrozenRace:
    """The frozen candidates at one input size, the codes they were measured on (the pool's as
    train, the trials' holdout as val) and the C each stage's cross-validation chose."""

    entries: list[Entry]
    codes: dict[str | None, SplitCodes]
    chosen_C: dict[str | None, float]


def frozen_entries(setup: RaceSetup, input_size: int) -> FrozenRace:
    """The frozen candidates at `input_size`: each stage's codes of the pool, scored by CV."""
    started = time.perf_counter()
    codes = race_codes(setup, input_size)
    stages = race_stages(setup.backbone)
    extraction_share = (time.perf_counter() - started) / len(stages)
    entries, chosen = [], {}
    for stage in stages:
        started = time.perf_counter()
        score, chosen[stage] = cv_accuracy(codes[stage], setup.seed)
        entries.append(
            Entry(
                name=frozen_name(stage, input_size),
                strategy=linear_probe.NAME,
                stage=stage,
                input_size=input_size,
                accuracy=score,
                measured=f"logistic regression, {CV_FOLDS}-fold CV over "
                f"{len(codes[stage].train_labels)} train images, best C of the run's grid "
                f"({chosen[stage]:g})",
                seconds=extraction_share + time.perf_counter() - started,
            )
        )
    return FrozenRace(entries, codes, chosen)


def cv_accuracy(codes: SplitCodes, seed: int) -> tuple[float, float]:
    """(accuracy, C): the best mean CV accuracy over the run's C grid on the pool's codes, as
    `train --strategy linear-probe --head logreg` chooses C (heads.select_C), with more folds."""
    scores = cross_validated_scores(
        "logreg", np.asarray(codes.train_views[0]), codes.train_labels, folds=CV_FOLDS, seed=seed
    )
    C = best_C(DEFAULT_C_GRID, scores)
    return (float(np.nanmax(scores)) if not np.isnan(scores).all() else 0.0), C


def frozen_name(stage: str | None, input_size: int) -> str:
    return f"frozen {stage_label(stage)} @{input_size}"


def learning_curve(codes: SplitCodes, C: float, seed: int) -> dict[str, float]:
    """CV accuracy (at C) with 25%, 50% and 100% of the pool, stratified: reported, to show how
    much more data would still give; the race compares candidates at the pool's size."""
    labels = np.asarray(codes.train_labels)
    train = np.asarray(codes.train_views[0])
    order = np.random.default_rng(seed).permutation(len(labels))
    curve: dict[str, float] = {}
    for share in (0.25, 0.5, 1.0):
        chosen = np.sort(
            np.concatenate(
                [
                    [index for index in order if labels[index] == label][
                        : max(2, round(share * int((labels == label).sum())))
                    ]
                    for label in np.unique(labels)
                ]
            ).astype(np.int64)
        )
        scores = cross_validated_scores(
            "logreg", train[chosen], labels[chosen], grid=(C,), folds=CV_FOLDS, seed=seed
        )
        curve[f"{share:g}"] = float(scores[0]) if not np.isnan(scores[0]) else 0.0
    return curve


def trial_reference(trial_setup: RaceSetup, size: int, frozen: FrozenRace | None) -> float:
    """The best frozen stage at the trial size, fitted on the trials' fit sample and scored on
    their holdout: what a trial's gain is measured against. `frozen`: the race at that size
    (its codes hold the fit sample's and the holdout's), or None to extract them here."""
    fit_samples = trial_setup.splits.samples["train"]
    classes = len(trial_setup.splits.class_names)
    codes = frozen.codes if frozen is not None else race_codes(trial_setup, size)
    best = 0.0
    for stage in race_stages(trial_setup.backbone):
        stage_codes = codes[stage]
        row_of = {sample: row for row, sample in enumerate(stage_codes.train_samples)}
        rows = [row_of[sample] for sample in fit_samples if sample in row_of]
        train = np.asarray(stage_codes.train_views[0])[rows]
        labels = np.asarray(stage_codes.train_labels)[rows]
        C = frozen.chosen_C[stage] if frozen is not None else None
        layer = fit_sklearn_head("logreg", train, labels, num_classes=classes, C=C)
        best = max(best, accuracy(layer, np.asarray(stage_codes.val), stage_codes.val_labels))
    return best


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
    setup: RaceSetup,
    *,
    native_input_size: int,
    frozen: FrozenRace | None,
    race: Sequence[Entry],
    epochs: int,
    race_sample: dict[str, int],
    full_refusal: Callable[[], str] = lambda: "",
) -> tuple[list[Entry], str]:
    """Partial, then (unless `decision.full_trial_plan` says why not) full fine-tuning: each
    TRIAL_EPOCHS on the fit sample (`setup.splits` train) at the trial size, scored on the
    holdout after each epoch, beside the best frozen codes at the trial size on the same images
    (`trial_reference`; see decision.comparable_accuracy). `frozen`: the race at the trial
    size, when it is one of the raced sizes; `race`: the frozen candidates. Returns the trials'
    entries and why full fine-tuning had none ("" when it had one); `full_refusal`: asked only
    when full fine-tuning is worth a trial, why the race's budget leaves it out ("" when it fits:
    budget.RaceLedger.refusal, which then counts it)."""
    size = trial_size(native_input_size)
    reference = trial_reference(setup, size, frozen)
    with tempfile.TemporaryDirectory(prefix="tlvision-trial-") as scratch:
        data = link_dataset(Path(scratch) / "data", setup.splits)
        partial = run_trial(
            setup, data, Path(scratch) / "partial", setup.backbone.partial_freeze_stage,
            size=size, native_input_size=native_input_size, reference=reference,
        )  # fmt: skip
        skipped = full_trial_plan(race, partial, epochs=epochs, race_sample=race_sample)
        skipped = skipped or full_refusal()
        if skipped:
            return [partial], skipped
        full = run_trial(
            setup, data, Path(scratch) / "full", None,
            size=size, native_input_size=native_input_size, reference=reference,
        )  # fmt: skip
    return [partial, full], ""


def run_trial(
    setup: RaceSetup,
    data: Path,
    out_dir: Path,
    freeze_until: str | None,
    *,
    size: int,
    native_input_size: int,
    reference: float,
) -> Entry:
    """One fine-tuning trial at `size` px through `training.fit`, like any run, for a run at
    `native_input_size`: its holdout accuracy by epoch, beside `reference` (the best frozen codes
    at the trial size on the same images)."""
    from tlvision.runs.reader import read_metrics
    from tlvision.training.fit import fit  # training pulls in much; only the trials need it

    label = "fine-tune all" if freeze_until is None else f"fine-tune after {freeze_until}"
    started = time.perf_counter()
    setup.log(f"advise: {TRIAL_EPOCHS}-epoch trial: {label} at {size} px")
    config = TrainConfig(
        data_dir=data, out_dir=out_dir, backbone=setup.backbone.name,
        weights=setup.weights_argument, strategy=finetune.NAME,
        freeze_until=freeze_until or NO_FREEZING, input_size=size, epochs=TRIAL_EPOCHS,
        seed=setup.seed, device=str(setup.device), no_cache=True,
    )  # fmt: skip
    fit(config, log=lambda _: None)
    curve = tuple(float(row["val_acc"]) for row in read_metrics(config.out_dir))
    return Entry(
        name=f"{label} @{native_input_size}",
        strategy=finetune.NAME,
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
