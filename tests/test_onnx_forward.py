"""Code extraction in ONNX Runtime: the same codes as torch, for any batch size and stage set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tlvision.codes import onnx_forward as onnx_forward_module
from tlvision.codes.cache import VAL_VIEW, CodesSpec
from tlvision.codes.extraction import extract_codes
from tlvision.codes.onnx_forward import (
    ONNX_FROM_IMAGES,
    OnnxForward,
    fastest_forward,
    onnx_forward,
    use_onnx_runtime,
)
from tlvision.codes.runtime_choice import ONNX, TORCH, Timing, choices_dir, faster
from tlvision.data.images import load_rgb_image
from tlvision.data.transforms import build_transforms
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights, create_model, preprocessing_for
from tlvision.models.stages import StageCodes

STAGES = (None, "stage3")


@pytest.fixture(scope="module")
def pretrained_codes() -> tuple[StageCodes, object]:
    backbone = get_backbone("mobilenet_v2")
    weights = choose_weights(backbone, None)
    model = create_model(backbone, 2, weights).eval()
    return StageCodes(model, backbone, STAGES).eval(), preprocessing_for(backbone, weights)


def eager_codes(extractor: StageCodes, images: torch.Tensor) -> dict[str | None, torch.Tensor]:
    with torch.inference_mode():
        return extractor(images)  # type: ignore[no-any-return]


def test_onnx_forward_gives_torch_codes_for_any_batch_size(
    pretrained_codes: tuple[StageCodes, object], reference_data: Path
) -> None:
    extractor, preprocessing = pretrained_codes
    transform = build_transforms(preprocessing)["val"]  # type: ignore[arg-type]
    paths = sorted((reference_data / "val").rglob("*.jpg"))[:7]
    images = torch.stack([transform(load_rgb_image(path)) for path in paths])
    runner = onnx_forward(extractor, images, threads=2)
    assert runner is not None
    for batch in (images[:1], images):  # exported with 2 images: the batch is dynamic
        ours, expected = runner(batch), eager_codes(extractor, batch)
        assert isinstance(ours, dict) and set(ours) == set(STAGES)
        for stage in STAGES:
            assert ours[stage].shape == expected[stage].shape
            torch.testing.assert_close(ours[stage], expected[stage], rtol=1e-4, atol=1e-4)


def test_extraction_over_many_images_runs_in_onnx_runtime_with_torch_codes(
    pretrained_codes: tuple[StageCodes, object],
    reference_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extractor, preprocessing = pretrained_codes
    runners: list[OnnxForward | None] = []

    def recorded(*arguments: Any, **keywords: Any) -> OnnxForward | None:
        runners.append(onnx_forward(*arguments, **keywords))  # the real export, only recorded
        return runners[-1]

    monkeypatch.setattr(onnx_forward_module, "onnx_forward", recorded)
    paths = sorted((reference_data / "val").rglob("*.jpg"))
    assert len(paths) >= ONNX_FROM_IMAGES  # so extract_codes takes ONNX Runtime
    specs = [
        CodesSpec("mobilenet_v2", "IMAGENET1K_V1", preprocessing, stage, VAL_VIEW)  # type: ignore[arg-type]
        for stage in STAGES
    ]
    codes = extract_codes(extractor, paths, specs=specs, cache=None)
    assert len(runners) == 1 and isinstance(runners[0], OnnxForward)
    # The loader hands over uint8 pixels; scaling and normalising happen inside the graph.
    [graph_input] = runners[0].session.get_inputs()
    assert graph_input.type == "tensor(uint8)" and graph_input.shape[1:] == [224, 224, 3]
    transform = build_transforms(preprocessing)["val"]  # type: ignore[arg-type]
    checked = [0, 50, len(paths) - 1]
    expected = eager_codes(
        extractor, torch.stack([transform(load_rgb_image(paths[i])) for i in checked])
    )
    for stage in STAGES:
        assert codes[stage].shape[0] == len(paths)
        np.testing.assert_allclose(
            codes[stage][checked], expected[stage].numpy(), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize(
    ("device", "count", "installed", "expected"),
    [
        ("cpu", ONNX_FROM_IMAGES, True, True),
        ("cpu", ONNX_FROM_IMAGES - 1, True, False),  # the export would cost more than it saves
        ("cuda", 10_000, True, False),  # the GPU keeps torch
        ("cpu", 10_000, False, False),  # onnxruntime not installed
    ],
)
def test_when_extraction_uses_onnx_runtime(
    device: str, count: int, installed: bool, expected: bool
) -> None:
    assert (
        use_onnx_runtime(device_type=device, image_count=count, onnx_installed=installed)
        is expected
    )


def test_which_runtime_is_measured_once_on_this_machine_and_remembered(
    pretrained_codes: tuple[StageCodes, object],
    reference_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no choice from another test
    extractor, preprocessing = pretrained_codes
    transform = build_transforms(preprocessing)["val"]  # type: ignore[arg-type]
    paths = sorted((reference_data / "val").rglob("*.jpg"))[:6]
    images = torch.stack([transform(load_rgb_image(path)) for path in paths])
    cpu = torch.device("cpu")

    first = fastest_forward(extractor, images, ONNX_FROM_IMAGES, cpu)
    [choice_file] = list(choices_dir().glob("*.json"))
    measured = json.loads(choice_file.read_text())
    assert measured["images"] == len(images) and measured["torch_seconds"] > 0
    assert measured["chose"] == faster(
        Timing(measured["torch_seconds"], measured["onnx_seconds"], len(images))
    )
    assert isinstance(first, OnnxForward) is (measured["chose"] == ONNX)

    # The next pass reads the remembered timings instead of measuring: steer them both ways.
    for torch_seconds, onnx_seconds, runs_onnx in ((0.001, 1.0, False), (1.0, 0.001, True)):
        remembered = {**measured, "torch_seconds": torch_seconds, "onnx_seconds": onnx_seconds}
        choice_file.write_text(json.dumps(remembered))
        forward = fastest_forward(extractor, images, ONNX_FROM_IMAGES, cpu)
        assert isinstance(forward, OnnxForward) is runs_onnx
        assert (forward is extractor) is not runs_onnx
        assert json.loads(choice_file.read_text()) == remembered  # read, not measured again
    assert len(list(choices_dir().glob("*.json"))) == 1


def test_the_faster_measured_runtime_wins() -> None:
    assert faster(Timing(torch_seconds=0.4, onnx_seconds=0.1, images=16)) == ONNX
    assert faster(Timing(torch_seconds=0.1, onnx_seconds=0.4, images=16)) == TORCH
    assert faster(Timing(torch_seconds=0.2, onnx_seconds=0.2, images=16)) == TORCH  # a tie
