"""--precision: what auto means where, and the combinations that cannot work."""

from __future__ import annotations

import pytest
import torch

from tlvision.cli import without_option
from tlvision.devices import autocast_for, resolve_precision
from tlvision.errors import UserError


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
