"""The fine-tuning route's loss on multi-label data: binary cross-entropy per class on the
sample's row of the label table (the loaders yield row numbers, `DatasetSplits.targets`), class
weights as BCE's positive weights; accuracy is the exact-match share at 0.5, and the val
epoch's logits are kept for its mAP."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.data.layouts import DatasetSplits


class MultiLabelLoss(nn.Module):
    """BCE with logits against `targets[rows]`; `observe` keeps val logits for `take_val_map`."""

    def __init__(self, targets: np.ndarray, pos_weight: list[float] | None = None) -> None:
        super().__init__()
        self.targets: torch.Tensor
        self.pos_weight: torch.Tensor | None
        self.register_buffer("targets", torch.from_numpy(targets.astype(np.float32)))
        weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", weight)
        self._seen: list[tuple[np.ndarray, np.ndarray]] = []

    def forward(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            logits, self.targets[rows], pos_weight=self.pos_weight
        )

    def count_correct(self, logits: torch.Tensor, rows: torch.Tensor) -> int:
        predicted = (logits > 0).float()
        return int((predicted == self.targets[rows]).all(dim=1).sum())

    def observe(self, logits: torch.Tensor, rows: torch.Tensor) -> None:
        self._seen.append((logits.float().cpu().numpy(), self.targets[rows].cpu().numpy()))

    def take_val_map(self) -> dict[str, Any]:
        """The mAP of the logits observed since the last call (this process's share)."""
        from tlvision.inference.multilabel import multilabel_metrics, sigmoid

        if not self._seen:
            return {}
        logits = np.concatenate([logits for logits, _ in self._seen])
        targets = np.concatenate([targets for _, targets in self._seen])
        self._seen = []
        names = [str(column) for column in range(targets.shape[1])]
        return {
            "val_map": multilabel_metrics(targets, sigmoid(logits), [0.5] * len(names), names)[
                "map"
            ]
        }


def multilabel_criterion(splits: DatasetSplits, class_weights: str | None) -> MultiLabelLoss:
    """The loss over every table row; --class-weights auto: negatives/positives per class."""
    assert splits.targets is not None
    targets = splits.target_matrix(range(len(splits.targets)))
    pos_weight = None
    if class_weights == "auto":
        train = splits.target_matrix([label for _, label in splits.samples["train"]])
        positives = train.sum(axis=0)
        pos_weight = [float((len(train) - p) / max(p, 1.0)) for p in positives]
    return MultiLabelLoss(targets, pos_weight)


def count_correct(criterion: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Right answers in a batch: argmax == label, or the criterion's own rule (multi-label)."""
    if isinstance(criterion, MultiLabelLoss):
        return criterion.count_correct(logits, labels)
    return int((logits.argmax(dim=1) == labels).sum())


def observe(criterion: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> None:
    if isinstance(criterion, MultiLabelLoss):
        criterion.observe(logits, labels)


def epoch_extras(criterion: nn.Module) -> dict[str, Any]:
    return criterion.take_val_map() if isinstance(criterion, MultiLabelLoss) else {}
