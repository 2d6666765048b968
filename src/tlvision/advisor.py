"""The advisor: measure the dataset on the recipe's two axes and recommend a strategy.

The classic recipe's rules of thumb: small and similar to the pretraining data, a linear
classifier on the top CNN codes; large and similar, fine-tune; small and different, a linear
classifier on codes from an earlier stage; large and different, fine-tune the whole network from
its pretrained weights. Nobody tells users which quadrant they are in. This module measures it:

size          images per class and in total, imbalance, native resolution (from file headers)
similarity    three measured signals, each of which falls as data moves away from ImageNet:
              - how confidently the pretrained 1000-class ImageNet head answers (mean top-1
                softmax probability): photos of ImageNet-like things get confident answers,
                digits, textures and scans get a spread-out guess;
              - how far the data's activations sit from the pretrained BatchNorm statistics
                (mean |batch mean - running mean| / running std over channels, per stage): the
                running statistics are ImageNet's, so the distance is a direct measure of shift;
              - how probe accuracy changes from earlier stages to the top: when the top codes beat
                earlier ones, the ImageNet-specific features are useful; when an earlier stage
                wins, they are too specific for this data.
capacity      a learning curve: probe accuracy on growing subsets of train. Still rising at the
              full set means more data or more trainable capacity can pay off (fine-tuning);
              flat means the frozen features already give what the data can.

Everything is measured on a seeded sample, so the same data and seed give the same advice.
"""

from __future__ import annotations

import math
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from tlvision.backbones import (
    BackboneSpec,
    WeightsChoice,
    choose_weights,
    create_model,
    get_backbone,
    preprocessing_for,
)
from tlvision.codes_cache import FeatureCache, default_cache_dir
from tlvision.config import DEFAULT_BACKBONE
from tlvision.data import (
    DatasetSplits,
    ImageDataset,
    build_transforms,
    collate_readable,
    default_num_workers,
    find_splits,
)
from tlvision.errors import UserError
from tlvision.probing import probe
from tlvision.split_codes import extract_split_codes
from tlvision.stages import TOP_LABEL, stage_label
from tlvision.weights import load_state_dict_file

Sample = tuple[Path, int]


@dataclass(frozen=True)
class SizeEvidence:
    train_images: int
    val_images: int
    classes: int
    per_class_min: int
    per_class_median: float
    per_class_max: int
    imbalance_ratio: float  # largest / smallest train class
    native_short_side: int  # median of min(width, height) over a sample of files

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


def measure_size(splits: DatasetSplits, *, seed: int) -> SizeEvidence:
    counts = splits.class_counts("train")
    spread = sample_per_class(splits.samples["train"], 40, seed)
    return SizeEvidence(
        train_images=len(splits.samples["train"]),
        val_images=len(splits.samples["val"]),
        classes=len(splits.class_names),
        per_class_min=min(counts),
        per_class_median=float(statistics.median(counts)),
        per_class_max=max(counts),
        imbalance_ratio=max(counts) / max(1, min(counts)),
        native_short_side=native_short_side([path for path, _ in spread]),
    )


@dataclass(frozen=True)
class PretrainedFit:
    """How the data looks to the pretrained network with its own ImageNet head."""

    imagenet_confidence: float  # mean top-1 softmax probability of the 1000-class head
    batchnorm_shift: dict[str, float]  # stage -> mean over its BN layers of the channel shift
    images: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _BatchNormInputStatistics:
    """Per-channel running sums of every BatchNorm layer's input, gathered by forward hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.squares: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.layers = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None
        }
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in self.layers.items()
        ]

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
            values = inputs[0].detach().float()
            self.sums[name] = self.sums.get(name, 0) + values.sum(dim=(0, 2, 3))
            self.squares[name] = self.squares.get(name, 0) + (values**2).sum(dim=(0, 2, 3))
            self.counts[name] = self.counts.get(name, 0) + values.numel() // values.shape[1]

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def shift(self, name: str) -> float:
        """Mean over channels of |data mean - running mean| / running std."""
        layer = self.layers[name]
        assert layer.running_mean is not None and layer.running_var is not None
        count = self.counts[name]
        mean = self.sums[name].cpu() / count
        running_std = torch.sqrt(layer.running_var.float().cpu() + layer.eps)
        return float(((mean - layer.running_mean.float().cpu()).abs() / running_std).mean())


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
    statistics_hooks = _BatchNormInputStatistics(model)
    loader = DataLoader(
        ImageDataset(samples, [], transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_readable,
    )
    confidences: list[torch.Tensor] = []
    try:
        for images, labels, _unreadable in loader:
            if len(labels) == 0:
                continue
            logits = model(images.contiguous(memory_format=torch.channels_last))
            confidences.append(torch.softmax(logits.float(), dim=1).max(dim=1).values)
    finally:
        statistics_hooks.remove()
    shift_by_stage: dict[str, float] = {}
    for stage in backbone.stages:
        prefixes = tuple(f"{module}." for module in stage.modules) + stage.modules
        names = [
            name
            for name in statistics_hooks.layers
            if name in statistics_hooks.counts and name.startswith(prefixes)
        ]
        if names:
            shift_by_stage[stage.name] = float(np.mean([statistics_hooks.shift(n) for n in names]))
    confidence = float(torch.cat(confidences).mean()) if confidences else math.nan
    return PretrainedFit(
        imagenet_confidence=confidence,
        batchnorm_shift=shift_by_stage,
        images=sum(len(c) for c in confidences),
    )


# Thresholds, each with its reason. Small: too few images to move millions of weights without
# overfitting: under 1000 train images in all, or under 100 per class for the median class.
SMALL_TOTAL = 1000
SMALL_PER_CLASS = 100
# Similar: the ImageNet head answers with a mean top-1 probability of at least 0.35 (measured:
# 0.73 on ants/bees photos, 0.66 on the demo photos), and the top codes are no worse than the
# best earlier stage by more than 0.02 (ImageNet-specific features still help).
SIMILAR_CONFIDENCE = 0.35
TOP_STAGE_MARGIN = 0.02
# ... and the data's activations in the first two stages sit within 0.25 running standard
# deviations of ImageNet's on average (measured: 0.09 ants/bees, 0.12 demo photos, 0.28 clip
# art, 0.37 handwritten digits). Similar is the majority vote of these three signals.
SIMILAR_BATCHNORM_SHIFT = 0.25
# Fine-tuning epochs: at most 10 (on the reference set 3 epochs already reach 0.95; the rest of
# the classic 25 buy little on a CPU), fewer when the time budget says so.
MAX_FINETUNE_EPOCHS = 10
# Learning curve: still gaining this much from the second half of the training data means
# more trainable capacity can pay off.
CURVE_GAIN = 0.02
PROBE_STAGES = ("stage2", "stage3", "stage4", None)
# A fixed regularisation for the probes (codes are standardised first): choosing C by
# cross-validation for every stage took most of the advisor's time for no change in the ranking.
PROBE_C = 1.0
PROBE_TRAIN_PER_CLASS = 150
PROBE_VAL_PER_CLASS = 100


@dataclass(frozen=True)
class Advice:
    strategy: str  # feature-extract, linear-probe or finetune
    stage: str | None  # linear-probe: the stage read; finetune: the last frozen stage or None
    size: str  # small / large
    similarity: str  # similar / different
    quadrant: str
    input_size: int
    epochs: int
    learning_rate: float
    backbone_lr_mult: float
    head: str
    predicted_seconds: float
    command: str
    reasons: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def to_text(self) -> str:
        size = self.evidence["size"]
        fit = self.evidence["pretrained_fit"]
        lines = [
            f"data: {size['train_images']} train / {size['val_images']} val images, "
            f"{size['classes']} classes ({size['per_class_min']}-{size['per_class_max']} per "
            f"class), native short side {size['native_short_side']} px",
            f"ImageNet head confidence {fit['imagenet_confidence']:.3f}; BatchNorm shift by "
            "stage: " + ", ".join(f"{k} {v:.2f}" for k, v in fit["batchnorm_shift"].items()),
            "probe (logreg val accuracy by stage): "
            + ", ".join(f"{k} {v:.3f}" for k, v in self.evidence["probe"].items()),
            "learning curve (share of train: val accuracy): "
            + ", ".join(f"{k} {v:.3f}" for k, v in self.evidence["learning_curve"].items()),
            "",
            f"quadrant: {self.quadrant}",
            *[f"  - {reason}" for reason in self.reasons],
            "",
            f"recommended: {self.strategy}"
            + (f" (stage {self.stage})" if self.stage else "")
            + f", input {self.input_size} px, about {self.predicted_seconds / 60:.1f} min here",
            f"run it: {self.command}",
        ]
        return "\n".join(lines)


def recommended_input_size(native_short_side: int, crop_size: int) -> int:
    """Small native images need not be blown up to 224 px: at most twice native, 64 at least,
    in steps of 32 (conv nets downsample by 32)."""
    if native_short_side <= 0 or native_short_side >= crop_size:
        return crop_size
    doubled = min(crop_size, 2 * native_short_side, max(native_short_side, 128))
    return int(max(64, min(crop_size, 32 * round(doubled / 32))))


@torch.inference_mode()
def seconds_per_image(model: nn.Module, input_size: int, batch_size: int = 16) -> float:
    """Forward time per image at `input_size` on this machine (after a warm-up batch)."""
    model.eval()
    images = torch.randn(batch_size, 3, input_size, input_size).contiguous(
        memory_format=torch.channels_last
    )
    model(images)
    started = time.perf_counter()
    model(images)
    return (time.perf_counter() - started) / batch_size


@dataclass(frozen=True)
class Evidence:
    """What the advisor measured; `decide` turns it into advice without measuring anything."""

    size: SizeEvidence
    pretrained_fit: PretrainedFit
    probe_accuracy: dict[str, float]  # logreg val accuracy by stage label
    probe_sample: dict[str, int]
    learning_curve: dict[str, float]  # share of train -> val accuracy
    seconds_per_image: float  # forward time on this machine at `input_size`
    input_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size.to_json(),
            "pretrained_fit": self.pretrained_fit.to_json(),
            "probe": self.probe_accuracy,
            "probe_sample": self.probe_sample,
            "learning_curve": self.learning_curve,
            "seconds_per_image_forward": self.seconds_per_image,
            "thresholds": {
                "small_total": SMALL_TOTAL,
                "small_per_class": SMALL_PER_CLASS,
                "similar_confidence": SIMILAR_CONFIDENCE,
                "similar_batchnorm_shift": SIMILAR_BATCHNORM_SHIFT,
                "top_stage_margin": TOP_STAGE_MARGIN,
                "curve_gain": CURVE_GAIN,
            },
        }


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
    log: Callable[[str], None] = print,
) -> Advice:
    """Measure `data_dir` and recommend a strategy (see the module docstring).

    `val_split` measures a dataset with only train/ on the same seeded split `train` would make.
    """
    splits = find_splits(data_dir, val_split=val_split, seed=seed)
    backbone = get_backbone(backbone_name)
    weights = choose_weights(backbone, weights_argument)
    if not weights.pretrained or weights.path is None:
        raise_no_weights(backbone.name)
    cache = FeatureCache(cache_dir or default_cache_dir(), log=log) if use_cache else None
    evidence = measure(splits, backbone, weights, seed=seed, cache=cache, log=log)
    decision = decide(evidence, time_budget_minutes=time_budget_minutes)
    command = ["tlvision", "train", str(data_dir), "--strategy", decision.strategy]
    if backbone.name != DEFAULT_BACKBONE:
        command += ["--backbone", backbone.name]
    if weights_argument is not None:
        command += ["--weights", weights_argument]
    if val_split is not None:
        command += ["--val-split", str(val_split)]
    if evidence.input_size != preprocessing_for(backbone, weights).crop_size:
        command += ["--input-size", str(evidence.input_size)]
    if decision.strategy == "linear-probe":
        command += ["--head", decision.head] + (
            ["--stage", decision.stage] if decision.stage else []
        )
    if decision.strategy == "finetune":
        command += ["--epochs", str(decision.epochs), "--lr", str(decision.learning_rate)]
        command += ["--backbone-lr-mult", str(decision.backbone_lr_mult)]
    command += ["--seed", str(seed)]
    return replace(decision, command=shlex.join(command), evidence=evidence.to_json())


def measure(
    splits: DatasetSplits,
    backbone: BackboneSpec,
    weights: WeightsChoice,
    *,
    seed: int,
    cache: FeatureCache | None,
    log: Callable[[str], None],
) -> Evidence:
    """Size, the three similarity signals and the learning curve, on seeded samples."""
    size = measure_size(splits, seed=seed)
    weights_crop = preprocessing_for(backbone, weights).crop_size
    input_size = recommended_input_size(size.native_short_side, weights_crop)
    preprocessing = preprocessing_for(backbone, weights, input_size=input_size)

    # Similarity, signals 1 and 2: the pretrained network with its own ImageNet head.
    imagenet_model = backbone.build()
    assert weights.path is not None
    imagenet_model.load_state_dict(load_state_dict_file(weights.path))
    imagenet_model = imagenet_model.to(memory_format=torch.channels_last)
    val_sample = sample_per_class(splits.samples["val"], 40, seed)
    log(f"advise: measuring {len(val_sample)} val images against the pretrained network")
    pretrained_fit = measure_pretrained_fit(
        imagenet_model, backbone, val_sample, build_transforms(preprocessing)["val"],
        num_workers=default_num_workers(),
    )  # fmt: skip

    # Signal 3 and the learning curve: logistic regression on each stage's codes, one pass.
    sampled = DatasetSplits(
        root=splits.root,
        class_names=splits.class_names,
        samples={
            "train": sample_per_class(splits.samples["train"], PROBE_TRAIN_PER_CLASS, seed),
            "val": sample_per_class(splits.samples["val"], PROBE_VAL_PER_CLASS, seed),
        },
    )
    codes = extract_split_codes(
        create_model(backbone, len(splits.class_names), weights), backbone, sampled,
        weights=weights.label, preprocessing=preprocessing, cache=cache, stages=PROBE_STAGES,
        seed=seed, num_workers=default_num_workers(), log=log,
    )  # fmt: skip
    rows = probe(
        {stage: codes[stage].train_views for stage in PROBE_STAGES},
        {stage: codes[stage].val for stage in PROBE_STAGES},
        codes[None].train_labels, codes[None].val_labels,
        num_classes=len(splits.class_names), heads=("logreg",), seed=seed, C=PROBE_C,
    )  # fmt: skip
    probe_accuracy = {stage_label(row.stage): row.val_acc for row in rows}
    return Evidence(
        size=size,
        pretrained_fit=pretrained_fit,
        probe_accuracy=probe_accuracy,
        probe_sample={k: len(v) for k, v in sampled.samples.items()},
        learning_curve=learning_curve(
            codes[_best_stage(probe_accuracy)], len(splits.class_names), seed
        ),
        seconds_per_image=seconds_per_image(imagenet_model, input_size),
        input_size=input_size,
    )


def _best_stage(probe_accuracy: dict[str, float]) -> str | None:
    """The stage whose codes the probe read best (ties: the top); None for the top."""
    best = max(probe_accuracy, key=lambda name: (probe_accuracy[name], name == TOP_LABEL))
    return None if best == TOP_LABEL else best


def decide(evidence: Evidence, *, time_budget_minutes: float) -> Advice:
    """The recipe's quadrants on the measured axes, then the time budget (no measuring here);
    the returned Advice has no command or evidence yet."""
    size, probe_accuracy = evidence.size, evidence.probe_accuracy
    best_stage = _best_stage(probe_accuracy)
    is_small, is_similar, still_learning, reasons = _axes(evidence)
    epochs, stage, head = 25, None, "linear"
    if is_small and is_similar:
        quadrant, strategy = (
            "small and similar: a linear classifier on the top codes",
            ("feature-extract"),
        )
    elif is_small:
        quadrant = "small and different: a linear classifier on codes from an earlier stage"
        strategy, stage, head = "linear-probe", best_stage, "logreg"
    else:
        quadrant = (
            "large and similar: fine-tune" if is_similar
            else "large and different: fine-tune the whole network from pretrained weights"
        )  # fmt: skip
        strategy = "finetune"
        if not still_learning and max(probe_accuracy.values()) >= 0.97:
            strategy, stage, head = _frozen_route(best_stage)
            reasons.append(
                f"but the frozen codes already reach {max(probe_accuracy.values()):.3f} and the "
                "learning curve is flat: fine-tuning is unlikely to pay for its cost"
            )
    finetune_epoch_seconds = (3 * size.train_images + size.val_images) * evidence.seconds_per_image
    if strategy == "finetune":
        budget_epochs = int(time_budget_minutes * 60 // max(finetune_epoch_seconds, 1e-6))
        epochs = max(0, min(MAX_FINETUNE_EPOCHS, budget_epochs))
        if epochs < 3:
            reasons.append(
                f"fine-tuning needs about {finetune_epoch_seconds:.0f}s an epoch here; the "
                f"{time_budget_minutes:g}-minute budget allows {budget_epochs}: taking the "
                "frozen route instead"
            )
            (strategy, stage, head), epochs = _frozen_route(best_stage), 25
        else:
            reasons.append(f"{epochs} epochs fit the {time_budget_minutes:g}-minute budget")
    frozen_seconds = (size.train_images + size.val_images) * evidence.seconds_per_image + 5
    return Advice(
        strategy=strategy, stage=stage, size="small" if is_small else "large",
        similarity="similar" if is_similar else "different", quadrant=quadrant,
        input_size=evidence.input_size, epochs=epochs, learning_rate=0.01,
        backbone_lr_mult=0.1, head=head,
        predicted_seconds=frozen_seconds if strategy != "finetune"
        else epochs * finetune_epoch_seconds + 10,
        command="", reasons=reasons,
    )  # fmt: skip


def _frozen_route(best_stage: str | None) -> tuple[str, str | None, str]:
    """(strategy, stage, head) of the frozen route reading `best_stage`."""
    if best_stage is None:
        return "feature-extract", None, "linear"
    return "linear-probe", best_stage, "logreg"


def _axes(evidence: Evidence) -> tuple[bool, bool, bool, list[str]]:
    """(small, similar, still learning) from the evidence, and the reasons, as sentences."""
    size, fit, curve = evidence.size, evidence.pretrained_fit, evidence.learning_curve
    probe_accuracy = evidence.probe_accuracy
    best_label = stage_label(_best_stage(probe_accuracy))
    is_small = size.train_images < SMALL_TOTAL or size.per_class_median < SMALL_PER_CLASS
    top_gap = max(probe_accuracy.values()) - probe_accuracy[TOP_LABEL]
    early_shift = float(
        np.mean([fit.batchnorm_shift.get(name, 0.0) for name in ("stem", "stage1")])
    )
    votes = [
        fit.imagenet_confidence >= SIMILAR_CONFIDENCE,
        early_shift <= SIMILAR_BATCHNORM_SHIFT,
        top_gap <= TOP_STAGE_MARGIN,
    ]
    is_similar = sum(votes) >= 2
    still_learning = curve["1"] - curve["0.5"] >= CURVE_GAIN
    reasons = [
        f"{size.train_images} train images, median {size.per_class_median:g} per class: "
        + ("small" if is_small else "large")
        + f" (small means under {SMALL_TOTAL} in all or {SMALL_PER_CLASS} per class)",
        f"ImageNet head confidence {fit.imagenet_confidence:.2f} "
        f"({'>=' if votes[0] else '<'} {SIMILAR_CONFIDENCE}); early BatchNorm shift "
        f"{early_shift:.2f} ({'<=' if votes[1] else '>'} {SIMILAR_BATCHNORM_SHIFT}); top codes "
        f"{top_gap:.3f} below the best stage ({best_label}, "
        f"{'<=' if votes[2] else '>'} {TOP_STAGE_MARGIN}): {sum(votes)} of 3 say similar: "
        + ("similar" if is_similar else "different"),
        f"learning curve gains {curve['1'] - curve['0.5']:+.3f} from half to all of the "
        "sample: " + ("still learning" if still_learning else "flat"),
    ]
    return is_small, is_similar, still_learning, reasons


def raise_no_weights(backbone: str) -> None:

    raise UserError(
        f"advise measures how the data looks to pretrained {backbone} weights; pass "
        "--weights NAME or a file, not none"
    )


def learning_curve(codes: Any, num_classes: int, seed: int) -> dict[str, float]:
    """logreg val accuracy with 25%, 50% and 100% of the (sampled) train codes, stratified."""
    labels = np.asarray(codes.train_labels)
    train = np.asarray(codes.train_views[0])
    generator = np.random.default_rng(seed)
    order = generator.permutation(len(labels))
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
        rows = probe(
            {None: train[chosen]},
            {None: np.asarray(codes.val)},
            labels[chosen],
            codes.val_labels,
            num_classes=num_classes,
            heads=("logreg",),
            seed=seed,
            C=PROBE_C,
        )
        curve[f"{share:g}"] = rows[0].val_acc
    return curve
