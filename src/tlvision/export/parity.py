"""The parity check every export passes before it counts as written: the file, run by its own
runtime, against the torch model on real images of the run's classes.

The images come from the run's val split, topped up from train (tlvision.runs.reader.run_splits:
the run's own data or --data), as uint8 pixels at the crop size; class-map exports are also run
at a second, non-square size that the fixed-size check never runs. The check itself is hand-
written on purpose: no library compares an exported graph with torch on a run's own images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from tlvision.compute.onnx import agreement
from tlvision.data.images import BadImageError, load_rgb_image
from tlvision.data.transforms import prepare_pixels
from tlvision.errors import UserError
from tlvision.runs.reader import LoadedModel, run_splits

MAPS_SIZE_OFFSET = (32, -32)  # the maps check also runs at crop + these (height, width)
# pixels -> the file's output: the logits, or (logits, ood scores) for a run whose network
# computes its code-space score (tlvision.models.ood)
Runner = Callable[[np.ndarray], Any]
Outputs = tuple[np.ndarray, np.ndarray | None]  # (logits, ood scores or None)


@dataclass(frozen=True)
class ParityImages:
    pixels: np.ndarray  # (N, crop, crop, 3) uint8
    labels: np.ndarray  # (N,) class indices in the run's class order

    def at_other_size(self, offset: tuple[int, int], count: int = 2) -> np.ndarray:
        """The first `count` images resized by (height, width) offset pixels."""
        height = self.pixels.shape[1] + offset[0]
        width = self.pixels.shape[2] + offset[1]
        resized = [
            np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))
            for pixels in self.pixels[:count]
        ]
        return np.ascontiguousarray(np.stack(resized))


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_logit_difference: float
    top1_agreement: float  # fraction of images whose top-1 class is the same
    extra: dict[str, Any] = field(default_factory=dict)
    # max(1, largest |logit| torch gave): float32 rounding grows with the logits' size, so the
    # tolerance is relative to it (a distance-based head's logits run into the hundreds)
    logit_scale: float = 1.0

    def allowed_difference(self, tolerance: float) -> float:
        return tolerance * self.logit_scale

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "max_abs_logit_difference": self.max_abs_logit_difference,
            "logit_scale": self.logit_scale,
            "top1_agreement": self.top1_agreement,
            **self.extra,
        }


def load_pixels(
    loaded: LoadedModel, samples: list[tuple[Path, int]], limit: int | None = None
) -> ParityImages:
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    for path, label in samples:
        if limit is not None and len(pixels) >= limit:
            break
        try:
            image = load_rgb_image(path)
        except BadImageError:
            continue  # the dataset doctor reports these; a check just uses the readable ones
        pixels.append(prepare_pixels(image, loaded.preprocessing))
        labels.append(label)
    if not pixels:
        return ParityImages(np.empty((0, 0, 0, 3), np.uint8), np.empty(0, np.int64))
    return ParityImages(np.stack(pixels), np.asarray(labels, dtype=np.int64))


def parity_pixels(loaded: LoadedModel, data: Path | None, minimum: int = 32) -> ParityImages:
    """`minimum` readable images: from the val split, topped up from train if it is small."""
    splits = run_splits(loaded.metadata, data)
    samples = list(splits.samples.get("val", [])) + list(splits.samples.get("train", []))
    images = load_pixels(loaded, samples, limit=minimum)
    if len(images.pixels) < minimum:
        raise UserError(
            f"{splits.root}: only {len(images.pixels)} readable images; the export check needs "
            f"at least {minimum}: pass --data with more images of this model's classes"
        )
    return images


def split_outputs(output: np.ndarray | tuple[np.ndarray, ...] | list[np.ndarray]) -> Outputs:
    """A network's or an exported file's output(s) as (float32 logits, float32 scores | None)."""
    if isinstance(output, tuple | list):
        logits = np.asarray(output[0], dtype=np.float32)
        scores = np.asarray(output[1], dtype=np.float32) if len(output) > 1 else None
        return logits, scores
    return np.asarray(output, dtype=np.float32), None


def outputs_in_batches(run: Runner, pixels: np.ndarray) -> Outputs:
    parts = [split_outputs(run(pixels[start : start + 32])) for start in range(0, len(pixels), 32)]
    logits = np.concatenate([part[0] for part in parts])
    if any(part[1] is None for part in parts):
        return logits, None
    return logits, np.concatenate([part[1] for part in parts if part[1] is not None])


def in_batches(run: Runner, pixels: np.ndarray) -> np.ndarray:
    return outputs_in_batches(run, pixels)[0]


def torch_runner(network: nn.Module) -> Runner:
    def run(pixels: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        with torch.inference_mode():
            output = network(torch.from_numpy(pixels))
        if isinstance(output, tuple):
            return tuple(tensor.float().numpy() for tensor in output)
        result: np.ndarray = output.float().numpy()
        return result

    return run


def check_parity(
    network: nn.Module, exported: Runner, images: ParityImages, *, class_maps: bool
) -> ParityReport:
    """Torch vs the exported file on the parity images (and, for maps, a second size)."""
    reference = torch_runner(network)
    expected, expected_scores = outputs_in_batches(reference, images.pixels)
    got, got_scores = outputs_in_batches(exported, images.pixels)
    difference, agrees = agreement(expected, got)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    # a multi-label model's outputs are sigmoid(logit) per class: where large logits make float32
    # round-off exceed the logit tolerance, the probabilities still agree (the exporter checks)
    extra: dict[str, Any] = {
        "max_abs_sigmoid_difference": float(np.abs(_sigmoid(expected) - _sigmoid(got)).max())
    }
    if expected_scores is not None:  # the code-space ood score: absolute, it lies in [0, 2]
        extra["max_abs_ood_score_difference"] = (
            float("inf")
            if got_scores is None or got_scores.shape != expected_scores.shape
            else float(np.abs(expected_scores.astype(np.float64) - got_scores).max())
        )
    if class_maps:
        odd = images.at_other_size(MAPS_SIZE_OFFSET)
        odd_difference, odd_agrees = agreement(reference(odd), exported(odd))
        extra["other_size"] = {"shape": list(odd.shape), "max_abs": odd_difference}
        difference, agrees = max(difference, odd_difference), min(agrees, odd_agrees)
    return ParityReport(len(images.pixels), difference, agrees, extra, logit_scale=scale)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -60.0, 60.0)))
