"""Which parameters train under each strategy, and that frozen BatchNorm really stays frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tlvision.config import TrainConfig
from tlvision.errors import UserError
from tlvision.models.backbone import BackboneSpec, get_backbone
from tlvision.models.network import choose_weights, create_model, head_of
from tlvision.training.freezing import apply_finetuning, parameter_groups, set_train_mode
from tlvision.training.strategy import check_strategy_options


def batchnorm_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: buffer.clone()
        for name, buffer in model.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    }


def one_training_step(model: nn.Module, groups: list[dict[str, Any]]) -> None:
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    set_train_mode(model)
    images = torch.randn(4, 3, 64, 64) * 3 + 1  # far from the BN statistics: they would move
    loss = nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    optimizer.step()


def build(name: str = "mobilenet_v2") -> tuple[nn.Module, BackboneSpec]:
    backbone = get_backbone(name)
    return create_model(backbone, 2, choose_weights(backbone, "none")), backbone


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "efficientnet_lite0"])
def test_backbone_lr_mult_zero_trains_only_the_head_and_keeps_batchnorm_statistics(
    name: str,
) -> None:
    model, backbone = build(name)
    apply_finetuning(model, backbone, backbone_lr_mult=0)
    head = head_of(model, backbone)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in head.parameters()}
    before = batchnorm_statistics(model)
    head_before = head.weight.clone()
    groups = parameter_groups(model, backbone, learning_rate=0.1, backbone_lr_mult=0)
    one_training_step(model, groups)
    after = batchnorm_statistics(model)
    assert before.keys() == after.keys() and before
    for key in before:
        assert torch.equal(before[key], after[key]), f"{key} moved while frozen"
    assert not torch.equal(head_before, head.weight)


def test_finetune_freeze_until_keeps_early_stages_and_their_batchnorm_fixed() -> None:
    model, backbone = build("mobilenet_v2")
    apply_finetuning(model, backbone, freeze_until="stage2")
    frozen_prefixes = [f"{module}." for stage in backbone.stages[:3] for module in stage.modules]
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad != any(name.startswith(p) for p in frozen_prefixes), name
    before = batchnorm_statistics(model)
    groups = parameter_groups(model, backbone, learning_rate=0.1, backbone_lr_mult=0.1)
    one_training_step(model, groups)
    after = batchnorm_statistics(model)
    moved = {key for key in before if not torch.equal(before[key], after[key])}
    for key in before:
        in_frozen_stage = any(key.startswith(p) for p in frozen_prefixes)
        assert (key in moved) != in_frozen_stage, key


def test_discriminative_learning_rates() -> None:
    model, backbone = build("resnet18")
    apply_finetuning(model, backbone)
    groups = parameter_groups(model, backbone, learning_rate=0.01, backbone_lr_mult=0.1)
    by_name = {group["name"]: group for group in groups}
    assert by_name["head"]["lr"] == 0.01
    assert by_name["backbone"]["lr"] == pytest.approx(0.001)
    total = sum(p.numel() for group in groups for p in group["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_freeze_until_errors() -> None:
    model, backbone = build("resnet18")
    with pytest.raises(UserError, match="stage1"):
        apply_finetuning(model, backbone, freeze_until="layer2")
    with pytest.raises(UserError, match="--freeze-until applies to --strategy finetune"):
        check_strategy_options(
            TrainConfig(Path("."), Path("."), strategy="feature-extract", freeze_until="stage1"),
            backbone,
        )


@pytest.mark.parametrize("strategy", ["feature-extract", "linear-probe"])
def test_frozen_routes_leave_batchnorm_statistics_as_they_were(
    strategy: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    """The cached-codes routes never train the body: BN buffers in the saved model are the
    initial ones (random init: running mean 0, running var 1), even though images far from
    those statistics went through it."""
    from safetensors.torch import load_file

    from tlvision.training.fit import fit

    out = tmp_path / "run"
    config = TrainConfig(
        data_dir=tiny_dataset, out_dir=out, backbone="mobilenet_v2", weights="none",
        strategy=strategy, input_size=48, epochs=2, batch_size=8, num_workers=0,
        stage="stage3" if strategy == "linear-probe" else None,
    )  # fmt: skip
    fit(config, log=lambda _: None)
    saved = load_file(str(out / "model.safetensors"))
    means = [t for name, t in saved.items() if name.endswith("running_mean")]
    variances = [t for name, t in saved.items() if name.endswith("running_var")]
    assert means and variances
    assert all(torch.equal(t, torch.zeros_like(t)) for t in means)
    assert all(torch.equal(t, torch.ones_like(t)) for t in variances)
