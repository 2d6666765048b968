"""The advisor's answer: the recommendation, the race's standings and its text, as `tlvision
advise` prints it and advice.json keeps it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tlvision.training.strategies.finetune import NAME as FINETUNE


@dataclass(frozen=True)
class Standing:
    """A candidate in the decided race: predicted accuracy on all of train, cost, verdict."""

    name: str
    predicted_accuracy: float
    cost_passes: float  # 224-px image passes the full training run needs
    predicted_seconds: float  # an estimate, from the measured speed
    within_margin: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Advice:
    strategy: str  # linear-probe or finetune
    stage: str | None  # linear-probe: the stage read; finetune: --freeze-until (None: all)
    size: str  # small / large
    similarity: str  # similar / different
    quadrant: str
    input_size: int
    epochs: int
    learning_rate: float
    backbone_lr_mult: float | None  # None: the run's default for its BatchNorm mode
    head: str
    predicted_seconds: float
    margin: float
    standings: list[Standing]
    command: str
    reasons: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["standings"] = [standing.to_json() for standing in self.standings]
        return data

    def to_text(self) -> str:
        size, fit = self.evidence["size"], self.evidence["pretrained_fit"]
        sample = self.evidence["race_sample"]
        lines = [
            f"data: {size['train_images']} train / {size['val_images']} val images"
            + (f" / {size['test_images']} test (not used)" if size["test_images"] else "")
            + f", {size['classes']} classes ({size['per_class_min']}-{size['per_class_max']} "
            f"per class), native short side {size['native_short_side']} px",
            f"ImageNet head confidence {fit['imagenet_confidence']:.3f}; BatchNorm shift by "
            "stage: " + ", ".join(f"{k} {v:.2f}" for k, v in fit["batchnorm_shift"].items()),
            "learning curve of the best frozen candidate (share of the pool: CV accuracy): "
            + ", ".join(f"{k} {v:.3f}" for k, v in self.evidence["learning_curve"].items()),
            "",
            f"quadrant: {self.quadrant}",
            *[f"  - {reason}" for reason in self.reasons],
            "",
            f"race on train/ only: frozen codes by {sample.get('cv', 0)}-image cross-validation; "
            f"trials {sample['fit']} fit / {sample['holdout']} held-out images; "
            f"margin {self.margin:.3f}",
            f"  {'candidate':<28} {'measured':>8} {'predicted':>9} {'cost':>9} {'est. time':>9}",
        ]
        measured = {entry["name"]: entry for entry in self.evidence["race"]}
        for standing in self.standings:
            mark = "*" if standing.within_margin else " "
            lines.append(
                f"{mark} {standing.name:<28} {measured[standing.name]['accuracy']:>8.3f} "
                f"{standing.predicted_accuracy:>9.3f} {standing.cost_passes:>9.0f} "
                f"{standing.predicted_seconds / 60:>7.1f}min"
            )
        if self.evidence["trial_skipped"]:
            lines.append(f"  no fine-tuning trial: {self.evidence['trial_skipped']}")
        if self.evidence.get("full_trial_skipped"):
            lines.append(f"  no full fine-tuning trial: {self.evidence['full_trial_skipped']}")
        if budget := self.evidence.get("race_budget"):
            lines.append(
                f"  race: {budget['spent']:,.0f} of its {budget['budget']:,.0f} image passes"
            )
        lines += [
            "",
            f"recommended: {self.strategy}"
            + (
                f" ({'frozen until' if self.strategy == FINETUNE else 'stage'} {self.stage})"
                if self.stage
                else ""
            )
            + f", input {self.input_size} px, about {self.predicted_seconds / 60:.1f} min here "
            "(estimate)",
            f"run it: {self.command}",
        ]
        return "\n".join(lines)
