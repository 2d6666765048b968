"""The one classifier interface, over torch or any exported file that serves.

Every path that classifies (predict, streaming, evaluate, the report, serve, the test split at
the end of training) goes through a Classifier: uint8 RGB pixels (N, H, W, 3), already resized
and centre-cropped (tlvision.data.transforms.prepare_pixels), in; float32 logits out, and for a
run whose rejection.json uses the code-space score, that score beside them from the same pass
(`outputs`; tlvision.models.ood). The
scaling and normalisation are inside the model (tlvision.models.pixels), so every runtime gives
`predict`'s probabilities to float rounding.

The runtimes are torch and every registered export format that serves (tlvision.export.format;
ONNX Runtime is built in). "auto" on a CPU with ONNX Runtime installed exports the run into
RUN/export/ on first use, with the same parity check as `tlvision export`, and keeps whichever
of the two classified a batch faster on this machine (timed once, remembered:
tlvision.codes.runtime_choice; on the reference CPU ONNX Runtime, 4.49x torch eager for the
model alone at batch 32 on 2 cores, 1.96-2.54x for predict with its decoding,
benchmarks/RESULTS.md). As that export costs about 10 s, a handful of images (under
EXPORT_PAYS_FROM_IMAGES) stays on torch until an export exists. On a GPU torch keeps the model
on the device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from tlvision.codes.runtime_choice import ONNX, TIMING_IMAGES, choice_key, measured_choice
from tlvision.data.preprocessing import Preprocessing
from tlvision.errors import UserError
from tlvision.export.format import EXPORT_FORMATS, runtime_names
from tlvision.export.parity import Outputs, split_outputs
from tlvision.runs.layout import EXPORT_DIR
from tlvision.runs.reader import LoadedModel, load_run_model

AUTO, TORCH = "auto", "torch"
PREFERRED_CPU_FORMAT = "onnx"  # what auto picks on a CPU, when installed
# Below this many images a first ONNX export (about 10 s) costs more than ONNX Runtime saves over
# torch eager (about 45 against 200 img/s on 2 cores): the export pays from about 550 images.
EXPORT_PAYS_FROM_IMAGES = 500


class Classifier(Protocol):
    class_names: tuple[str, ...]
    preprocessing: Preprocessing  # from the run's model.json
    runtime: str  # "torch", or the export format that runs it

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB at the crop size -> (N, num_classes) float32 logits."""
        ...

    def outputs(self, pixels: np.ndarray) -> Outputs:
        """The logits and, when the network computes it, the (N,) code-space ood score."""
        ...


def check_pixels(pixels: np.ndarray, crop_size: int) -> None:
    expected = (crop_size, crop_size, 3)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != expected:
        raise ValueError(
            f"pixels must be uint8 (N, {crop_size}, {crop_size}, 3); got {pixels.dtype} "
            f"{pixels.shape}: use prepare_pixels"
        )


class TorchClassifier:
    runtime = TORCH

    def __init__(self, loaded: LoadedModel, device: torch.device | None = None) -> None:
        self.class_names = loaded.class_names
        self.preprocessing = loaded.preprocessing
        self.metadata = loaded.metadata
        self.device = device or torch.device("cpu")
        self.network = loaded.network().to(self.device).eval()

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.outputs(pixels)[0]

    @torch.inference_mode()
    def outputs(self, pixels: np.ndarray) -> Outputs:
        check_pixels(pixels, self.preprocessing.crop_size)
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        output = self.network(batch)
        tensors = output if isinstance(output, tuple) else (output,)
        return split_outputs(tuple(tensor.float().cpu().numpy() for tensor in tensors))


class ExportedClassifier:
    """A checked export of the run, run by its format's own runtime."""

    def __init__(self, runtime: str, run: Callable[[np.ndarray], Any], loaded: LoadedModel) -> None:
        self.runtime = runtime
        self.class_names = loaded.class_names
        self.preprocessing = loaded.preprocessing
        self.metadata = loaded.metadata
        self.run = run

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.outputs(pixels)[0]

    def outputs(self, pixels: np.ndarray) -> Outputs:
        check_pixels(pixels, self.preprocessing.crop_size)
        return split_outputs(self.run(np.ascontiguousarray(pixels)))


def export_path(run_dir: Path, format_name: str) -> Path:
    """Where the runtime keeps the run's export in `format_name`."""
    return run_dir / EXPORT_DIR / f"model{EXPORT_FORMATS.get(format_name).suffix}"


def ensure_export(run_dir: Path, format_name: str, log: Any = None) -> Path:
    """RUN/export/model.<suffix>, exported and parity-checked now unless a current one is there."""
    from tlvision.export.exporter import ExportRequest, export_is_current, export_model

    path = export_path(run_dir, format_name)
    if export_is_current(path, run_dir, kind="classifier"):
        return path
    path.parent.mkdir(exist_ok=True)
    export_model(ExportRequest(run_dir=run_dir, format=format_name, out=path), log=log)
    return path


def choose_runtime(
    requested: str,
    *,
    device_type: str,
    preferred_installed: bool,
    export_exists: bool,
    image_count: int | None,
) -> str:
    """ "torch" or a serving format for `requested` (auto, torch or a format); image_count None:
    unknown, a stream. On a GPU torch keeps the model on the device."""
    if requested not in runtime_names():
        names = ", ".join(runtime_names())
        raise UserError(f"unknown runtime {requested!r}; choose one of {names}")
    if requested != AUTO:
        return requested
    if device_type != "cpu" or not preferred_installed:
        return TORCH
    if export_exists or image_count is None or image_count >= EXPORT_PAYS_FROM_IMAGES:
        return PREFERRED_CPU_FORMAT
    return TORCH


def runtime_for(
    run_dir: Path, requested: str, device: torch.device, image_count: int | None
) -> str:
    """choose_runtime for this run directory, this machine and `device`."""
    return choose_runtime(
        requested, device_type=device.type,
        preferred_installed=not EXPORT_FORMATS.get(PREFERRED_CPU_FORMAT).missing(),
        export_exists=export_path(run_dir, PREFERRED_CPU_FORMAT).is_file(),
        image_count=image_count,
    )  # fmt: skip


def open_classifier(
    run_dir: Path,
    runtime: str = AUTO,
    *,
    device: torch.device | None = None,
    image_count: int | None = None,
) -> Classifier:
    """The run's classifier on `runtime`: torch, a serving format, or auto (choose_runtime;
    when the export fails its parity check, auto falls back to torch, saying why on stderr)."""
    return classifier_of(load_run_model(run_dir), runtime, device=device, image_count=image_count)


def classifier_of(
    loaded: LoadedModel,
    runtime: str = AUTO,
    *,
    device: torch.device | None = None,
    image_count: int | None = None,
) -> Classifier:
    """`open_classifier` for a model already loaded; one built in memory runs on torch."""
    device = device or torch.device("cpu")
    if loaded.run_dir is None:
        return TorchClassifier(loaded, device)
    chosen = runtime_for(loaded.run_dir, runtime, device, image_count)
    if chosen == TORCH:
        return TorchClassifier(loaded, device)
    export_format = EXPORT_FORMATS.get(chosen)
    if device.type != "cpu":
        raise UserError(f"--runtime {chosen} runs on the CPU; use --device cpu or --runtime torch")
    if export_format.missing():
        raise UserError(
            f"--runtime {chosen} needs {', '.join(export_format.missing())}: "
            f"{export_format.install}, or use --runtime torch"
        )
    try:
        path = ensure_export(
            loaded.run_dir, chosen, log=lambda message: print(message, file=sys.stderr)
        )
    except (UserError, OSError) as error:
        if runtime != AUTO:
            raise UserError(f"--runtime {chosen}: the export failed: {error}") from error
        print(f"runtime auto: using torch, the {chosen} export failed: {error}", file=sys.stderr)
        return TorchClassifier(loaded, device)
    exported = ExportedClassifier(chosen, export_format.open(path), loaded)
    return exported if runtime != AUTO else faster_here(exported, TorchClassifier(loaded, device))


def faster_here(exported: ExportedClassifier, on_torch: TorchClassifier) -> Classifier:
    """Whichever of the two classifies a batch faster on this machine: timed once on random
    pixels (a CNN's time does not depend on them), then remembered."""
    crop = on_torch.preprocessing.crop_size
    pixels = np.random.default_rng(0).integers(
        0, 256, (TIMING_IMAGES, crop, crop, 3), dtype=np.uint8
    )
    key = choice_key(on_torch.network, torch.from_numpy(pixels), torch.get_num_threads())
    choice = measured_choice(
        key, lambda: on_torch.outputs(pixels), lambda: exported.outputs(pixels), len(pixels)
    )
    return exported if choice == ONNX else on_torch
