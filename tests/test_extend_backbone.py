"""A new backbone is one registration, from outside tlvision: a tiny 3-stage CNN declared here,
its stages as data, goes through training (every strategy), predict, export, the API, the
report, class maps and the advisor, with no tlvision file touched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import tlvision
from tlvision.cli import main
from tlvision.data.preprocessing import Preprocessing
from tlvision.models.backbone import BACKBONES, BackboneSpec, Stage
from tlvision.models.weights import WeightsSpec

NAME = "tiny3"


def block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class TinyNet(nn.Module):
    """Three stride-2 stages, a pool, a 10-class head: the shape of any small ConvNet."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(block(3, 8), block(8, 16), block(16, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.classifier(self.pool(self.features(images)).flatten(1))
        return output


def tiny_spec() -> BackboneSpec:
    preprocessing = Preprocessing(resize_size=72, crop_size=64)
    return BackboneSpec(
        name=NAME,
        build=TinyNet,
        weights=(WeightsSpec(NAME, "LOCAL", "tiny3.pth", preprocessing),),
        head="classifier",
        feature_size=32,
        stages=(
            Stage("early", ("features.0",), "features.0", channels=8, stride=2),
            Stage("middle", ("features.1",), "features.1", channels=16, stride=4),
            Stage("late", ("features.2",), "features.2", channels=32, stride=8),
        ),
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes, 12 train and 8 val images each: enough for the export's parity check."""
    from conftest import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data"), per_class={"train": 12, "val": 8})


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    BACKBONES.register(NAME, tiny_spec)
    yield
    BACKBONES.unregister(NAME)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file for the tiny net, as a user's own `--weights PATH` would be."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny3.pth"
    torch.save(TinyNet().state_dict(), path)
    return path


def test_its_stages_are_listed_and_have_the_declared_shapes(
    registered: None, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["backbones"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert "early (8 ch, stride 2), middle (16 ch, stride 4), late (32 ch, stride 8)" in line
    spec = tiny_spec()
    assert (spec.partial_freeze_stage, spec.race_stages, spec.early_stages) == (
        "early", ("early", "middle"), ("early", "middle"),
    )  # fmt: skip


@pytest.mark.parametrize(
    "strategy, options",
    [
        ("feature-extract", {"epochs": 2}),
        ("linear-probe", {"stage": "middle", "head": "logreg"}),
        ("finetune", {"epochs": 2, "views": 1}),
    ],
)
def test_trains_predicts_exports_and_reports(
    strategy: str,
    options: dict[str, object],
    registered: None,
    pretrained: Path,
    dataset: Path,
    tmp_path: Path,
) -> None:
    run = tlvision.train(
        dataset, backbone=NAME, weights=str(pretrained), strategy=strategy,
        out=tmp_path / "run", cache_dir=tmp_path / "cache", workers=0, **options,  # type: ignore[arg-type]
    )  # fmt: skip
    assert run.model_info["backbone"] == NAME and run.model_info["strategy"] == strategy
    assert run.model_info["preprocessing"]["crop_size"] == 64
    if strategy == "finetune":  # its own default: up to its third stage from the end frozen
        assert run.model_info["config"]["freeze_until"] == "early"
    image = next((dataset / "val" / "circles").iterdir())
    [prediction] = tlvision.load(run.run_dir).predict(image, top_k=2)
    assert {name for name, _ in prediction.top} == {"circles", "squares"}
    evaluation = run.evaluate(dataset / "val", device="cpu")
    assert evaluation.total == 16
    exported = run.export("onnx")
    sidecar = json.loads(exported.with_name(exported.name + ".json").read_text())
    assert sidecar["backbone"] == NAME and sidecar["parity"]["top1_agreement"] == 1.0
    onnx_prediction = run.predict(image, top_k=2, runtime="onnx")[0]
    assert onnx_prediction.top[0][0] == prediction.top[0][0]
    report = run.report().read_text()
    assert NAME in report and f"--backbone {NAME}" in report
    maps = run.class_maps(image)  # the head as a 1x1 convolution over the 48-px image
    stride = 4 if strategy == "linear-probe" else 8  # the stage the head reads
    assert maps.logits.shape == (2, 48 // stride, 48 // stride)


def test_the_advisor_races_the_stages_it_declares(
    registered: None, pretrained: Path, dataset: Path, tmp_path: Path
) -> None:
    advice = tlvision.advise(
        dataset, backbone=NAME, weights=str(pretrained), cache_dir=tmp_path / "cache"
    )
    raced = {entry["stage"] for entry in advice.details["evidence"]["race"]}
    assert {"early", "middle", None} <= raced
    assert set(advice.probe_accuracy) == {"early", "middle", "top"}
    assert f"--backbone {NAME}" in advice.command
