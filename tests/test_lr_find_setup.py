"""lr-find measures the setup the run will train (issue 26): a fine-tuning run's head starts
trained on codes and goes on at the pretrained layers' rate, so its range test does the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.models.network import create_model, head_of
from tlvision.training.batchnorm import backbone_lr_mult_of
from tlvision.training.lr_find import FinetuneRangeTest, finetune_range_test
from tlvision.training.run_setup import RunSetup
from tlvision.training.setup import seed_everything, set_up


def range_test_of(
    data: Path, out: Path, views: int | None
) -> tuple[FinetuneRangeTest, list[str], RunSetup]:
    out.mkdir()
    config = TrainConfig(
        data_dir=data, out_dir=out, strategy="finetune", weights="none", input_size=32,
        batch_size=4, num_workers=0, no_cache=True, device="cpu", learning_rate=1.0,
        views=views,
    )  # fmt: skip
    lines: list[str] = []
    setup = set_up(config, lines.append, fresh=False)
    return finetune_range_test(setup, lines.append), lines, setup


def test_finetune_range_test_starts_the_head_on_codes_and_steps_it_at_lr_times_mult(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    test, lines, setup = range_test_of(tiny_dataset, tmp_path / "kept", None)
    multiplier = backbone_lr_mult_of(setup.config)
    assert test.head_started
    groups = test.optimizer.param_groups
    assert [group["multiplier"] for group in groups] == pytest.approx([multiplier, multiplier])
    assert any("head started on the top codes" in line for line in lines)
    seed_everything(setup.config.seed)
    fresh = create_model(setup.backbone, 2, setup.weights)
    started = groups[0]["params"][0]
    assert not torch.equal(started.detach(), head_of(fresh, setup.backbone).weight)


def test_without_kept_views_the_range_test_keeps_a_fresh_head_at_the_full_rate(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    test, lines, setup = range_test_of(tiny_dataset, tmp_path / "whole", 0)
    multiplier = backbone_lr_mult_of(setup.config)
    assert not test.head_started
    groups = test.optimizer.param_groups
    assert [group["multiplier"] for group in groups] == pytest.approx([1.0, multiplier])
    assert not any("head started" in line for line in lines)


def test_lr_find_for_finetune_end_to_end(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["lr-find", str(tiny_dataset), "--strategy", "finetune", "--weights", "none",
         "--input-size", "32", "--batch-size", "4", "--workers", "0", "--no-cache",
         "--steps", "12", "--plot", str(tmp_path / "lr.png"), "--json"]
    )  # fmt: skip
    assert status == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["route"] == "images" and result["steps"] >= 2
    assert "head started on the top codes" in captured.err
