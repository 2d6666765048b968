"""--precision: what auto means where, and the combinations that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlvision.cli.train import without_option
from tlvision.compute.devices import autocast_for, resolve_precision
from tlvision.errors import UserError
from tlvision.training.checkpoint import (
    TrainingCheckpoint,
    capture_random_state,
    load_training_checkpoint,
    save_training_checkpoint,
)
from tlvision.training.state import scaler_state


def test_auto_is_float32_on_the_cpu_and_choices_are_kept() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "32"
    assert resolve_precision("32", cpu) == "32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="--precision 16 needs --device cuda"):
        resolve_precision("16", cpu)
    with pytest.raises(UserError, match="choose one of"):
        resolve_precision("8", cpu)


def test_bf16_autocast_runs_a_layer_in_bfloat16_on_the_cpu() -> None:
    layer, inputs = torch.nn.Linear(4, 2), torch.randn(3, 4)
    with autocast_for(torch.device("cpu"), "bf16"):
        assert layer(inputs).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu"), "32"):
        assert layer(inputs).dtype == torch.float32


def test_the_launcher_passes_on_everything_but_nproc() -> None:
    argv = ["train", "DATA", "--nproc", "2", "--epochs", "3", "--nproc=4", "--out", "r"]
    assert without_option(argv, "--nproc") == ["train", "DATA", "--epochs", "3", "--out", "r"]


def test_the_float16_loss_scale_survives_a_checkpoint(tmp_path: Path) -> None:
    """A resumed float16 run goes on with the loss scale the scaler had tuned, not 65536."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for gradient in (float("inf"), float("inf"), 1.0):  # two overflows halve the scale twice
        optimizer.zero_grad()
        scaler.scale((weight * gradient).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == 2.0**14
    checkpoint = TrainingCheckpoint(
        epoch=1, model_state={"w": weight.detach()}, best_state={},
        optimizer_state=optimizer.state_dict(), scheduler_state={},
        random_state=capture_random_state(),
        info={"scaler": scaler_state(scaler)},
    )  # fmt: skip
    save_training_checkpoint(tmp_path, checkpoint)
    resumed = torch.amp.GradScaler("cpu")
    resumed.load_state_dict(load_training_checkpoint(tmp_path).info["scaler"])
    assert resumed.get_scale() == 2.0**14
    assert resumed.state_dict() == scaler.state_dict()
