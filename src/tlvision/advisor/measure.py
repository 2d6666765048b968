"""The advisor: measure the dataset, race the candidate strategies on train/, recommend one.

The classic recipe's rules of thumb: small and similar to the pretraining data, a linear
classifier on the top CNN codes; large and similar, fine-tune; small and different, a linear
classifier on codes from an earlier stage; large and different, fine-tune the whole network.
This module measures where the data sits (decision.py says what each signal means):

size          images per class and in total, imbalance, native resolution (from file headers)
similarity    the pretrained ImageNet head's confidence, the BatchNorm statistics' shift, and
              whether the top codes read better than earlier stages
race          every candidate measured on train/ alone (race.py): frozen codes of stage2, stage3
              and the top at the native-based and the weights' own input size, scored by
              cross-validation over up to 1,200 train images with C chosen as the run chooses
              it, and, unless the rules of thumb and the numbers make it pointless, fine-tuning
              trials (partial after stage2; full only when partial comes within the margin) on
              a part of that pool, scored on another part beside the frozen codes on the same
              images.

val/ is never read: it stays for the number the training run reports. A test/ split is counted and
reported, never used. Everything is measured on seeded samples with fixed counts, and the decision
(decision.decide, pure) uses no timing, so the same data and seed give the same advice on a busy
machine; only the time estimate changes.
"""

from __future__ import annotations

import math
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from tlvision.advisor.budget import RaceLedger, scale, trial_passes
from tlvision.advisor.decision import (
    Advice,
    Evidence,
    PretrainedFit,
    SizeEvidence,
    decide,
    finetune_epochs,
    trial_plan,
)
from tlvision.advisor.race import (
    TRIAL_EPOCHS,
    RaceSetup,
    finetune_trials,
    frozen_entries,
    learning_curve,
    race_pool,
    race_split,
    sample_per_class,
    trial_size,
)
from tlvision.codes.cache import FeatureCache, default_cache_dir
from tlvision.compute.devices import resolve_device
from tlvision.config import DEFAULT_BACKBONE, NO_FREEZING
from tlvision.data.layouts import DatasetSplits, find_splits, image_files
from tlvision.data.loading import ImageDataset, collate_readable, default_num_workers
from tlvision.data.transforms import build_transforms
from tlvision.errors import UserError
from tlvision.models.backbone import BackboneSpec, get_backbone
from tlvision.models.network import choose_weights, preprocessing_for
from tlvision.models.stages import stage_label
from tlvision.models.weights import load_state_dict_file
from tlvision.training.batchnorm import BatchNormInputStatistics
from tlvision.training.strategies import finetune, linear_probe

__all__ = ["Advice", "Evidence", "advise", "decide", "measure", "recommended_input_size"]

Sample = tuple[Path, int]


def native_short_side(paths: Sequence[Path], *, limit: int = 400) -> int:
    """Median short side, read from headers only (PIL opens lazily): cheap even for large sets."""
    sides = []
    for path in paths[:limit]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    return int(statistics.median(sides)) if sides else 0


def measure_size(splits: DatasetSplits, *, seed: int) -> SizeEvidence:
    counts = splits.class_counts("train")
    spread = sample_per_class(splits.samples["train"], 40, seed)
    test_dir = splits.root / "test"
    return SizeEvidence(
        train_images=len(splits.samples["train"]),
        val_images=len(splits.samples["val"]),
        test_images=len(image_files(test_dir)[0]) if test_dir.is_dir() else 0,
        classes=len(splits.class_names),
        per_class_min=min(counts),
        per_class_median=float(statistics.median(counts)),
        per_class_max=max(counts),
        imbalance_ratio=max(counts) / max(1, min(counts)),
        native_short_side=native_short_side([path for path, _ in spread]),
    )


@torch.inference_mode()
def measure_pretrained_fit(
    model: nn.Module,
    backbone: BackboneSpec,
    samples: Sequence[Sample],
    transform: Any,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
) -> PretrainedFit:
    """One pass of the pretrained network, with its original ImageNet head, over `samples`."""
    model.eval()
    statistics_hooks = BatchNormInputStatistics(model)
    loader = DataLoader(
        ImageDataset(samples, [], transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_readable,
    )
    confidences: list[torch.Tensor] = []
    device = next(model.parameters()).device
    try:
        for images, labels, _unreadable in loader:
            if len(labels) == 0:
                continue
            logits = model(images.to(device).contiguous(memory_format=torch.channels_last))
            confidences.append(torch.softmax(logits.float(), dim=1).max(dim=1).values)
    finally:
        statistics_hooks.remove()
    shift_by_stage = statistics_hooks.shift_by_stage(backbone)
    confidence = float(torch.cat(confidences).mean()) if confidences else math.nan
    return PretrainedFit(
        imagenet_confidence=confidence,
        batchnorm_shift=shift_by_stage,
        images=sum(len(c) for c in confidences),
    )


def recommended_input_size(native_short_side: int, crop_size: int) -> int:
    """Small native images need not be blown up to 224 px: at most twice native, 64 at least,
    in steps of 32 (conv nets downsample by 32)."""
    if native_short_side <= 0 or native_short_side >= crop_size:
        return crop_size
    doubled = min(crop_size, 2 * native_short_side, max(native_short_side, 128))
    return int(max(64, min(crop_size, 32 * round(doubled / 32))))


@torch.inference_mode()
def seconds_per_image(model: nn.Module, input_size: int, batch_size: int = 16) -> float:
    """Forward time per image at `input_size` on the model's device (after a warm-up batch):
    for the time estimate only, never for the decision."""
    model.eval()
    device = next(model.parameters()).device
    images = torch.randn(batch_size, 3, input_size, input_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    model(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    model(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / batch_size


MULTI_LABEL_ADVICE = (
    "{data_dir}: multi-label labels (CSV tables); the advisor races routes by single-label "
    "accuracy and does not race multi-label data. Train the route that measured best by mAP "
    "(README, 'More than one label'): tlvision train {data_dir} --strategy linear-probe --head "
    "logreg"
)


def advise(
    data_dir: Path,
    *,
    backbone_name: str = DEFAULT_BACKBONE,
    weights_argument: str | None = None,
    seed: int = 0,
    time_budget_minutes: float = 30.0,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    val_split: float | None = None,
    device_name: str = "auto",
    log: Callable[[str], None] = print,
) -> Advice:
    """Measure `data_dir`, race the candidates on train/ and recommend one (module docstring).

    `val_split` measures a dataset with only train/ on the same seeded split `train` would make
    (the race then holds out part of what is left as train). `device_name`: where the run will
    train, so the trials and the time estimate are measured there.
    """
    splits = find_splits(data_dir, val_split=val_split, seed=seed)
    if splits.multi_label:
        raise UserError(MULTI_LABEL_ADVICE.format(data_dir=data_dir))
    backbone = get_backbone(backbone_name)
    weights = choose_weights(backbone, weights_argument)
    if not weights.pretrained or weights.path is None:
        raise_no_weights(backbone.name)
    cache = FeatureCache(cache_dir or default_cache_dir(), log=log) if use_cache else None
    setup = RaceSetup(
        splits=splits, backbone=backbone, weights=weights, weights_argument=weights_argument,
        cache=cache, device=resolve_device(device_name), seed=seed, log=log,
    )  # fmt: skip
    evidence = measure(setup, time_budget_minutes=time_budget_minutes)
    decision = decide(evidence, time_budget_minutes=time_budget_minutes)
    command = advice_command(decision, setup, data_dir, val_split, device_name)
    return replace(decision, command=shlex.join(command), evidence=evidence.to_json())


def advice_command(
    decision: Advice,
    setup: RaceSetup,
    data_dir: Path,
    val_split: float | None,
    device_name: str,
) -> list[str]:
    """The `tlvision train` line that runs the advice."""
    backbone, weights, weights_argument = setup.backbone, setup.weights, setup.weights_argument
    command = ["tlvision", "train", str(data_dir), "--strategy", decision.strategy]
    if backbone.name != DEFAULT_BACKBONE:
        command += ["--backbone", backbone.name]
    if weights_argument is not None:
        command += ["--weights", weights_argument]
    if val_split is not None:
        command += ["--val-split", str(val_split)]
    if decision.input_size != preprocessing_for(backbone, weights).crop_size:
        command += ["--input-size", str(decision.input_size)]
    if decision.strategy == linear_probe.NAME:
        command += ["--head", decision.head] + (
            ["--stage", decision.stage] if decision.stage else []
        )
    if decision.strategy == finetune.NAME:
        command += ["--epochs", str(decision.epochs), "--lr", str(decision.learning_rate)]
        if decision.backbone_lr_mult is not None:
            command += ["--backbone-lr-mult", str(decision.backbone_lr_mult)]
        # None trains every stage; the run's own default keeps the early stages frozen
        command += ["--freeze-until", decision.stage or NO_FREEZING]
    if device_name != "auto":
        command += ["--device", device_name]
    return [*command, "--seed", str(setup.seed)]


def measure(setup: RaceSetup, *, time_budget_minutes: float) -> Evidence:
    """Size, the similarity signals and the race, all on train/ (seeded samples)."""
    splits, backbone, weights = setup.splits, setup.backbone, setup.weights
    size = measure_size(splits, seed=setup.seed)
    weights_crop = preprocessing_for(backbone, weights).crop_size
    native = recommended_input_size(size.native_short_side, weights_crop)
    pool = race_pool(splits.samples["train"], setup.seed)
    fit_sample, holdout = race_split(pool, setup.seed)

    def on(train: list[Sample]) -> RaceSetup:
        samples = {"train": train, "val": holdout}  # the holdout is part of the pool
        return replace(setup, splits=replace(splits, samples=samples))

    ledger = RaceLedger()
    pretrained_fit, seconds_per_pass = measure_similarity(setup, holdout, native)
    ledger.charge(len(holdout) * scale(native))
    frozen = {size: frozen_entries(on(pool), size) for size in sorted({native, weights_crop})}
    ledger.charge(sum(len(pool) * scale(size) for size in frozen))
    race = [entry for result in frozen.values() for entry in result.entries]
    probe_accuracy = {stage_label(e.stage): e.accuracy for e in frozen[native].entries}
    best = max(race, key=lambda entry: (entry.accuracy, -entry.input_size))
    curve = learning_curve(
        frozen[best.input_size].codes[best.stage],
        frozen[best.input_size].chosen_C[best.stage],
        setup.seed,
    )
    skipped = trial_plan(
        size, pretrained_fit, probe_accuracy, native_input_size=native,
        device_kind=setup.device.type, time_budget_minutes=time_budget_minutes,
        early_stages=backbone.early_stages,
    ) or _trials_refusal(ledger, len(fit_sample), len(holdout), native, frozen)  # fmt: skip
    race_sample = {"cv": len(pool), "fit": len(fit_sample), "holdout": len(holdout)}
    full_skipped = ""
    if not skipped:
        full_cost = trial_passes(
            len(fit_sample), len(holdout), trial_size(native), TRIAL_EPOCHS, full=True
        )
        trials, full_skipped = finetune_trials(
            on(fit_sample), native_input_size=native, frozen=frozen.get(trial_size(native)),
            race=race, race_sample=race_sample,
            epochs=finetune_epochs(size, native, setup.device.type, time_budget_minutes),
            full_refusal=lambda: ledger.refusal("the full fine-tuning trial", full_cost),
        )  # fmt: skip
        race += trials
    return Evidence(
        size=size, pretrained_fit=pretrained_fit, probe_accuracy=probe_accuracy,
        race=tuple(race),
        race_sample=race_sample, full_trial_skipped=full_skipped,
        learning_curve=curve, trial_skipped=skipped, device_kind=setup.device.type,
        seconds_per_pass=seconds_per_pass, native_input_size=native,
        early_stages=backbone.early_stages, race_stages=backbone.race_stages,
        race_budget={"budget": ledger.budget, "spent": ledger.spent},
    )  # fmt: skip


def _trials_refusal(
    ledger: RaceLedger, fit: int, holdout: int, native: int, frozen: dict[int, Any]
) -> str:
    """Why the budget leaves the fine-tuning trials out ("" when the partial one fits): the
    partial trial, and the frozen codes at the trial size when that size was not raced."""
    size = trial_size(native)
    reference = 0.0 if size in frozen else (fit + holdout) * scale(size)
    cost = reference + trial_passes(fit, holdout, size, TRIAL_EPOCHS, False)
    return ledger.refusal("the fine-tuning trials", cost)


def measure_similarity(
    setup: RaceSetup, holdout: list[Sample], input_size: int
) -> tuple[PretrainedFit, float]:
    """Similarity, signals 1 and 2, from the pretrained network with its own ImageNet head;
    and its speed per 224-px image (for the time estimate only)."""
    backbone, weights = setup.backbone, setup.weights
    imagenet_model = backbone.build()
    assert weights.path is not None
    imagenet_model.load_state_dict(load_state_dict_file(weights.path))
    imagenet_model = imagenet_model.to(setup.device).to(memory_format=torch.channels_last)
    setup.log(f"advise: {len(holdout)} held-out train images against the pretrained network")
    preprocessing = preprocessing_for(backbone, weights, input_size=input_size)
    pretrained_fit = measure_pretrained_fit(
        imagenet_model, backbone, holdout, build_transforms(preprocessing)["val"],
        num_workers=default_num_workers(),
    )  # fmt: skip
    return pretrained_fit, seconds_per_image(imagenet_model, 224)


def raise_no_weights(backbone: str) -> None:
    raise UserError(
        f"advise measures how the data looks to pretrained {backbone} weights; pass "
        "--weights NAME or a file, not none"
    )
