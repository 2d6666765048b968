"""The options of a training run, in one place: the CLI's flags and the Python API's keyword
arguments take their defaults and choices from here, and `validate_config` checks them.

Kept free of torch so that `import tlvision` (and the API signatures built on these defaults)
stays fast; training.py re-exports TrainConfig where it always was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from tlvision.errors import UserError

DEFAULT_BACKBONE = "mobilenet_v2"
STRATEGIES = ("feature-extract", "linear-probe", "finetune")
# The frozen routes: the body never trains, so its codes are computed once and cached.
CODES_STRATEGIES = ("feature-extract", "linear-probe")
HEADS = ("linear", "logreg", "svm")  # linear: softmax layer (torch); logreg, svm: scikit-learn
SCHEDULES = ("step", "cosine", "onecycle", "constant")
PRECISIONS = ("auto", "32", "bf16", "16")  # auto: bf16 on a CUDA GPU that has it, else 32
RUNTIMES = ("auto", "torch", "onnx")  # forward-only runtimes; see runtime.choose_runtime

# `--strategy finetune`'s defaults, the measured best (benchmarks/RESULTS.md, "Fine-tuning
# fast"): the stages up to stage2 stay frozen and their output is computed once for the centre
# crop and FINETUNE_VIEWS augmented views of each train image, so an epoch runs only stage3
# onwards; the head starts from one trained on the top codes of those views. `--freeze-until
# none` trains every stage.
FINETUNE_FREEZE_UNTIL = "stage2"
FINETUNE_VIEWS = 8
FINETUNE_EPOCHS = 10
EPOCHS = 25  # the frozen routes' epochs: the classic recipe's
# finetune's BatchNorm modes (batchnorm.py) and --backbone-lr-mult's default in each: with
# ImageNet's statistics kept, the default rate was unstable and a 3x lower one was not.
BATCHNORM_MODES = ("train", "frozen")
BACKBONE_LR_MULT = {"train": 0.1, "frozen": 0.03}
NO_FREEZING = "none"


# TrainConfig fields whose command-line option (and API keyword) has another name.
OPTION_OF_FIELD = {
    "data_dir": "data", "out_dir": "out", "learning_rate": "lr", "num_workers": "workers",
}  # fmt: skip
FIELD_OF_OPTION = {option: field for field, option in OPTION_OF_FIELD.items()}


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path
    out_dir: Path
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None  # a registry name (default: the backbone's first), a path, "none"
    strategy: str = "feature-extract"
    freeze_until: str | None = None  # finetune: None is FINETUNE_FREEZE_UNTIL; "none": no stage
    input_size: int | None = None  # crop side in pixels; None: the weights' own (224 for most)
    epochs: int | None = None  # None: FINETUNE_EPOCHS for finetune, EPOCHS for the frozen routes
    batch_size: int = 32
    learning_rate: float = 0.01  # the new head's; pretrained layers get backbone_lr_mult x this
    # None: BACKBONE_LR_MULT of the run's BatchNorm mode (0.1 or 0.03; backbone_lr_mult_of)
    backbone_lr_mult: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "step"
    step_epochs: int = 7  # the classic recipe: x0.1 every 7 epochs
    step_gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None  # None: one per core
    stage: str | None = None  # linear-probe: the stage whose pooled codes the head reads; None: top
    head: str = "linear"  # linear-probe: linear (softmax, torch), logreg or svm (scikit-learn)
    # frozen routes: augmented views per train image beside the centre crop (None: 0);
    # finetune: augmented views whose frozen-prefix output is kept (None: FINETUNE_VIEWS; 0:
    # augment afresh each epoch and run the whole network, the classic loop)
    views: int | None = None
    # finetune: "train" (the batches' statistics), "frozen" (ImageNet's kept), None: measured at
    # the start of the run (batchnorm.choose_batchnorm) and recorded
    batchnorm: str | None = None
    cache_dir: Path | None = None  # CNN-codes cache; None: ~/.cache/tlvision/features
    no_cache: bool = False  # keep codes in memory only
    val_split: float | None = None  # hold out this fraction of train/ when there is no val/
    class_weights: str | None = None  # "auto": weight the loss by inverse class frequency
    precision: str = "auto"  # auto, 32, bf16 or 16 (devices.resolve_precision)
    tensorboard: bool = False  # also write RUN/tensorboard/ event files
    overwrite: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            key: str(value.absolute()) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("data_dir", "out_dir", "cache_dir"):
            values[key] = None if values.get(key) is None else Path(values[key])
        return cls(**values)


def with_strategy_defaults(config: TrainConfig) -> TrainConfig:
    """The config with its strategy's defaults filled in where it left them unset (None).

    Idempotent, and what a run records: a resumed run reads back the same choices.
    """
    freeze_until = config.freeze_until
    if config.strategy == "finetune" and freeze_until is None:
        freeze_until = FINETUNE_FREEZE_UNTIL
    return replace(
        config, freeze_until=freeze_until, views=views_of(config), epochs=epochs_of(config)
    )


def epochs_of(config: TrainConfig) -> int:
    if config.epochs is not None:
        return config.epochs
    return FINETUNE_EPOCHS if config.strategy == "finetune" else EPOCHS


def views_of(config: TrainConfig) -> int:
    if config.views is not None:
        return config.views
    return FINETUNE_VIEWS if config.strategy == "finetune" else 0


def backbone_lr_mult_of(config: TrainConfig) -> float:
    """--backbone-lr-mult, or its default for the run's BatchNorm mode."""
    if config.backbone_lr_mult is not None:
        return config.backbone_lr_mult
    return BACKBONE_LR_MULT[config.batchnorm or "train"]


def frozen_stage(config: TrainConfig) -> str | None:
    """The last frozen stage of a fine-tuning run, or None when every stage trains."""
    if config.freeze_until in (None, NO_FREEZING):
        return None
    return config.freeze_until


ADVISE_TIME_BUDGET_MINUTES = 30.0  # `tlvision advise`: the time the training run may take


def validate_config(config: TrainConfig) -> None:
    if config.strategy not in STRATEGIES:
        raise UserError(
            f"unknown strategy {config.strategy!r}; choose one of {', '.join(STRATEGIES)}"
        )
    if config.schedule not in SCHEDULES:
        raise UserError(
            f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}"
        )
    if config.freeze_until is not None and config.strategy != "finetune":
        raise UserError(
            "--freeze-until applies to --strategy finetune; the frozen routes already freeze "
            "every pretrained layer"
        )
    if config.input_size is not None and config.input_size < 32:
        raise UserError("--input-size must be at least 32 pixels")
    if (config.epochs is not None and config.epochs < 1) or config.batch_size < 1:
        raise UserError("--epochs and --batch-size must be at least 1")
    if config.batchnorm is not None and config.batchnorm not in BATCHNORM_MODES:
        raise UserError(
            f"unknown --batchnorm {config.batchnorm!r}; choose {' or '.join(BATCHNORM_MODES)}"
        )
    if config.batchnorm is not None and config.strategy != "finetune":
        raise UserError("--batchnorm applies to --strategy finetune; the frozen routes keep it")
    if not (config.learning_rate > 0 and (config.backbone_lr_mult or 0) >= 0):
        raise UserError("--lr must be positive and --backbone-lr-mult zero or more")
    if config.head not in HEADS:
        raise UserError(f"unknown head {config.head!r}; choose one of {', '.join(HEADS)}")
    if config.strategy != "linear-probe" and (config.stage is not None or config.head != "linear"):
        raise UserError("--stage and --head apply to --strategy linear-probe")
    if config.views is not None and config.views < 0:
        raise UserError("--views must be 0 or more")
    if config.precision not in PRECISIONS:
        raise UserError(f"--precision {config.precision}: choose one of {', '.join(PRECISIONS)}")
    if config.class_weights not in (None, "auto"):
        raise UserError(f"--class-weights {config.class_weights}: the only choice is auto")
