"""The advisor's code passes say what they read (issue 26): both of its splits are parts of
train/, so its bars never say "val"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlvision.advisor.race import RaceSetup, race_codes
from tlvision.data.layouts import find_splits
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights
from tlvision.progress import showing_progress


def test_the_race_bars_name_the_train_sample_and_holdout(
    tiny_dataset: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    backbone = get_backbone("mobilenet_v2")
    setup = RaceSetup(
        splits=find_splits(tiny_dataset), backbone=backbone,
        weights=choose_weights(backbone, None), weights_argument=None, cache=None,
        device=torch.device("cpu"), seed=0, log=lambda _message: None,
    )  # fmt: skip
    capfd.readouterr()
    with showing_progress(True):
        race_codes(setup, 32)
    bars = capfd.readouterr().err
    assert "train sample codes (centre crop)" in bars
    assert "train holdout codes (centre crop)" in bars
    assert "val codes" not in bars and "(val)" not in bars
