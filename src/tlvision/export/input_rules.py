"""What an exported file takes, stated exactly: the sidecar's "input" and "preprocessing".

A client that follows these rules gives the file the very pixels `tlvision predict` gives it
(the README's snippets do, and tests/test_export_clients.py runs them against predict). They
restate tlvision.data.images (decoding), tlvision.data.transforms (torchvision's resize and
centre crop) and tlvision.inference.class_maps (the class maps' image at its own size).
"""

from __future__ import annotations

from typing import Any

from tlvision.data.images import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS
from tlvision.data.preprocessing import Preprocessing
from tlvision.models.pixels import INPUT_DTYPE, INPUT_LAYOUT

# Kept equal to tlvision.inference.class_maps.MAX_SIDE / MIN_SIDE (inference is a layer above;
# tests/test_export_clients.py checks they agree).
CLASS_MAPS_MAX_SIDE = 1024
CLASS_MAPS_MIN_SIDE = 32

DECODING = [
    "decode the file with PIL and apply its EXIF orientation tag (PIL.ImageOps.exif_transpose)",
    "modes RGBA, LA, PA, and P with a transparency entry: alpha-composite over opaque white "
    "(255, 255, 255), then RGB",
    "16-bit grayscale (I;16): each value >> 8, then RGB; 32-bit integer (I) and float (F): "
    "scaled from their range to 0..255",
    "every other mode (L, P, CMYK, ...): PIL's convert('RGB')",
    f"refused: over {MAX_IMAGE_PIXELS:,} pixels, or a long side over {MAX_ASPECT_RATIO} times "
    "the short one",
]
INSIDE_THE_GRAPH = "x / 255, then (x - mean) / std per channel (the sidecar's preprocessing)"


def classifier_steps(preprocessing: Preprocessing) -> list[str]:
    resize, crop = preprocessing.resize_size, preprocessing.crop_size
    return [
        *DECODING,
        f"resize with PIL ({preprocessing.interpolation}; PIL antialiases when shrinking) so "
        f"the shorter side is {resize} and the longer is int({resize} * longer / shorter), "
        "truncated as torchvision does; no resize when the image is already that size",
        f"centre crop {crop}x{crop} at left = round((width - {crop}) / 2), top = "
        f"round((height - {crop}) / 2), Python's round (halves to even), as torchvision does",
        f"uint8 RGB, channels last: (batch, {crop}, {crop}, 3)",
    ]


def class_maps_steps(side_multiple: int) -> list[str]:
    maximum, minimum = CLASS_MAPS_MAX_SIDE, CLASS_MAPS_MIN_SIDE
    return [
        *DECODING,
        f"no resize to a fixed size and no crop: scale = min(1, {maximum} / longer side); "
        f"each side s becomes max({minimum}, round(s * scale)), then "
        f"max({side_multiple}, round(s / {side_multiple}) * {side_multiple}), Python's round",
        "resize with PIL (bilinear) only when a side changed",
        "uint8 RGB, channels last: (1, height, width, 3)",
    ]


def input_section(
    preprocessing: Preprocessing, *, class_maps: bool, side_multiple: int
) -> dict[str, Any]:
    """The sidecar's "input": the tensor, and the steps from a file to it."""
    crop = preprocessing.crop_size
    return {
        "name": "pixels",
        "dtype": INPUT_DTYPE,
        "layout": INPUT_LAYOUT,
        "shape": ["batch", *(["height", "width"] if class_maps else [crop, crop]), 3],
        "colour": "RGB",
        "resize": (
            f"the caller's: long side capped at {CLASS_MAPS_MAX_SIDE} px, sides multiples of "
            f"{side_multiple} (see steps)"
            if class_maps
            else f"the caller's: shorter side to {preprocessing.resize_size} "
            f"({preprocessing.interpolation}, antialiased), then centre crop {crop}x{crop}"
        ),
        "steps": class_maps_steps(side_multiple) if class_maps else classifier_steps(preprocessing),
        "inside_the_graph": INSIDE_THE_GRAPH,
    }


def output_section(class_maps: bool) -> dict[str, Any]:
    if class_maps:
        return {
            "name": "maps",
            "shape": ["batch", "classes", "map_height", "map_width"],
            "meaning": "logits at each location: softmax over axis 1 (classes) for each "
            "location's probabilities; softmax of the mean over map_height and map_width for "
            "the whole image's (what predict --maps labels)",
        }
    return {
        "name": "logits",
        "shape": ["batch", "classes"],
        "meaning": "logits (softmax over classes for probabilities)",
    }


def preprocessing_section(
    preprocessing: Preprocessing, *, class_maps: bool, side_multiple: int
) -> dict[str, Any]:
    """The sidecar's "preprocessing": the classifier's resize and crop, or for class maps only
    what applies to them (no 256/224 resize: the image keeps its own size)."""
    if not class_maps:
        return preprocessing.to_json()
    return {
        "max_side": CLASS_MAPS_MAX_SIDE,
        "min_side": CLASS_MAPS_MIN_SIDE,
        "side_multiple": side_multiple,
        "interpolation": "bilinear",
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
    }
