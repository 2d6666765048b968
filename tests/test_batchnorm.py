"""finetune's BatchNorm mode: measured on the data, recorded, and honoured by the loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tlvision.config import TrainConfig
from tlvision.data.layouts import find_splits
from tlvision.data.transforms import build_transforms
from tlvision.errors import UserError
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights, create_model, preprocessing_for
from tlvision.models.weights import IMAGENET_LIKE_SHIFT
from tlvision.training.batchnorm import (
    BACKBONE_LR_MULT,
    batchnorm_line,
    choose_batchnorm,
    measure_shift,
    trained_stages,
)
from tlvision.training.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_choose_batchnorm_reads_only_the_trained_stages() -> None:
    shift = {"stem": 0.9, "stage1": 0.9, "stage2": 0.9, "stage3": 0.1, "stage4": 0.2}
    assert choose_batchnorm(shift, ["stage3", "stage4"]) == "frozen"
    assert choose_batchnorm(shift, ["stem", "stage1", "stage2", "stage3", "stage4"]) == "train"
    at_limit = {"stage3": IMAGENET_LIKE_SHIFT, "stage4": IMAGENET_LIKE_SHIFT}
    assert choose_batchnorm(at_limit, ["stage3", "stage4"]) == "frozen"
    above = {"stage3": IMAGENET_LIKE_SHIFT + 0.01, "stage4": IMAGENET_LIKE_SHIFT}
    assert choose_batchnorm(above, ["stage3", "stage4"]) == "train"
    assert choose_batchnorm({}, ["stage3"]) == "train"  # nothing measured: the usual mode
    assert batchnorm_line("train", []).endswith("no BatchNorm layer in the trained stages measured")
    assert "mean shift from ImageNet's statistics is 0.15 (<= 0.25" in batchnorm_line(
        "frozen", [0.1, 0.2]
    )
    backbone = get_backbone("mobilenet_v2")
    assert trained_stages(backbone, "stage2") == ["stage3", "stage4"]
    assert trained_stages(backbone, None) == [stage.name for stage in backbone.stages]


def shift_of(data: Path) -> dict[str, float]:
    backbone = get_backbone("mobilenet_v2")
    weights = choose_weights(backbone, None)
    model = create_model(backbone, 2, weights)
    transform = build_transforms(preprocessing_for(backbone, weights))["val"]
    samples = find_splits(data, val_split=None, seed=0).samples["train"]
    return measure_shift(model, backbone, samples, transform, seed=0)


def test_photos_keep_imagenet_statistics_and_drawings_do_not(
    reference_data: Path, tiny_dataset: Path
) -> None:
    photos, drawings = shift_of(reference_data), shift_of(tiny_dataset)
    assert set(photos) == {stage.name for stage in get_backbone("mobilenet_v2").stages}
    assert choose_batchnorm(photos, ["stage3", "stage4"]) == "frozen"
    assert choose_batchnorm(drawings, ["stage3", "stage4"]) == "train"
    assert photos["stage3"] < drawings["stage3"]
    assert shift_of(reference_data) == photos  # a seeded sample: the same numbers again


def test_frozen_mode_keeps_every_statistic_and_is_recorded(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        data_dir=tiny_dataset, out_dir=tmp_path / "run", strategy="finetune", epochs=1,
        input_size=64, batch_size=8, batchnorm="frozen",
    )  # fmt: skip
    fit(config, log=lambda _: None)
    recorded = json.loads((tmp_path / "run" / "model.json").read_text())["config"]
    assert recorded["batchnorm"] == "frozen"
    assert recorded["backbone_lr_mult"] == BACKBONE_LR_MULT["frozen"]
    backbone = get_backbone("mobilenet_v2")
    pretrained = create_model(backbone, 2, choose_weights(backbone, None)).state_dict()
    saved = load_file(tmp_path / "run" / "model.safetensors")
    statistics = [key for key in pretrained if key.endswith(("running_mean", "running_var"))]
    assert len(statistics) > 100
    for key in statistics:  # the trained stages' too: only weights and biases moved
        assert torch.equal(saved[key], pretrained[key]), f"{key} moved"
    assert not torch.equal(
        saved["features.14.conv.0.1.weight"], pretrained["features.14.conv.0.1.weight"]
    )


def test_auto_mode_is_measured_and_recorded(tiny_dataset: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    config = TrainConfig(
        data_dir=tiny_dataset, out_dir=tmp_path / "run", strategy="finetune", epochs=1,
        input_size=64, batch_size=8,
    )  # fmt: skip
    fit(config, log=lines.append)
    assert any(line.startswith("BatchNorm: train (the batches' statistics)") for line in lines)
    recorded = json.loads((tmp_path / "run" / "model.json").read_text())["config"]
    assert recorded["batchnorm"] == "train"
    assert recorded["backbone_lr_mult"] == BACKBONE_LR_MULT["train"]
    with pytest.raises(UserError, match="--batchnorm applies to --strategy finetune"):
        fit(TrainConfig(data_dir=tiny_dataset, out_dir=tmp_path / "x", batchnorm="frozen"))
    with pytest.raises(UserError, match="--batchnorm eval: choose one of train, frozen"):
        fit(TrainConfig(tiny_dataset, tmp_path / "y", strategy="finetune", batchnorm="eval"))
