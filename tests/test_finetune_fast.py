"""Default fine-tuning: the frozen prefix runs once, its BatchNorm stays frozen, the model above
it is the same model, and the run records the defaults it used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tlvision.backbones import choose_weights, create_model, get_backbone
from tlvision.config import (
    FINETUNE_EPOCHS,
    FINETUNE_FREEZE_UNTIL,
    FINETUNE_VIEWS,
    TrainConfig,
    frozen_stage,
    with_strategy_defaults,
)
from tlvision.frozen_prefix import SkipPrefix, prefix_modules
from tlvision.progress import showing_progress
from tlvision.stages import stage_graph
from tlvision.training import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_strategy_defaults_are_filled_in_and_recorded() -> None:
    finetune = with_strategy_defaults(TrainConfig(Path("d"), Path("o"), strategy="finetune"))
    assert (finetune.freeze_until, finetune.views, finetune.epochs) == (
        FINETUNE_FREEZE_UNTIL, FINETUNE_VIEWS, FINETUNE_EPOCHS,
    )  # fmt: skip
    assert with_strategy_defaults(finetune) == finetune
    frozen = with_strategy_defaults(TrainConfig(Path("d"), Path("o")))
    assert (frozen.freeze_until, frozen.views, frozen.epochs) == (None, 0, 25)
    every_stage = TrainConfig(Path("d"), Path("o"), strategy="finetune", freeze_until="none")
    assert frozen_stage(with_strategy_defaults(every_stage)) is None


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_the_model_above_the_prefix_is_the_whole_model(name: str) -> None:
    backbone = get_backbone(name)
    model = create_model(backbone, 3, choose_weights(backbone, "none"))
    prefix = stage_graph(model, backbone, ["stage2"])
    above = SkipPrefix(model, prefix_modules(backbone, "stage2", prefix))
    keys = set(model.state_dict())
    assert above.matches(prefix, "stage2", 64)
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(images), above(prefix(images)["stage2"]), atol=1e-4)
    assert set(model.state_dict()) == keys, "the frozen modules are back after each pass"


def test_default_finetune_keeps_the_prefix_frozen_and_shows_images_per_second(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    config = TrainConfig(
        data_dir=tiny_dataset, out_dir=tmp_path / "run", strategy="finetune", epochs=2,
        input_size=64, batch_size=8,
    )  # fmt: skip
    with showing_progress(True):
        summary = fit(config, log=lines.append)
    assert any(line.startswith("frozen prefix (up to stage2)") for line in lines)
    assert any(line.startswith("head started on the top codes") for line in lines)
    assert "img/s" in capsys.readouterr().err
    recorded = json.loads((tmp_path / "run" / "model.json").read_text())["config"]
    assert recorded["freeze_until"] == "stage2" and recorded["views"] == FINETUNE_VIEWS
    assert summary["epochs"] == 2

    backbone = get_backbone("mobilenet_v2")
    pretrained = create_model(backbone, 2, choose_weights(backbone, None)).state_dict()
    saved = load_file(tmp_path / "run" / "model.safetensors")
    frozen = tuple(f"{path}." for stage in backbone.stages[:3] for path in stage.modules)
    checked = [key for key in pretrained if key.startswith(frozen)]
    assert any(key.endswith("running_var") for key in checked)
    for key in checked:  # weights and BatchNorm statistics alike
        assert torch.equal(saved[key], pretrained[key]), f"{key} moved while frozen"
    assert not torch.equal(
        saved["features.14.conv.0.0.weight"], pretrained["features.14.conv.0.0.weight"]
    )
