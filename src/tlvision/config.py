"""The options of a training run, defined once: each TrainConfig field carries its type, default
and help, and everything else is made from those fields.

- the command line: `tlvision train` (and `lr-find`) get one flag per field (tlvision.cli.options);
- the Python API: `tlvision.train(data, **options)` takes one keyword per field, typed by
  tlvision.api.train_options, which `train_options_source()` writes;
- config.toml: what a run records and `--config` reads back, checked against the field types
  (tlvision.runs.config_file);
- the report's reproduce line (`reproduce_arguments`).

Choices that are registries (backbones, strategies) are named here and filled in by the layers
that own them. Imports no torch, so `import tlvision` stays fast.
"""

from __future__ import annotations

import textwrap
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tlvision.errors import UserError

DEFAULT_BACKBONE = "mobilenet_v2"
HEADS = ("linear", "logreg", "svm")  # linear: softmax layer (torch); logreg, svm: scikit-learn
SCHEDULES = ("step", "cosine", "onecycle", "constant")
SAMPLERS = ("shuffle", "balanced")  # finetune's order: see tlvision.training.sampling
PRECISIONS = ("auto", "32", "bf16", "16")  # auto: bf16 on a CUDA GPU that has it, else 32
BATCHNORM_MODES = ("train", "frozen")  # finetune: see tlvision.training.batchnorm
NO_FREEZING = "none"  # --freeze-until none: every stage trains
AUTO_STRATEGY = "auto"  # not a strategy: the advisor's pick (tlvision.advisor)
DATA_HELP = "dataset folder: with train/ and val/, or flat with one folder per class"


@dataclass(frozen=True)
class Option:
    """How a TrainConfig field appears to users (the field gives its type and default)."""

    help: str
    name: str = ""  # the flag (--name) and API keyword, when not the field's own name
    metavar: str | None = None
    choices: tuple[str, ...] = ()  # a fixed set of values
    registry: str = ""  # the values are a registry's names: "backbone" or "strategy"
    replayed: bool = True  # config.toml and the reproduce line carry it (not --overwrite)


def setting(default: Any, help: str, **option: Any) -> Any:
    """A TrainConfig field with its default and its Option."""
    return field(default=default, metadata={"option": Option(help, **option)})


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path = field(metadata={"option": Option(DATA_HELP, name="data", metavar="DATA")})
    out_dir: Path = field(
        metadata={
            "option": Option(
                "run directory (default: runs/<strategy>-<date>-<time>)", name="out", metavar="DIR"
            )
        }
    )
    backbone: str = setting(DEFAULT_BACKBONE, "pretrained network", registry="backbone")
    weights: str | None = setting(
        None,
        "pretrained weights: a name such as IMAGENET1K_V1 (default: the backbone's first), a "
        ".pth/.safetensors file, or none for random initialisation",
        metavar="NAME|FILE|none",
    )
    strategy: str = setting(
        "feature-extract",
        f"what trains; {AUTO_STRATEGY}: measure the data (as `tlvision advise` does) and run "
        "its recommendation",
        registry="strategy",
    )
    freeze_until: str | None = setting(
        None,
        "finetune: keep the stages up to and including STAGE frozen (default: the backbone's "
        f"middle stage, stage2 for most; {NO_FREEZING}: train every stage; names: `tlvision "
        "backbones`)",
        metavar="STAGE",
    )
    stage: str | None = setting(
        None, "linear-probe: take pooled codes from this stage instead of the top", metavar="STAGE"
    )
    head: str = setting(
        "linear",
        "linear-probe: softmax layer (torch), logistic regression or linear SVM (scikit-learn)",
        choices=HEADS,
    )
    input_size: int | None = setting(
        None,
        "side of the square the network sees (default: the weights' own, 224 for most)",
        metavar="PIXELS",
    )
    epochs: int | None = setting(
        None, "epochs (default: the strategy's: 25 for the frozen routes, 10 for finetune)"
    )
    batch_size: int = setting(32, "images per step (per process under torchrun)")
    learning_rate: float = setting(
        0.01,
        "the new head's learning rate; fine-tuning starts its head on codes and then trains it "
        "at the pretrained layers' rate (--backbone-lr-mult x this); `find`: run the "
        "learning-rate range test first (tlvision lr-find)",
        name="lr",
    )
    backbone_lr_mult: float | None = setting(
        None,
        "finetune: pretrained layers learn at this times --lr (default 0.1; 0.03 with "
        "--batchnorm frozen)",
    )
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(0.0, "SGD weight decay (L2)")
    schedule: str = setting(
        "step", "learning-rate schedule, stepped every batch", choices=SCHEDULES
    )
    step_epochs: int = setting(7, "step schedule: multiply the rate by --step-gamma every N epochs")
    step_gamma: float = setting(0.1, "step schedule: the factor")
    seed: int = setting(0, "seeds the split, the augmentation, the order and the new head")
    device: str = setting("auto", "auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps")
    num_workers: int | None = setting(
        None,
        "data-loader processes (default: one per CPU core, up to 8; none when fine-tuning on "
        "the CPU)",
        name="workers",
    )
    views: int | None = setting(
        None,
        "augmented views per train image beside its centre crop: the frozen routes compute their "
        "codes once (default 0); finetune keeps the frozen stages' output for them (default 8; "
        "0: augment afresh each epoch and run the whole network)",
    )
    batchnorm: str | None = setting(
        None,
        "finetune: train (BatchNorm follows the batches' statistics) or frozen (ImageNet's kept; "
        "default: chosen by measuring how far the data sits from them)",
        choices=BATCHNORM_MODES,
    )
    cache_dir: Path | None = setting(
        None, "CNN-codes cache (default: ~/.cache/tlvision/features)", metavar="DIR"
    )
    no_cache: bool = setting(False, "keep CNN codes in memory only")
    val_split: float | None = setting(
        None,
        "hold out this stratified, seeded share of each class as val when there is no val/ "
        "folder (default 0.2 for a flat DATA/<class>/ folder)",
        metavar="FRACTION",
    )
    exclude: Path | None = setting(
        None,
        "leave these train files out: a list (one path a line, relative to DATA) or an "
        "audit.json (`tlvision audit`; --exclude-sections); recorded in summary.json",
        metavar="FILE",
    )
    exclude_sections: str = setting(
        "label_issues",
        "the audit.json sections --exclude reads, comma-separated: label_issues, duplicates, "
        "outliers",
        metavar="SECTIONS",
    )
    exclude_held_out: bool = setting(
        False, "--exclude also leaves out val files (val accuracy is then inflated)"
    )
    class_weights: str | None = setting(
        None,
        "auto: weight the loss by inverse class frequency (multi-label: positive weights)",
        choices=("auto",),
    )
    sampler: str = setting(
        "shuffle",
        "finetune: shuffle (each image once an epoch) or balanced (images drawn with "
        "replacement, each class equally often: for classes of very different sizes)",
        choices=SAMPLERS,
    )
    threshold_precision: float | None = setting(
        None,
        "multi-label data: tune each class's threshold on val to reach this precision "
        "(default: the F1-optimal threshold)",
        metavar="PRECISION",
    )
    precision: str = setting(
        "auto",
        "auto: bf16 mixed precision on a CUDA GPU that has it, else 32; 16: float16 with a "
        "gradient scaler (CUDA)",
        choices=PRECISIONS,
    )
    tensorboard: bool = setting(False, "write TensorBoard events to RUN/tensorboard/")
    overwrite: bool = setting(
        False, "replace an existing run in --out (never a folder that is not a run)", replayed=False
    )

    def to_json(self) -> dict[str, Any]:
        return {
            key: str(value.absolute()) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """A config as `to_json` (model.json, a checkpoint) recorded it; unknown keys are left."""
        known = {each.field: each for each in option_fields()}
        values = {key: value for key, value in data.items() if key in known}
        for key, value in values.items():
            if value is not None and known[key].type is Path:
                values[key] = Path(value)
        return cls(**values)


@dataclass(frozen=True)
class OptionField:
    """One TrainConfig field as an option: its name for users, plain type, default."""

    field: str  # the TrainConfig field
    name: str  # the flag (--name with dashes) and API keyword
    type: type  # bool, int, float, str or Path
    optional: bool  # None is a value (meaning "the default that depends on something else")
    default: Any  # dataclasses.MISSING for data_dir and out_dir
    option: Option

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def option_fields() -> list[OptionField]:
    """Every TrainConfig field as an option, in declaration order."""
    hints = typing.get_type_hints(TrainConfig)
    result = []
    for each in fields(TrainConfig):
        option: Option = each.metadata["option"]
        plain, optional = _plain_type(hints[each.name])
        result.append(
            OptionField(
                field=each.name, name=option.name or each.name, type=plain, optional=optional,
                default=each.default, option=option,
            )
        )  # fmt: skip
    return result


def _plain_type(annotation: Any) -> tuple[type, bool]:
    """(int, True) for `int | None`; (Path, False) for `Path`."""
    if isinstance(annotation, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        return members[0], len(members) < len(typing.get_args(annotation))
    return annotation, False


def config_from_options(data: Any, out: Any, options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig that `tlvision.train(data, out=out, **options)` asks for: options by
    their user names (`lr`, `workers`), paths as given; an unknown name is a UserError."""
    by_name = {each.name: each for each in option_fields()}
    unknown = sorted(set(options) - set(by_name))
    if unknown:
        raise UserError(
            f"unknown option(s) {', '.join(unknown)}; the options are "
            f"{', '.join(name for name in by_name if name not in ('data', 'out'))}"
        )
    values = {by_name[name].field: value for name, value in options.items()}
    for key in ("cache_dir",):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return TrainConfig(data_dir=Path(data), out_dir=Path(out), **values)


def reproduce_arguments(config: dict[str, Any]) -> list[str]:
    """The `tlvision train` arguments that make a recorded config (`to_json`) again: DATA, then
    every replayed option that is set, spelled out, in declaration order."""
    words = [str(config["data_dir"])]
    for each in option_fields():
        value = config.get(each.field)
        if each.field == "data_dir" or not each.option.replayed or value is None:
            continue
        if each.type is bool:
            words += [each.flag] if value else []
        else:
            words += [each.flag, str(value)]
    return words


def validate_config(config: TrainConfig) -> None:
    """The checks that need no registry: choices and ranges, each naming the bad value. The
    strategy, backbone and stage names are checked by their registries (tlvision.training)."""
    for each in option_fields():
        value = getattr(config, each.field)
        if each.option.choices and value is not None and value not in each.option.choices:
            raise UserError(f"{each.flag} {value}: choose one of {', '.join(each.option.choices)}")
    _require(
        config.input_size is None or config.input_size >= 32, "--input-size", config.input_size,
        "at least 32 pixels",
    )  # fmt: skip
    _require(config.epochs is None or config.epochs >= 1, "--epochs", config.epochs, "at least 1")
    _require(config.batch_size >= 1, "--batch-size", config.batch_size, "at least 1")
    _require(config.learning_rate > 0, "--lr", config.learning_rate, "positive")
    _require(
        config.backbone_lr_mult is None or config.backbone_lr_mult >= 0,
        "--backbone-lr-mult", config.backbone_lr_mult, "zero or more",
    )  # fmt: skip
    _require(config.views is None or config.views >= 0, "--views", config.views, "0 or more")
    _require(config.step_epochs >= 1, "--step-epochs", config.step_epochs, "at least 1")
    _require(
        config.num_workers is None or config.num_workers >= 0, "--workers", config.num_workers,
        "0 or more",
    )  # fmt: skip
    _require(
        config.val_split is None or 0 < config.val_split < 1, "--val-split", config.val_split,
        "a fraction between 0 and 1, e.g. 0.2",
    )  # fmt: skip
    _require(
        config.threshold_precision is None or 0 < config.threshold_precision <= 1,
        "--threshold-precision", config.threshold_precision, "a precision in (0, 1], e.g. 0.9",
    )  # fmt: skip


def _require(holds: bool, flag: str, value: Any, expected: str) -> None:
    if not holds:
        raise UserError(f"{flag} {value}: must be {expected}")


def train_options_source() -> str:
    """The source of tlvision/api/train_options.py: a TypedDict of every option but DATA, so
    that type checkers check `tlvision.train(data, epochs="3")` as they check any call."""
    names = {bool: "bool", int: "int", float: "float", str: "str", Path: "PathLike"}
    lines = [
        '"""The keyword options of tlvision.train: written by tlvision.config.train_options_source',
        "from TrainConfig's fields (tests/test_options.py checks that it is current); do not edit.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import os",
        "from typing import Literal, TypedDict",
        "",
        "PathLike = str | os.PathLike[str]",
        "",
        "",
        "class TrainOptions(TypedDict, total=False):",
    ]
    for each in option_fields():
        if each.field == "data_dir":
            continue
        optional = each.optional or each.field == "out_dir"  # out: None is runs/<strategy>-<time>
        spelled = names[each.type] + (' | Literal["find"]' if each.field == "learning_rate" else "")
        lines.append(f"    {each.name}: {spelled}{' | None' if optional else ''}")
        lines += textwrap.wrap(
            each.option.help, width=96, initial_indent='    """', subsequent_indent="    "
        )
        lines[-1] += '"""'
    return "\n".join(lines) + "\n"
