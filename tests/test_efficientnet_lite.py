"""EfficientNet-Lite0: the architecture builds and runs, and the real converted weights fit it."""

from __future__ import annotations

import pytest
import torch

from tlvision.errors import UserError
from tlvision.models.efficientnet_lite import (
    FEATURE_SIZE,
    HEAD,
    INPUT_SIZE,
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


def test_real_weights_load_strictly(model: torch.nn.Module) -> None:
    try:
        path = ensure_weights_file(weights_spec(), log=False)
    except UserError as error:
        pytest.skip(f"EfficientNet-Lite0 weights unavailable offline: {error}")
    # Runs last: loading into the shared model changes nothing the other tests check.
    model.load_state_dict(load_state_dict_file(path), strict=True)
