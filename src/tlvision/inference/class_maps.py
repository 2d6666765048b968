"""Class maps: the trained classifier read as a fully convolutional net, on any image size.

Global average pooling then a linear layer equals a linear layer applied at every location (a
1x1 convolution) then averaging, so running the conv body on a whole image and the head as a
1x1 conv gives per-class score maps whose spatial mean is the model's logits. For an
earlier-stage linear probe the map comes from that stage. Backbones with layers between the pool
and the head (mobilenet_v3_large: Linear + Hardswish; convnext: LayerNorm2d) get those layers
applied per location too; their maps are then a per-location reading, not an exact decomposition.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.models.feature_extraction import create_feature_extractor

from tlvision.errors import UserError
from tlvision.models.backbones import BackboneSpec
from tlvision.models.pixels import PixelNormalize
from tlvision.runs.checkpoint import LoadedModel, load_run_model

MAX_SIDE = 1024  # a longer image side is scaled down to this: bounds memory on huge photos
MIN_SIDE = 32  # one location of a stride-32 network
# Layers that act on each location alone: kept as they are in the per-location head.
PER_LOCATION_LAYERS = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.SiLU,
    nn.GELU,
    nn.Identity,
    LayerNorm2d,
)
NOT_AT_INFERENCE = (nn.Dropout, nn.Flatten)  # no-ops in eval mode, or only reshaping


def conv_from_linear(linear: nn.Linear) -> nn.Conv2d:
    """The same weights as a 1x1 convolution: the linear layer at every location."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, linear.in_features, 1, 1))
        conv.bias.copy_(linear.bias)  # type: ignore[union-attr]
    return conv.to(linear.weight.device)


def location_head(model: nn.Module, backbone: BackboneSpec, head: nn.Linear) -> nn.Sequential:
    """The layers from the pooled features to the logits, rewritten to run per location."""
    parent_path, _, _ = backbone.head.rpartition(".")
    if not parent_path:  # the head reads the pooled features directly (resnet, lite0)
        return nn.Sequential(conv_from_linear(head))
    layers: list[nn.Module] = []
    for layer in model.get_submodule(parent_path).children():
        if layer is head:
            layers.append(conv_from_linear(layer))
            return nn.Sequential(*layers)
        if isinstance(layer, nn.Linear):
            layers.append(conv_from_linear(layer))
        elif isinstance(layer, PER_LOCATION_LAYERS):
            layers.append(layer)
        elif not isinstance(layer, NOT_AT_INFERENCE):
            raise UserError(
                f"class maps: {backbone.name} has a {type(layer).__name__} between its pool "
                "and head that cannot run per location; use another backbone for maps"
            )
    raise TypeError(f"{backbone.head} is not a child of {parent_path}")


def _stage_body(loaded: LoadedModel, stage: str) -> nn.Module:
    """A full backbone holding the run's body weights (keys `body.*`), for tracing to `stage`.

    Built fresh from the registry so the feature extraction does not depend on how the saved
    classifier cuts its body; the layers after the stage are never traced, so never run.
    """
    body_state = {
        key.removeprefix("body."): value
        for key, value in loaded.model.state_dict().items()
        if key.startswith("body.")
    }
    full = loaded.backbone.build()
    result = full.load_state_dict(body_state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"body keys not in {loaded.backbone.name}: {result.unexpected_keys}")
    return full.eval()


class ClassMapNetwork(nn.Module):
    """(N, H, W, 3) uint8 RGB of any H, W -> (N, num_classes, h, w) per-location logits."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        backbone = loaded.backbone
        stage = loaded.metadata.get("stage")
        if stage:
            body = _stage_body(loaded, stage)
            output = backbone.stage(stage).output
            head = loaded.model.get_submodule("head")
            assert isinstance(head, nn.Linear)
            self.head = nn.Sequential(conv_from_linear(head))
        else:
            body = loaded.model
            output = backbone.stages[-1].output
            head = loaded.model.get_submodule(backbone.head)
            assert isinstance(head, nn.Linear)
            self.head = location_head(loaded.model, backbone, head)
        self.normalize = PixelNormalize(loaded.preprocessing)
        self.features = create_feature_extractor(body.eval(), return_nodes={output: "map"})
        self.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feature_map = self.features(self.normalize(pixels))["map"]
        maps: torch.Tensor = self.head(feature_map)
        return maps


@dataclass(frozen=True)
class ClassMaps:
    """Per-class score maps of one image: logits at the feature map's resolution."""

    image: Image.Image  # the image as the network saw it (long side capped, sides rounded)
    logits: np.ndarray  # (num_classes, h, w) float32
    class_names: tuple[str, ...]

    def probabilities(self) -> np.ndarray:
        """(num_classes,) softmax of the spatially averaged logits: the whole-image reading."""
        mean = self.logits.mean(axis=(1, 2)).astype(np.float64)
        exponentials = np.exp(mean - mean.max())
        return exponentials / exponentials.sum()

    def probability_maps(self) -> np.ndarray:
        """(num_classes, h, w): softmax over classes at each location."""
        shifted = self.logits - self.logits.max(axis=0, keepdims=True)
        exponentials = np.exp(shifted.astype(np.float64))
        return exponentials / exponentials.sum(axis=0, keepdims=True)

    def top(self, k: int) -> list[tuple[int, str, float]]:
        """(class index, name, probability) of the k most likely classes, most likely first."""
        probabilities = self.probabilities()
        order = np.argsort(-probabilities)[:k]
        return [(int(i), self.class_names[int(i)], float(probabilities[i])) for i in order]


@dataclass(frozen=True)
class ClassMapper:
    network: ClassMapNetwork
    class_names: tuple[str, ...]
    side_multiple: int  # the backbone's input multiple (32 for efficientnet_lite0, else 1)


def class_mapper(loaded: LoadedModel) -> ClassMapper:
    return ClassMapper(
        network=ClassMapNetwork(loaded),
        class_names=loaded.class_names,
        side_multiple=loaded.backbone.input_multiple,
    )


def open_class_mapper(run_dir: Path) -> ClassMapper:
    return class_mapper(load_run_model(run_dir))


def fit_image(image: Image.Image, side_multiple: int, max_side: int = MAX_SIDE) -> Image.Image:
    """The image at its own size, but the long side at most `max_side` and each side a
    multiple of `side_multiple` (at least MIN_SIDE)."""
    image = image.convert("RGB")
    scale = min(1.0, max_side / max(image.size))
    sides = []
    for side in image.size:
        scaled = max(MIN_SIDE, round(side * scale))
        sides.append(max(side_multiple, round(scaled / side_multiple) * side_multiple))
    if tuple(sides) == image.size:
        return image
    return image.resize((sides[0], sides[1]), Image.Resampling.BILINEAR)


@torch.inference_mode()
def class_maps(mapper: ClassMapper, image: Image.Image, *, max_side: int = MAX_SIDE) -> ClassMaps:
    """Per-class score maps for `image` at its own size (no resize to the crop, no crop)."""
    fitted = fit_image(image, mapper.side_multiple, max_side)
    pixels = torch.from_numpy(np.asarray(fitted, dtype=np.uint8).copy()).unsqueeze(0)
    logits = mapper.network(pixels)[0].float().numpy()
    return ClassMaps(image=fitted, logits=logits, class_names=mapper.class_names)


def heat_rgba(
    score_map: np.ndarray, size: tuple[int, int], value_range: tuple[float, float]
) -> Image.Image:
    """The score map coloured (matplotlib's inferno) and scaled up to `size` (width, height)."""
    from matplotlib import colormaps

    low, high = value_range
    scaled = np.clip((score_map - low) / max(high - low, 1e-12), 0.0, 1.0).astype(np.float32)
    smooth = Image.fromarray(scaled, mode="F").resize(size, Image.Resampling.BILINEAR)
    colours = colormaps["inferno"](np.asarray(smooth))  # (H, W, 4) floats in [0, 1]
    return Image.fromarray((colours[..., :3] * 255).astype(np.uint8))


def overlay_image(
    image: Image.Image,
    score_map: np.ndarray,
    *,
    value_range: tuple[float, float] | None = None,
    opacity: float = 0.55,
) -> Image.Image:
    """The heat map over the image. value_range: the scores shown black..yellow; default the
    map's own min..max (pass (0, 1) for probability maps to keep an absolute scale)."""
    if score_map.ndim != 2:
        raise ValueError(f"a score map is (h, w); got shape {score_map.shape}")
    if value_range is None:
        value_range = (float(score_map.min()), float(score_map.max()))
    rgb = image.convert("RGB")
    heat = heat_rgba(score_map, rgb.size, value_range)
    return Image.blend(rgb, heat, opacity)


def overlay_png(
    image: Image.Image, score_map: np.ndarray, *, value_range: tuple[float, float] | None = None
) -> bytes:
    """PNG bytes of the heat map of `score_map` over `image` (any sizes: the map is scaled)."""
    buffer = io.BytesIO()
    overlay_image(image, score_map, value_range=value_range).save(buffer, format="PNG")
    return buffer.getvalue()


def labelled(panel: Image.Image, text: str) -> Image.Image:
    from PIL import ImageDraw

    panel = panel.copy()
    draw = ImageDraw.Draw(panel)
    left, top, right, bottom = draw.textbbox((4, 4), text)
    draw.rectangle((left - 3, top - 3, right + 3, bottom + 3), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255))
    return panel


def maps_figure(maps: ClassMaps, top_k: int) -> Image.Image:
    """The image, then one overlay per top class (its per-location probability, 0..1 scale)."""
    probability_maps = maps.probability_maps()
    panels = [labelled(maps.image, "image")]
    for index, name, probability in maps.top(top_k):
        overlay = overlay_image(maps.image, probability_maps[index], value_range=(0.0, 1.0))
        panels.append(labelled(overlay, f"{name} {probability:.2f}"))
    width, height = maps.image.size
    figure = Image.new("RGB", (width * len(panels), height))
    for position, panel in enumerate(panels):
        figure.paste(panel, (position * width, 0))
    return figure


def write_class_maps(
    mapper: ClassMapper, paths: list[Path], out_dir: Path, *, top_k: int = 1
) -> list[Path]:
    """One PNG per readable image in `out_dir`: the image and its top classes' heat maps."""
    from tlvision.data.images import BadImageError, load_rgb_image

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for path in paths:
        try:
            image = load_rgb_image(path)
        except BadImageError:
            continue  # predict already reported it
        name = f"{path.stem}.maps.png"
        if name in used:  # the same file name in two folders
            name = f"{path.parent.name}-{path.stem}-{len(used)}.maps.png"
        used.add(name)
        figure = maps_figure(class_maps(mapper, image), min(top_k, len(mapper.class_names)))
        figure.save(out_dir / name)
        written.append(out_dir / name)
    return written
