"""One interface over the runtimes a trained run can be served with: torch eager or ONNX Runtime.

Both take what a decoder gives, uint8 RGB pixels (N, H, W, 3) already resized and centre-cropped
by `prepare_pixels`, and return float32 logits; the scaling and normalisation are inside the
model (see tlvision.models.pixels), so both give `predict`'s probabilities to float rounding.

"auto" picks ONNX Runtime on CPU when it is installed: benchmarks/export_runtime.py measures it
3-4x faster than torch eager there (see benchmarks/RESULTS.md). The ONNX file is exported into
RUN/export/ on first use, with the same parity check as `tlvision export`; the export costs about
10 s, so `choose_runtime` leaves a handful of images on torch until an export exists.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from tlvision.codes.onnx_forward import onnx_session, onnxruntime_installed
from tlvision.config import RUNTIMES
from tlvision.errors import UserError
from tlvision.models.pixels import PixelClassifier, prepare_pixels
from tlvision.models.weights import Preprocessing
from tlvision.runs.checkpoint import LoadedModel, load_run_model

ONNX_THREADS = 2  # intra-op threads per session: this project's reference CPU has 2 cores
EXPORT_DIR = "export"
RUNTIME_ONNX_FILE = "model.onnx"
# Below this many images a first ONNX export (about 10 s) costs more than ONNX Runtime saves over
# torch eager (about 45 against 200 img/s on 2 cores): the export pays from about 550 images.
EXPORT_PAYS_FROM_IMAGES = 500

__all__ = [
    "RUNTIMES",
    "Classifier",
    "OnnxClassifier",
    "TorchClassifier",
    "choose_runtime",
    "open_classifier",
    "prepare_pixels",
]


class Classifier(Protocol):
    class_names: tuple[str, ...]
    preprocessing: Preprocessing  # from the run's model.json
    runtime: str  # "torch" or "onnx"

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB at the crop size -> (N, num_classes) float32 logits."""
        ...


def check_pixels(pixels: np.ndarray, crop_size: int) -> None:
    expected = (crop_size, crop_size, 3)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != expected:
        raise ValueError(
            f"pixels must be uint8 (N, {crop_size}, {crop_size}, 3); got {pixels.dtype} "
            f"{pixels.shape}: use prepare_pixels"
        )


class TorchClassifier:
    runtime = "torch"

    def __init__(self, loaded: LoadedModel, device: torch.device | None = None) -> None:
        self.class_names = loaded.class_names
        self.preprocessing = loaded.preprocessing
        self.metadata = loaded.metadata
        self.device = device or torch.device("cpu")
        self.network = PixelClassifier(loaded.model, loaded.preprocessing).to(self.device).eval()

    @torch.inference_mode()
    def logits(self, pixels: np.ndarray) -> np.ndarray:
        check_pixels(pixels, self.preprocessing.crop_size)
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        output: np.ndarray = self.network(batch).float().cpu().numpy()
        return output


class OnnxClassifier:
    runtime = "onnx"

    def __init__(self, path: Path, loaded: LoadedModel, threads: int = ONNX_THREADS) -> None:
        self.class_names = loaded.class_names
        self.preprocessing = loaded.preprocessing
        self.metadata = loaded.metadata
        self.path = path
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        check_pixels(pixels, self.preprocessing.crop_size)
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(pixels)})
        return np.asarray(outputs[0], dtype=np.float32)


def runtime_onnx_path(run_dir: Path) -> Path:
    return run_dir / EXPORT_DIR / RUNTIME_ONNX_FILE


def ensure_onnx_export(run_dir: Path, log: Any = None) -> Path:
    """RUN/export/model.onnx, exported and parity-checked now unless a current one is there."""
    from tlvision.export.exporter import ExportRequest, export_is_current, export_model

    path = runtime_onnx_path(run_dir)
    if export_is_current(path, run_dir, kind="classifier"):
        return path
    path.parent.mkdir(exist_ok=True)
    export_model(ExportRequest(run_dir=run_dir, format="onnx", out=path), log=log)
    return path


def choose_runtime(
    requested: str,
    *,
    device_type: str,
    onnx_installed: bool,
    export_exists: bool,
    image_count: int | None,
) -> str:
    """ "torch" or "onnx" for `requested` (auto, torch or onnx); image_count None: unknown, a
    stream. ONNX Runtime is the CPU runtime here; on a GPU torch keeps the model on the device."""
    if requested not in RUNTIMES:
        raise UserError(f"unknown runtime {requested!r}; choose one of {', '.join(RUNTIMES)}")
    if requested != "auto":
        return requested
    if device_type != "cpu" or not onnx_installed:
        return "torch"
    if export_exists or image_count is None or image_count >= EXPORT_PAYS_FROM_IMAGES:
        return "onnx"
    return "torch"


def runtime_for(
    run_dir: Path, requested: str, device: torch.device, image_count: int | None
) -> str:
    """choose_runtime for this run directory, this machine and `device`."""
    return choose_runtime(
        requested, device_type=device.type, onnx_installed=onnxruntime_installed(),
        export_exists=runtime_onnx_path(run_dir).is_file(), image_count=image_count,
    )  # fmt: skip


def open_classifier(
    run_dir: Path,
    runtime: str = "auto",
    *,
    onnx_threads: int = ONNX_THREADS,
    device: torch.device | None = None,
    image_count: int | None = None,
) -> Classifier:
    """The run's classifier on `runtime`: torch, onnx, or auto (see choose_runtime; when the
    ONNX export fails its parity check, auto falls back to torch, saying why on stderr)."""
    device = device or torch.device("cpu")
    chosen = runtime_for(run_dir, runtime, device, image_count)
    loaded = load_run_model(run_dir)
    if chosen == "torch":
        return TorchClassifier(loaded, device)
    if device.type != "cpu":
        raise UserError("--runtime onnx runs on the CPU; use --device cpu or --runtime torch")
    if not onnxruntime_installed():
        raise UserError(
            "--runtime onnx needs onnxruntime: pip install 'tlvision[export]', or use torch"
        )
    try:
        path = ensure_onnx_export(run_dir, log=lambda message: print(message, file=sys.stderr))
    except (UserError, OSError) as error:
        if runtime == "onnx":
            raise UserError(f"--runtime onnx: the ONNX export failed: {error}") from error
        print(f"runtime auto: using torch, the ONNX export failed: {error}", file=sys.stderr)
        return TorchClassifier(loaded, device)
    return OnnxClassifier(path, loaded, onnx_threads)
