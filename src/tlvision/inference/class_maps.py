"""Class maps: per-class score maps of one image at its own size, and their overlays.

The network is tlvision.models.maps.ClassMapNetwork (the head read as a 1x1 convolution over
the whole image); here an image is fitted to it (long side capped, sides rounded to the
backbone's multiple), its maps computed, and drawn over the image as heat maps.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.special import softmax

from tlvision.models.maps import ClassMapNetwork
from tlvision.runs.reader import LoadedModel, load_run_model

MAX_SIDE = 1024  # a longer image side is scaled down to this: bounds memory on huge photos
MIN_SIDE = 32  # one location of a stride-32 network


@dataclass(frozen=True)
class ClassMaps:
    """Per-class score maps of one image: logits at the feature map's resolution."""

    image: Image.Image  # the image as the network saw it (long side capped, sides rounded)
    logits: np.ndarray  # (num_classes, h, w) float32
    class_names: tuple[str, ...]

    def probabilities(self) -> np.ndarray:
        """(num_classes,) softmax of the spatially averaged logits: the whole-image reading."""
        return np.asarray(softmax(self.logits.mean(axis=(1, 2)).astype(np.float64)))

    def probability_maps(self) -> np.ndarray:
        """(num_classes, h, w): softmax over classes at each location."""
        return np.asarray(softmax(self.logits.astype(np.float64), axis=0))

    def top(self, k: int) -> tuple[tuple[str, float], ...]:
        """(class name, probability) of the k most likely classes, most likely first: the
        shape of `Prediction.top` (`class_names.index(name)` is a class's row of the maps)."""
        probabilities = self.probabilities()
        order = np.argsort(-probabilities, kind="stable")[:k]
        return tuple((self.class_names[int(i)], float(probabilities[i])) for i in order)


@dataclass(frozen=True)
class ClassMapper:
    network: ClassMapNetwork
    class_names: tuple[str, ...]
    side_multiple: int  # the backbone's input multiple (32 for efficientnet_lite0, else 1)


def class_mapper(loaded: LoadedModel) -> ClassMapper:
    return ClassMapper(
        network=ClassMapNetwork(
            loaded.model, loaded.backbone, loaded.preprocessing, loaded.metadata.get("stage")
        ),
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
    for name, probability in maps.top(top_k):
        index = maps.class_names.index(name)
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
