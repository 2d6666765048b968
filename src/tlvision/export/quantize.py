"""`tlvision export --quantize int8`: ONNX Runtime static quantisation, calibrated on train images.

Int8 weights and activations (QDQ format, per-channel weights) make the file about 4x smaller;
whether it is faster and how much accuracy it costs depends on the CPU and the model, so the
export measures both next to the fp32 file and writes them into the sidecar. An int8 model
cannot match fp32 logits to 1e-4, so its check is the top-1 agreement with the torch model on
the parity images (at least MIN_AGREEMENT) rather than a logit tolerance.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tlvision.errors import UserError
from tlvision.export.parity import (
    ParityImages,
    ParityReport,
    Runner,
    in_batches,
    load_pixels,
    outputs_in_batches,
    torch_runner,
)
from tlvision.models.ood import DEFAULT_VAL_REJECTED, val_threshold
from tlvision.runs.reader import LoadedModel, read_rejection_file, run_splits

CALIBRATION_IMAGES = 64  # train images; more moves the int8 ranges little on a small head task
EVALUATION_IMAGES = 512  # val images for the accuracy comparison (all of a small val split)
MIN_AGREEMENT = 0.9  # int8 top-1 must agree with the torch model on this share of images
Log = Callable[[str], None]


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over batches of train pixels."""

    def __init__(self, pixels: np.ndarray, input_name: str, batch: int = 16) -> None:
        self.batches: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: pixels[start : start + batch]} for start in range(0, len(pixels), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_file(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _Calibration(calibration, "pixels"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )


def images_per_second(run: Runner, pixels: np.ndarray) -> float:
    batch = pixels[:32]
    run(batch)  # warm-up: first-run allocations and kernel selection
    started, repeats = time.perf_counter(), 3
    for _ in range(repeats):
        run(batch)
    return len(batch) * repeats / (time.perf_counter() - started)


def accuracy(run: Runner, images: ParityImages) -> float:
    predicted = in_batches(run, images.pixels).argmax(axis=1)
    return float(np.mean(predicted == images.labels))


def quantize_and_check(
    fp32_path: Path,
    loaded: LoadedModel,
    parity: ParityImages,
    fp32_report: ParityReport,
    log: Log,
    data: Path | None = None,
    *,
    open_file: Callable[[Path], Runner],
) -> ParityReport:
    """Replace the checked fp32 file at `fp32_path` by its int8 version, measured and checked."""
    from tlvision.compute.onnx import agreement

    splits = run_splits(loaded.metadata, data)
    calibration = load_pixels(loaded, splits.samples["train"], limit=CALIBRATION_IMAGES)
    evaluation = load_pixels(loaded, splits.samples["val"], limit=EVALUATION_IMAGES)
    if len(evaluation.pixels) == 0:
        evaluation = parity
    int8_path = fp32_path.with_name(fp32_path.stem + ".int8" + fp32_path.suffix)
    try:
        log(f"quantizing to int8, calibrated on {len(calibration.pixels)} train images ...")
        quantize_file(fp32_path, int8_path, calibration.pixels)
        fp32, int8 = open_file(fp32_path), open_file(int8_path)
        reference = torch_runner(loaded.network().eval())
        difference, agrees = agreement(
            in_batches(reference, parity.pixels), in_batches(int8, parity.pixels)
        )
        int8_logits, int8_scores = outputs_in_batches(int8, evaluation.pixels)
        measured: dict[str, Any] = {
            "fp32_bytes": fp32_path.stat().st_size,
            "int8_bytes": int8_path.stat().st_size,
            "fp32_images_per_second": images_per_second(fp32, parity.pixels),
            "int8_images_per_second": images_per_second(int8, parity.pixels),
            "val_images": len(evaluation.pixels),
            "fp32_val_accuracy": accuracy(fp32, evaluation),
            "int8_val_accuracy": float(np.mean(int8_logits.argmax(axis=1) == evaluation.labels)),
            "min_top1_agreement": MIN_AGREEMENT,
            "fp32_parity": fp32_report.to_json(),
            **own_rejection(loaded, int8_scores),
        }
        log(describe(measured))
        if agrees < MIN_AGREEMENT:
            raise UserError(
                f"int8 model agrees with the torch model on top-1 for only {agrees:.0%} of "
                f"{len(parity.pixels)} images (need {MIN_AGREEMENT:.0%}); use the fp32 export"
            )
        os.replace(int8_path, fp32_path)
    finally:
        int8_path.unlink(missing_ok=True)
    return ParityReport(len(parity.pixels), difference, agrees, {"int8": measured})


def own_rejection(loaded: LoadedModel, int8_scores: np.ndarray | None) -> dict[str, Any]:
    """The int8 file's own rejection threshold, for a run whose file computes the code-space
    score: the run's rule (at most its share of val rejected) applied to the scores this file
    gives the val images, since a client compares this file's scores, not fp32 ones, with the
    sidecar's threshold. Recorded beside it: what the run's fp32 threshold rejects of val through
    this file (the reference set: 0.3412 against 0.3426, 4.6% of val either way)."""
    document = read_rejection_file(loaded.run_dir) if loaded.run_dir is not None else None
    if document is None or int8_scores is None or len(int8_scores) == 0:
        return {}
    share = float(document.get("target_val_rejected", DEFAULT_VAL_REJECTED))
    threshold = val_threshold(int8_scores, share)
    return {
        "rejection": {
            "threshold": threshold,
            "val_rejected": float(np.mean(int8_scores > threshold)),
            "val_images": len(int8_scores),
            "run_threshold": float(document["threshold"]),
            "run_threshold_val_rejected": float(np.mean(int8_scores > document["threshold"])),
        }
    }


def describe(measured: dict[str, Any]) -> str:
    return (
        f"int8 vs fp32: size {measured['int8_bytes'] / 1e6:.1f} MB vs "
        f"{measured['fp32_bytes'] / 1e6:.1f} MB "
        f"({measured['fp32_bytes'] / measured['int8_bytes']:.1f}x smaller); "
        f"{measured['int8_images_per_second']:.1f} vs {measured['fp32_images_per_second']:.1f} "
        f"images/s ({measured['int8_images_per_second'] / measured['fp32_images_per_second']:.2f}"
        f"x); val accuracy {measured['int8_val_accuracy']:.4f} vs "
        f"{measured['fp32_val_accuracy']:.4f} on {measured['val_images']} images"
        + (
            f"; rejection threshold {own['threshold']:.4f} (the run's {own['run_threshold']:.4f} "
            f"rejects {own['run_threshold_val_rejected']:.0%} of val through this file)"
            if (own := measured.get("rejection"))
            else ""
        )
    )
