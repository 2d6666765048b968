"""Tracked, reproducible runs: every run's `config.toml`, and TensorBoard event files on request.

`config.toml` holds the TrainConfig a run was started with (absolute paths, no `overwrite`), so
`tlvision train --config RUN/config.toml --out NEW` trains the same run again; options given on
the command line override the file's. With `--tensorboard`, rank 0 writes each epoch's losses,
accuracies and learning rate, and at the end the val confusion matrix as an image, to
`RUN/tensorboard/` (`tensorboard --logdir RUN/tensorboard`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlvision.config import OPTION_OF_FIELD, TrainConfig, with_strategy_defaults
from tlvision.errors import UserError

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

CONFIG_FILE = "config.toml"
TENSORBOARD_DIR = "tensorboard"

NOT_REPLAYED = ("overwrite",)  # a replay never deletes a run without being told to

# Scalars of a metrics.jsonl record, as TensorBoard tags.
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "lr": "lr",
    "seconds": "seconds_per_epoch",
}


def write_config_toml(config: TrainConfig, log: Callable[[str], None]) -> None:
    """RUN/config.toml: every set field of the config (TOML has no null: unset ones are left
    out and read back as their defaults)."""
    try:
        import tomli_w
    except ImportError:  # a dependency; missing only from a hand-made environment
        log("note: tomli-w is not installed, so no config.toml (pip install tomli-w)")
        return
    values = {
        key: value
        for key, value in config.to_json().items()
        if value is not None and key not in NOT_REPLAYED
    }
    (config.out_dir / CONFIG_FILE).write_text(tomli_w.dumps(values))


def read_config_toml(path: Path) -> dict[str, Any]:
    """The TrainConfig fields a config file sets, checked by name and type."""
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"--config {path}: no such file") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"--config {path}: not valid TOML ({error})") from error
    # filled in, so that settings whose default depends on the strategy have a type to check
    defaults = with_strategy_defaults(TrainConfig(data_dir=Path("."), out_dir=Path(".")))
    known = {field.name for field in fields(TrainConfig)} - set(NOT_REPLAYED)
    for key, value in values.items():
        if key not in known:
            raise UserError(
                f"--config {path}: unknown setting {key!r}; known: {', '.join(sorted(known))}"
            )
        default = getattr(defaults, key)
        expected = (int, float) if isinstance(default, float) else type(default)
        if (
            default is not None
            and not isinstance(default, Path)
            and not isinstance(value, expected)
        ):
            raise UserError(
                f"--config {path}: {key} = {value!r} should be a {type(default).__name__}"
            )
    return values


def option_defaults(path: Path) -> dict[str, Any]:
    """A config file as defaults for the train command's options (argparse dests)."""
    values = read_config_toml(path)
    for key in ("data_dir", "out_dir", "cache_dir"):
        if key in values:
            values[key] = Path(values[key])
    return {OPTION_OF_FIELD.get(key, key): value for key, value in values.items()}


class Tracker:
    """TensorBoard scalars and the confusion matrix of one run (rank 0's, with --tensorboard)."""

    def __init__(self, run_dir: Path) -> None:
        self.writer: SummaryWriter | None = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise UserError(
                "--tensorboard needs the tensorboard package: pip install 'tlvision[tensorboard]'"
            ) from error
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def epoch(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, tag in SCALAR_TAGS.items():
            if isinstance(record.get(key), int | float):
                self.writer.add_scalar(tag, record[key], global_step=record["epoch"])
        self.writer.flush()

    def confusion(self, matrix: np.ndarray, class_names: list[str], step: int) -> None:
        """The val confusion matrix (rows: true class) as an image, at the last epoch."""
        if self.writer is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot

        size = max(4.0, 0.6 * len(class_names) + 2)
        figure, axes = pyplot.subplots(figsize=(size, size))
        axes.imshow(matrix, cmap="Blues")
        axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        axes.set_yticks(range(len(class_names)), class_names)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(int(count)), ha="center", va="center")
        figure.tight_layout()
        self.writer.add_figure("confusion_matrix/val", figure, global_step=step)  # closes it
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
