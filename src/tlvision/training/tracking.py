"""TensorBoard event files on request: with `--tensorboard`, rank 0 writes each epoch's losses,
accuracies and learning rate, and at the end the val confusion matrix as an image, to
`RUN/tensorboard/` (`tensorboard --logdir RUN/tensorboard`). A run's settings are recorded in
config.toml either way (tlvision.runs.config_file)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlvision.errors import UserError
from tlvision.runs.layout import TENSORBOARD_DIR

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# Scalars of a metrics.jsonl record, as TensorBoard tags.
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "lr": "lr",
    "seconds": "seconds_per_epoch",
}


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
