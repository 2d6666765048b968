"""--precision: what auto means where, and the combinations that cannot work."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from tlvision.cli.train import without_option
from tlvision.compute.devices import resolve_precision
from tlvision.config import TrainConfig
from tlvision.errors import UserError
from tlvision.models.network import create_model
from tlvision.training.checkpoint import load_training_checkpoint
from tlvision.training.finetune import make_loaders
from tlvision.training.loop import evaluate, train_one_epoch
from tlvision.training.run_setup import RunSetup
from tlvision.training.setup import set_up
from tlvision.training.state import Progress, restore, save_checkpoint, scaler_state


def test_auto_is_float32_on_the_cpu_and_choices_are_kept() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "32"
    assert resolve_precision("32", cpu) == "32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="--precision 16 needs --device cuda"):
        resolve_precision("16", cpu)
    with pytest.raises(UserError, match="choose one of"):
        resolve_precision("8", cpu)


def finetune_setup(data: Path, out: Path, precision: str) -> RunSetup:
    """What fit resolves for a small CPU fine-tuning run at `precision` (random weights)."""
    config = TrainConfig(
        data_dir=data, out_dir=out, strategy="finetune", weights="none", input_size=32,
        batch_size=8, num_workers=0, device="cpu", precision=precision,
    )  # fmt: skip
    return set_up(config, lambda _message: None, fresh=True)


@pytest.mark.parametrize(
    ("requested", "resolved", "computed"),
    [("bf16", "bf16", torch.bfloat16), ("32", "32", torch.float32), ("auto", "32", torch.float32)],
)
def test_the_epochs_compute_in_the_runs_precision_and_keep_float32_weights(
    requested: str, resolved: str, computed: torch.dtype, tiny_dataset: Path, tmp_path: Path
) -> None:
    """--precision as resolved for the run is what its train and val loops compute in (bf16:
    mixed precision, so the weights the optimizer steps stay float32)."""
    setup = finetune_setup(tiny_dataset, tmp_path / "run", requested)
    assert setup.precision == resolved  # on the CPU, auto is float32
    model = create_model(setup.backbone, 2, setup.weights).to(memory_format=torch.channels_last)
    head = model.get_submodule(setup.backbone.head)
    logits: list[torch.dtype] = []
    hook = head.register_forward_hook(lambda _module, _inputs, output: logits.append(output.dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    criterion = torch.nn.CrossEntropyLoss()
    loaders = make_loaders(setup)
    device = setup.device
    before = head.weight.detach().clone()
    train_loss, _, _ = train_one_epoch(
        model, loaders["train"], criterion, optimizer, scheduler, device, precision=setup.precision
    )
    val_loss, _, _ = evaluate(model, loaders["val"], criterion, device, precision=setup.precision)
    hook.remove()
    assert logits == [computed] * 3  # 16 train images in 2 batches of 8, then 8 val images
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert not torch.equal(head.weight, before)  # the steps were taken
    assert math.isfinite(train_loss) and math.isfinite(val_loss)


def test_the_launcher_passes_on_everything_but_nproc() -> None:
    argv = ["train", "DATA", "--nproc", "2", "--epochs", "3", "--nproc=4", "--out", "r"]
    assert without_option(argv, "--nproc") == ["train", "DATA", "--epochs", "3", "--out", "r"]


def test_the_float16_loss_scale_survives_a_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    """A resumed float16 run goes on with the loss scale the scaler had tuned, not 65536: the
    scaler's state goes into the epoch's checkpoint with the run's progress (save_checkpoint),
    comes back in the Progress that restore gives the resumed run, and loads into its scaler.
    (On the CPU a run has no float16 scaler, so the epoch's part is played here by hand.)"""
    setup = finetune_setup(tiny_dataset, tmp_path / "run", "32")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for gradient in (float("inf"), float("inf"), 1.0):  # overflows: the scaler lowers its scale
        optimizer.zero_grad()
        scaler.scale((weight * gradient).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    tuned = scaler_state(scaler)
    assert tuned["scale"] < 2.0**16  # what a fresh scaler would start from
    assert json.loads(json.dumps(tuned)) == tuned  # plain numbers, for the checkpoint's JSON

    model = create_model(setup.backbone, 2, setup.weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    progress = Progress(steps_per_epoch=2, scaler_state=tuned)
    save_checkpoint(setup, 1, model, optimizer, scheduler, progress, {}, time.perf_counter())
    checkpoint = load_training_checkpoint(setup.config.out_dir)
    restored, _best = restore(checkpoint, setup, model, optimizer, scheduler, steps_per_epoch=2)
    assert restored.first_epoch == 2 and restored.scaler_state == tuned
    resumed = torch.amp.GradScaler("cpu")  # as fit makes it, then loads the restored state
    resumed.load_state_dict(restored.scaler_state)
    assert resumed.get_scale() == tuned["scale"]
    assert resumed.state_dict() == scaler.state_dict()
