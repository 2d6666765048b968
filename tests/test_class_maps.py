"""Class maps: the head read as a 1x1 conv over the whole image, for every kind of run."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.data.images import load_rgb_image
from tlvision.inference.class_maps import (
    class_mapper,
    class_maps,
    fit_image,
    open_class_mapper,
    overlay_png,
)
from tlvision.models.backbone import get_backbone
from tlvision.models.maps import ClassMapNetwork
from tlvision.models.network import replace_head
from tlvision.models.pixels import PixelNormalize
from tlvision.runs.reader import LoadedModel, load_run_model
from tlvision.training.fit import fit


def random_loaded(backbone_name: str, classes: int = 3) -> LoadedModel:
    """A randomly initialised full model of `backbone_name` with a `classes`-way head."""
    backbone = get_backbone(backbone_name)
    torch.manual_seed(0)
    model = backbone.build()
    replace_head(model, backbone, classes)
    names = tuple(f"class{index}" for index in range(classes))
    metadata = {"classes": list(names), "backbone": backbone_name, "strategy": "finetune"}
    preprocessing = backbone.default_weights.preprocessing
    return LoadedModel(model.eval(), backbone, names, preprocessing, metadata)


def pixels_of(height: int, width: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("backbone_name", ["mobilenet_v2", "resnet18"])
def test_mean_of_maps_is_the_models_logits(backbone_name: str, one_torch_thread: None) -> None:
    """Global average pool then linear == linear at every location then average."""
    loaded = random_loaded(backbone_name)
    network = ClassMapNetwork(loaded.model, loaded.backbone, loaded.preprocessing)
    pixels = pixels_of(96, 160)
    with torch.inference_mode():
        maps = network(pixels)
        logits = loaded.model(PixelNormalize(loaded.preprocessing)(pixels))
    assert maps.shape == (1, 3, 3, 5)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone_name", ["mobilenet_v3_large", "convnext_tiny"])
def test_layers_between_pool_and_head_run_per_location(
    backbone_name: str, one_torch_thread: None
) -> None:
    """A 1x1 image has one location: its map must equal the model's logits exactly."""
    loaded = random_loaded(backbone_name)
    network = ClassMapNetwork(loaded.model, loaded.backbone, loaded.preprocessing)
    pixels = pixels_of(32, 32)
    with torch.inference_mode():
        maps = network(pixels)
        logits = loaded.model(PixelNormalize(loaded.preprocessing)(pixels))
        assert network(pixels_of(64, 128)).shape == (1, 3, 2, 4)
    assert maps.shape == (1, 3, 1, 1)
    torch.testing.assert_close(maps[:, :, 0, 0], logits, atol=1e-4, rtol=1e-4)


def test_linear_probe_maps_come_from_its_stage(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe"
    config = TrainConfig(
        data_dir=tiny_dataset, out_dir=out, strategy="linear-probe", stage="stage2",
        input_size=64, epochs=1, batch_size=8, num_workers=0, device="cpu",
    )  # fmt: skip
    fit(config, log=lambda _message: None)
    loaded = load_run_model(out)
    mapper = class_mapper(loaded)
    image = load_rgb_image(next((tiny_dataset / "val" / "circles").iterdir()))
    pixels = torch.from_numpy(np.array(image)).unsqueeze(0)
    with torch.inference_mode():
        maps = mapper.network(pixels)
        logits = loaded.model(PixelNormalize(loaded.preprocessing)(pixels))
    assert maps.shape[2:] == (6, 6)  # stage2 has stride 8: 48 px -> 6 locations a side
    torch.testing.assert_close(maps.mean(dim=(2, 3)), logits, atol=1e-4, rtol=1e-4)
    written = class_maps(mapper, image)
    assert written.logits.shape == (2, 6, 6)


def test_fit_image_caps_the_long_side_and_rounds_to_the_multiple() -> None:
    assert fit_image(Image.new("RGB", (4000, 1000)), 1).size == (1024, 256)
    assert fit_image(Image.new("RGB", (300, 200)), 32).size == (288, 192)
    assert fit_image(Image.new("RGB", (10, 5)), 1).size == (32, 32)
    unchanged = Image.new("RGB", (640, 480))
    assert fit_image(unchanged, 32).size == (640, 480)


def test_overlay_png_colours_the_hot_corner() -> None:
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    score_map = np.zeros((4, 8), dtype=np.float32)
    score_map[0, 0] = 1.0
    overlay = Image.open(io.BytesIO(overlay_png(image, score_map, value_range=(0.0, 1.0))))
    assert overlay.format == "PNG" and overlay.size == (200, 100)
    rgb = np.asarray(overlay.convert("RGB"))
    hot, cold = rgb[2, 2], rgb[90, 190]
    assert int(hot.sum()) > int(cold.sum()) + 150  # inferno: yellow at 1, black at 0


def test_predict_maps_writes_one_png_per_image(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    config = TrainConfig(
        data_dir=tiny_dataset, out_dir=out, strategy="finetune", weights="none",
        input_size=48, epochs=1, batch_size=8, num_workers=0, device="cpu",
    )  # fmt: skip
    fit(config, log=lambda _message: None)
    images = tiny_dataset / "val" / "squares"
    maps_dir = tmp_path / "maps"
    status = main(["predict", str(out), str(images), "--top-k", "2", "--maps", str(maps_dir)])
    assert status == 0
    written = sorted(maps_dir.iterdir())
    assert [path.name for path in written] == sorted(f"{p.stem}.maps.png" for p in images.iterdir())
    with Image.open(written[0]) as figure:  # the image, then one panel per top class
        assert figure.size == (48 * 3, 48)


def test_bees_map_peaks_where_the_bee_is(reference_data: Path, tmp_path: Path) -> None:
    """A val bee pasted in the bottom-right corner of a plain 640x480 background: the bees map
    is highest inside the pasted bee, for each of several bees. (~30 s: the frozen route
    trains on cached CNN codes.)"""
    out = tmp_path / "bees"
    config = TrainConfig(
        data_dir=reference_data, out_dir=out, strategy="feature-extract", epochs=4,
        num_workers=0, device="cpu",
    )  # fmt: skip
    fit(config, log=lambda _message: None)
    mapper = open_class_mapper(out)
    bees = mapper.class_names.index("bees")
    for path in sorted((reference_data / "val" / "bees").glob("*.jpg"))[:6]:
        bee = load_rgb_image(path)
        bee.thumbnail((224, 224))
        canvas = Image.new("RGB", (640, 480), (205, 200, 190))
        canvas.paste(bee, (640 - bee.width, 480 - bee.height))
        maps = class_maps(mapper, canvas)
        assert maps.logits.shape[1:] == (15, 20)  # 640x480 at stride 32: no resize, no crop
        row, column = np.unravel_index(maps.logits[bees].argmax(), (15, 20))
        # The bee covers pixels from (480 - height, 640 - width): locations from there / 32.
        assert row >= (480 - bee.height) // 32 and column >= (640 - bee.width) // 32, path.name
