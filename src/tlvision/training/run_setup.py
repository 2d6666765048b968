"""What a run resolves from its config before it trains: data, model, device (`RunSetup`), and
how it speaks (`Log`). `tlvision.training.setup.set_up` makes one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tlvision.compute.distributed import Distributed
from tlvision.config import TrainConfig
from tlvision.data.layouts import DatasetSplits
from tlvision.data.preprocessing import Preprocessing
from tlvision.models.backbone import BackboneSpec
from tlvision.models.weights import WeightsChoice
from tlvision.training.tracking import Tracker

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunSetup:
    """Everything a run resolves from its config before it trains: data, model and device."""

    config: TrainConfig  # with the strategy's defaults filled in: what the run records
    splits: DatasetSplits
    backbone: BackboneSpec
    weights: WeightsChoice
    preprocessing: Preprocessing
    device: torch.device
    num_workers: int
    class_weights: list[float] | None
    precision: str = "32"  # resolved: 32, bf16 or 16 (devices.resolve_precision)
    distributed: Distributed = field(default_factory=Distributed)
    tracker: Tracker | None = None  # rank 0's TensorBoard writer (None: no --tensorboard)
    excluded: dict[str, Any] | None = None  # what --exclude left out (ExclusionRecord.to_json)


def silent(message: str) -> None:
    """The log of ranks other than 0: one process speaks for the run."""
