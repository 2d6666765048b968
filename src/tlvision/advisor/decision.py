"""The advisor's decision: pure functions from measured evidence to advice (nothing measured here).

The recipe's quadrants (small/large x similar/different to ImageNet) order the candidates and say
which are worth a trial; the race decides. Every candidate's accuracy is measured on train/ alone
(never on val/, which stays for the reported number): the frozen candidates by cross-validation
over the race's pool (up to 1,200 train images), the fine-tuning trials by their gain over the
frozen codes on the same images; the pick is the cheapest candidate within max(0.02, one standard
error) of the best prediction. Cost is counted in
"image passes at 224 px" from the data's counts and the input size, so the pick never depends on
how busy the machine was; only the time estimate does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tlvision.advisor.advice import Advice, Standing
from tlvision.models.backbone import TOP_LABEL
from tlvision.models.weights import IMAGENET_LIKE_SHIFT
from tlvision.training.strategies.finetune import NAME as FINETUNE
from tlvision.training.strategy import FROZEN_ROUTE_EPOCHS

# Small: too few images to move millions of weights without overfitting: under 1000 train images
# in all, or under 100 per class for the median class.
SMALL_TOTAL = 1000
SMALL_PER_CLASS = 100
# Similar: the ImageNet head answers with a mean top-1 probability of at least 0.35 (measured:
# 0.73 on ants/bees photos, 0.66 on the demo photos, 0.44 digits, 0.50 clip art) ...
SIMILAR_CONFIDENCE = 0.35
# ... the data's activations in the early stages (the first two: stem and stage1) sit within
# IMAGENET_LIKE_SHIFT running standard deviations of ImageNet's (measured: 0.09 ants/bees,
# 0.12 demo photos, 0.28 clip art, 0.37 digits) ...
SIMILAR_BATCHNORM_SHIFT = IMAGENET_LIKE_SHIFT
# ... and the top codes are no worse than the best earlier stage by more than 0.02.
TOP_STAGE_MARGIN = 0.02
# The pick: the cheapest candidate within this much (or one standard error) of the best.
MARGIN = 0.02
# Fine-tuning epochs: at most 5 (3 already reach 0.95 on the reference set; the race's trials
# run this many), fewer when the time budget says so, and not at all under 3.
MAX_FINETUNE_EPOCHS = 5
MIN_FINETUNE_EPOCHS = 3
# Relative cost of one train image in an epoch: forward 1, backward through everything about 2
# more; a partial fine-tune backpropagates through the later stages only (about half of it).
FULL_BACKWARD = 3.0
PARTIAL_BACKWARD = 2.0
# Seconds per image pass at 224 px used for the time budget. Nominal, by kind of device, so that
# the advice is the same on a busy machine (the printed estimate uses the measured speed).
NOMINAL_SECONDS_PER_PASS = {"cpu": 1 / 90, "cuda": 1 / 3000, "mps": 1 / 600}
REFERENCE_SIZE = 224


@dataclass(frozen=True)
class SizeEvidence:
    train_images: int
    val_images: int
    test_images: int  # reported only: a test/ split never enters a decision
    classes: int
    per_class_min: int
    per_class_median: float
    per_class_max: int
    imbalance_ratio: float  # largest / smallest train class
    native_short_side: int  # median of min(width, height) over a sample of files

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PretrainedFit:
    """How the data looks to the pretrained network with its own ImageNet head."""

    imagenet_confidence: float  # mean top-1 softmax probability of the 1000-class head
    batchnorm_shift: dict[str, float]  # stage -> mean over its BN layers of the channel shift
    images: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Entry:
    """One candidate of the race, as measured on train/ alone.

    Frozen candidates: `accuracy` in cross-validation over the race's pool (C chosen as the
    run chooses it). Trials
    (fine-tuning): `accuracy` after the last of a few epochs on a smaller sample at a reduced
    size, scored on a held-out part of the pool, `epoch_accuracy` after each, and
    `frozen_reference` the best frozen codes' accuracy at that size on the same images: the
    trial's gain over it is what carries over.
    """

    name: str
    strategy: str  # linear-probe (frozen codes, logistic regression) or finetune
    stage: str | None  # linear-probe: the stage read (None: top); finetune: --freeze-until
    input_size: int  # of the full run
    accuracy: float
    measured: str  # what was run to get `accuracy`
    seconds: float  # what measuring it took (not used to decide)
    epoch_accuracy: tuple[float, ...] = ()
    frozen_reference: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Evidence:
    """What the advisor measured; `decide` turns it into advice without measuring anything."""

    size: SizeEvidence
    pretrained_fit: PretrainedFit
    probe_accuracy: dict[str, float]  # race sample, native-based size: holdout acc by stage
    race: tuple[Entry, ...]
    race_sample: dict[str, int]  # cv: the pool; fit, holdout: the trials' (all from train/)
    learning_curve: dict[str, float]  # share of the pool -> CV accuracy (reported only)
    trial_skipped: str  # why no fine-tuning trial ran ("" when it ran)
    device_kind: str  # cpu, cuda or mps: the nominal speed for the time budget
    seconds_per_pass: float  # measured forward time per 224-px image pass (estimates only)
    native_input_size: int
    full_trial_skipped: str = ""  # why full fine-tuning had no trial after the partial one
    # the backbone's stages by role (BackboneSpec): the first two, and those raced, in order
    early_stages: tuple[str, ...] = ("stem", "stage1")
    race_stages: tuple[str, ...] = ("stage2", "stage3")
    # the race's budget in image passes and what it spent (advisor.budget); {} before it had one
    race_budget: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evidence:
        """Evidence as `to_json` wrote it (advice.json): decide again without measuring."""
        return cls(
            size=SizeEvidence(**data["size"]),
            pretrained_fit=PretrainedFit(**data["pretrained_fit"]),
            probe_accuracy=dict(data["probe"]),
            race=tuple(
                Entry(**{**entry, "epoch_accuracy": tuple(entry["epoch_accuracy"])})
                for entry in data["race"]
            ),
            race_sample=dict(data["race_sample"]),
            learning_curve=dict(data["learning_curve"]),
            trial_skipped=data["trial_skipped"],
            device_kind=data["device_kind"],
            seconds_per_pass=data["seconds_per_pass_224"],
            native_input_size=data["native_input_size"],
            full_trial_skipped=data.get("full_trial_skipped", ""),
            # advice.json from before stages were declared by role: the five-stage names
            early_stages=tuple(data.get("early_stages", ("stem", "stage1"))),
            race_stages=tuple(data.get("race_stages", ("stage2", "stage3"))),
            race_budget=dict(data.get("race_budget", {})),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size.to_json(),
            "pretrained_fit": self.pretrained_fit.to_json(),
            "probe": self.probe_accuracy,
            "race": [entry.to_json() for entry in self.race],
            "race_sample": self.race_sample,
            "learning_curve": self.learning_curve,
            "trial_skipped": self.trial_skipped,
            "full_trial_skipped": self.full_trial_skipped,
            "device_kind": self.device_kind,
            "seconds_per_pass_224": self.seconds_per_pass,
            "native_input_size": self.native_input_size,
            "early_stages": list(self.early_stages),
            "race_stages": list(self.race_stages),
            "race_budget": self.race_budget,
            "thresholds": {
                "small_total": SMALL_TOTAL,
                "small_per_class": SMALL_PER_CLASS,
                "similar_confidence": SIMILAR_CONFIDENCE,
                "similar_batchnorm_shift": SIMILAR_BATCHNORM_SHIFT,
                "top_stage_margin": TOP_STAGE_MARGIN,
                "margin": MARGIN,
            },
        }


def axes(
    size: SizeEvidence,
    fit: PretrainedFit,
    probe_accuracy: dict[str, float],
    early_stages: Sequence[str] = ("stem", "stage1"),
) -> tuple[bool, bool, list[str]]:
    """(small, similar) on the recipe's two axes, and the reasons, as sentences."""
    is_small = size.train_images < SMALL_TOTAL or size.per_class_median < SMALL_PER_CLASS
    best_label = max(probe_accuracy, key=lambda name: (probe_accuracy[name], name == TOP_LABEL))
    top_gap = probe_accuracy[best_label] - probe_accuracy[TOP_LABEL]
    shifts = [fit.batchnorm_shift.get(name, 0.0) for name in early_stages]
    early_shift = sum(shifts) / len(shifts)
    votes = [
        fit.imagenet_confidence >= SIMILAR_CONFIDENCE,
        early_shift <= SIMILAR_BATCHNORM_SHIFT,
        top_gap <= TOP_STAGE_MARGIN,
    ]
    is_similar = sum(votes) >= 2
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
    ]
    return is_small, is_similar, reasons


def quadrant_of(is_small: bool, is_similar: bool) -> str:
    return {
        (True, True): "small and similar: a linear classifier on the top codes",
        (True, False): "small and different: a linear classifier on codes from an earlier stage",
        (False, True): "large and similar: fine-tune",
        (False, False): "large and different: fine-tune the whole network",
    }[(is_small, is_similar)]


def finetune_epochs(size: SizeEvidence, input_size: int, device_kind: str, budget: float) -> int:
    """Epochs of full fine-tuning the budget (minutes) allows at the device's nominal speed."""
    per_epoch = _finetune_epoch_passes(size, input_size, FULL_BACKWARD)
    seconds = per_epoch * NOMINAL_SECONDS_PER_PASS.get(device_kind, NOMINAL_SECONDS_PER_PASS["cpu"])
    return min(MAX_FINETUNE_EPOCHS, int(budget * 60 // max(seconds, 1e-9)))


def trial_plan(
    size: SizeEvidence,
    fit: PretrainedFit,
    probe_accuracy: dict[str, float],
    *,
    native_input_size: int,
    device_kind: str,
    time_budget_minutes: float,
    early_stages: Sequence[str] = ("stem", "stage1"),
) -> str:
    """Why no fine-tuning trial is worth running ("" when one is): fine-tuning costs far more
    than 10x the frozen route, so it is only recommended after a measured trial."""
    is_small, is_similar, _ = axes(size, fit, probe_accuracy, early_stages)
    best = max(probe_accuracy.values())
    if is_small and is_similar:
        return "small and similar: the recipe's frozen top codes, no fine-tuning trial needed"
    if best >= 1 - MARGIN:
        return f"the frozen codes already reach {best:.3f}: nothing left to gain beyond the margin"
    epochs = finetune_epochs(size, native_input_size, device_kind, time_budget_minutes)
    if epochs < MIN_FINETUNE_EPOCHS:
        return (
            f"the {time_budget_minutes:g}-minute budget allows {epochs} fine-tuning epochs "
            f"(under {MIN_FINETUNE_EPOCHS}) at a nominal {device_kind} speed"
        )
    return ""


def _finetune_epoch_passes(size: SizeEvidence, input_size: int, backward: float) -> float:
    scale = (input_size / REFERENCE_SIZE) ** 2
    return (backward * size.train_images + size.val_images) * scale


def cost_passes(entry: Entry, size: SizeEvidence, epochs: int) -> float:
    """224-px image passes the full run needs: the frozen routes read every image once."""
    if entry.strategy != FINETUNE:
        scale = (entry.input_size / REFERENCE_SIZE) ** 2
        return (size.train_images + size.val_images) * scale
    backward = FULL_BACKWARD if entry.stage is None else PARTIAL_BACKWARD
    return epochs * _finetune_epoch_passes(size, entry.input_size, backward)


def scored_images(race_sample: dict[str, int]) -> int:
    """How many train images the frozen candidates were scored on: the CV pool (every image is
    scored once), or the holdout in evidence recorded before the race cross-validated."""
    return race_sample.get("cv", race_sample["holdout"])


def standard_error(accuracy: float, images: int) -> float:
    """Of an accuracy on `images` held-out images, with one success and one failure added
    (Laplace) so that a perfect score on a few images does not claim zero error."""
    smoothed = (accuracy * images + 1) / (images + 2)
    return math.sqrt(smoothed * (1 - smoothed) / max(1, images))


def rank(entry: Entry, is_similar: bool, race_stages: Sequence[str]) -> int:
    """The rules of thumb's order among candidates of equal cost and equal predicted accuracy
    (equal cost, different accuracy: the better one; the rules only break exact ties): similar
    data, the top codes first; different data, earlier stages first (latest first)."""
    if entry.strategy == FINETUNE:
        return 0
    later_first = tuple(reversed(race_stages))
    order = (TOP_LABEL, *later_first) if is_similar else (*later_first, TOP_LABEL)
    label = TOP_LABEL if entry.stage is None else entry.stage
    return order.index(label) if label in order else len(order)


def extrapolate_epochs(epoch_accuracy: Sequence[float], epochs: int) -> float:
    """A trial's accuracy after `epochs` instead of its few: the error falls as a power of the
    epochs, with the exponent its last two epochs showed (0 to 1: no faster than 1/epochs)."""
    done = len(epoch_accuracy)
    last = epoch_accuracy[-1]
    if done < 2 or epochs <= done:
        return last
    previous_error, last_error = 1 - epoch_accuracy[-2], 1 - last
    if last_error <= 0 or previous_error <= last_error:
        return last
    exponent = min(1.0, math.log(previous_error / last_error) / math.log(done / (done - 1)))
    return 1 - last_error * (done / epochs) ** exponent


def trial_accuracy(epoch_accuracy: Sequence[float], epochs: int) -> float:
    """A trial's accuracy after `epochs`: as measured when it ran that many, else
    extrapolated from its last epochs."""
    if epochs <= len(epoch_accuracy):
        return epoch_accuracy[max(1, epochs) - 1]
    return extrapolate_epochs(epoch_accuracy, epochs)


def race_margin(best: float, race_sample: dict[str, int]) -> float:
    """How far below the best predicted accuracy a candidate still counts as as good."""
    return max(MARGIN, standard_error(best, scored_images(race_sample)))


def full_trial_plan(
    race: Sequence[Entry], partial: Entry, *, epochs: int, race_sample: dict[str, int]
) -> str:
    """Why full fine-tuning gets no trial after the partial one ("" when it does). Full trains
    every stage where partial trains the later ones, on the same images; on the nine sets
    measured it never beat partial on val (benchmarks/RESULTS.md, advisor validation), so it is
    only tried when partial fine-tuning comes within the margin of the best frozen candidate:
    when fine-tuning looks worth more of the network at all."""
    frozen = [entry for entry in race if entry.strategy != FINETUNE]
    best = max(entry.accuracy for entry in frozen)
    predicted = comparable_accuracy(partial, best_frozen_at(frozen, partial.input_size), epochs)
    margin = race_margin(best, race_sample)
    if predicted >= best - margin:
        return ""
    return (
        f"the partial trial predicts {predicted:.3f}, more than {margin:.3f} below the best "
        f"frozen candidate ({best:.3f}); training every stage on the same images is not raced"
    )


def best_frozen_at(race: Sequence[Entry], input_size: int) -> float:
    """The best frozen candidate's accuracy at `input_size` (any size when none was raced
    there): what a fine-tuning run at that size starts from. Measured on shapes (tuning set):
    adding a 64-px trial's gain to the 224-px top codes rated fine-tuning at 64 px within the
    margin of the best (0.939 against 0.948); on val it scored 0.920 against 0.967."""
    frozen = [entry for entry in race if entry.strategy != FINETUNE]
    same_size = [entry.accuracy for entry in frozen if entry.input_size == input_size]
    return max(same_size or [entry.accuracy for entry in frozen])


def comparable_accuracy(entry: Entry, best_frozen: float, epochs: int) -> float:
    """On the frozen candidates' footing (CV over the pool): a trial's gain over the frozen
    codes on its own images, after `epochs`, added to the best frozen candidate at the run's
    input size (`best_frozen`)."""
    if entry.strategy != FINETUNE or entry.frozen_reference is None:
        return entry.accuracy
    trial = trial_accuracy(entry.epoch_accuracy or (entry.accuracy,), epochs)
    return min(1.0, max(0.0, best_frozen + trial - entry.frozen_reference))


def raced(
    evidence: Evidence, epochs: int, time_budget_minutes: float, reasons: list[str]
) -> list[Entry]:
    """The candidates that race: fine-tuning's only when the budget allows enough epochs (and
    a reason says so when it does not)."""
    frozen = [entry for entry in evidence.race if entry.strategy != FINETUNE]
    if epochs >= MIN_FINETUNE_EPOCHS:
        return list(evidence.race)
    if len(frozen) < len(evidence.race):
        reasons.append(
            f"fine-tuning left out: the {time_budget_minutes:g}-minute budget allows {epochs} "
            f"epochs (under {MIN_FINETUNE_EPOCHS}) at a nominal {evidence.device_kind} speed"
        )
    return frozen


def decide(evidence: Evidence, *, time_budget_minutes: float) -> Advice:
    """The race's cheapest candidate within the margin of the best (no measuring here); the
    returned Advice has no command or evidence yet."""
    size = evidence.size
    is_small, is_similar, reasons = axes(
        size, evidence.pretrained_fit, evidence.probe_accuracy, evidence.early_stages
    )
    epochs = finetune_epochs(
        size, evidence.native_input_size, evidence.device_kind, time_budget_minutes
    )
    race = raced(evidence, epochs, time_budget_minutes, reasons)
    predicted = {
        entry.name: comparable_accuracy(entry, best_frozen_at(race, entry.input_size), epochs)
        for entry in race
    }
    best = max(predicted.values())
    margin = race_margin(best, evidence.race_sample)
    costs = {entry.name: cost_passes(entry, size, epochs) for entry in race}
    order = sorted(
        race,
        key=lambda e: (
            costs[e.name],
            -predicted[e.name],
            rank(e, is_similar, evidence.race_stages),
        ),
    )
    standings = [
        Standing(
            name=entry.name,
            predicted_accuracy=predicted[entry.name],
            cost_passes=costs[entry.name],
            predicted_seconds=costs[entry.name] * evidence.seconds_per_pass,
            within_margin=predicted[entry.name] >= best - margin,
        )
        for entry in order
    ]
    chosen_name = next(standing.name for standing in standings if standing.within_margin)
    chosen = next(entry for entry in race if entry.name == chosen_name)
    best_name = max(predicted, key=lambda name: (predicted[name], -costs[name]))
    reasons.append(
        f"race: best predicted {best_name} {best:.3f}; the cheapest within {margin:.3f} of it is "
        f"{chosen.name} ({predicted[chosen.name]:.3f}, {costs[chosen.name]:.0f} image passes)"
    )
    if evidence.trial_skipped or evidence.full_trial_skipped:
        which = "fine-tuning" if evidence.trial_skipped else "full fine-tuning"
        reasons.append(
            f"{which} not raced: {evidence.trial_skipped or evidence.full_trial_skipped}"
        )
    return Advice(
        strategy=chosen.strategy, stage=chosen.stage, size="small" if is_small else "large",
        similarity="similar" if is_similar else "different",
        quadrant=quadrant_of(is_small, is_similar), input_size=chosen.input_size,
        epochs=epochs if chosen.strategy == FINETUNE else FROZEN_ROUTE_EPOCHS, learning_rate=0.01,
        backbone_lr_mult=None, head="logreg" if chosen.strategy != FINETUNE else "linear",
        predicted_seconds=costs[chosen.name] * evidence.seconds_per_pass, margin=margin,
        standings=standings, command="", reasons=reasons,
    )  # fmt: skip
