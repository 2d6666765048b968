"""`tlvision export`: the run's model as an ONNX or TorchScript file that is proven to match.

The graph takes uint8 RGB pixels, NHWC (what image decoders give), with a dynamic batch size;
the backbone's scaling and normalisation are inside (tlvision.models.pixels). `class_maps` exports the
fully convolutional variant instead (tlvision.inference.class_maps): any height and width in, per-class
score maps out.

Nothing is declared done before it is checked: the file is written under a temporary name,
loaded by ONNX Runtime (or torch.jit.load) and compared with the torch model on at least 32 val
images; only when every top-1 agrees and the largest logit difference is within the tolerance is
it renamed into place, next to a JSON sidecar that says what it is and what the check measured.

ONNX files come from torch.onnx's torch.export-based ("dynamo") exporter at opset 18: it is the
exporter PyTorch maintains (the TorchScript-based one is deprecated), and opset 18 runs on every
ONNX Runtime since 1.14 and in the other major ONNX runtimes. TorchScript files come from
torch.jit.trace: a .pt that libtorch (C++) loads without Python.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import tlvision
from tlvision.codes.onnx_forward import onnx_session
from tlvision.errors import UserError
from tlvision.export.parity import ParityImages, parity_pixels
from tlvision.inference.runtime import ONNX_THREADS
from tlvision.jsonio import write_json_atomic
from tlvision.models.pixels import INPUT_DTYPE, INPUT_LAYOUT, PixelClassifier
from tlvision.models.weights import sha256_of_file
from tlvision.runs.checkpoint import MODEL_WEIGHTS, LoadedModel, load_run_model

FORMATS = ("onnx", "torchscript")
OPSET = 18
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the exporter's and the check's
TOLERANCE = 1e-4  # max abs logit difference allowed for an fp32 export
MAPS_SIZE_OFFSET = (32, -32)  # the maps check also runs at crop + these (height, width)
Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    run_dir: Path
    format: str = "onnx"
    out: Path | None = None  # default: RUN/export/model[-maps][-int8].onnx|.pt
    class_maps: bool = False
    quantize: str | None = None  # "int8" (ONNX only)
    data: Path | None = None  # images for the check; default: the run's data_dir
    tolerance: float = TOLERANCE
    min_images: int = 32


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_logit_difference: float
    top1_agreement: float  # fraction of images whose top-1 class is the same
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "max_abs_logit_difference": self.max_abs_logit_difference,
            "top1_agreement": self.top1_agreement,
            **self.extra,
        }


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def default_out(request: ExportRequest) -> Path:
    suffix = ".onnx" if request.format == "onnx" else ".pt"
    name = "model" + ("-maps" if request.class_maps else "")
    name += f"-{request.quantize}" if request.quantize else ""
    return request.run_dir / "export" / (name + suffix)


def export_is_current(path: Path, run_dir: Path, *, kind: str | None = None) -> bool:
    """True when `path` and its sidecar exist, match each other and the run's weights (and,
    given `kind`, the export is an unquantized one of that kind: "classifier" or "class-maps")."""
    import json

    sidecar = sidecar_path(path)
    if not path.is_file() or not sidecar.is_file():
        return False
    try:
        document = json.loads(sidecar.read_text())
        return bool(
            document["file_sha256"] == sha256_of_file(path)
            and document["source"]["model_sha256"] == sha256_of_file(run_dir / MODEL_WEIGHTS)
            and (kind is None or (document["kind"] == kind and not document["quantized"]))
        )
    except (KeyError, TypeError, ValueError):
        return False


def validate_request(request: ExportRequest) -> None:
    if request.format not in FORMATS:
        raise UserError(f"--format {request.format!r}: choose one of {', '.join(FORMATS)}")
    if request.quantize not in (None, "int8"):
        raise UserError(f"--quantize {request.quantize!r}: the only choice is int8")
    if request.quantize and (request.format != "onnx" or request.class_maps):
        raise UserError("--quantize int8 applies to --format onnx without --class-maps")
    if request.tolerance < 0:
        raise UserError("the parity tolerance must be >= 0")
    if request.format == "onnx":
        missing = [name for name in ONNX_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(
                f"--format onnx needs {', '.join(missing)}: pip install 'tlvision[export]' "
                "(or use --format torchscript)"
            )


def build_network(loaded: LoadedModel, class_maps: bool) -> nn.Module:
    if class_maps:
        from tlvision.inference.class_maps import ClassMapNetwork

        return ClassMapNetwork(loaded)
    return PixelClassifier(loaded.model, loaded.preprocessing).eval()


def write_onnx(network: nn.Module, example: torch.Tensor, path: Path, class_maps: bool) -> None:
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=4096)}
    if class_maps:
        dims.update({1: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["pixels"],
            output_names=["maps" if class_maps else "logits"],
            dynamic_shapes=({**dims},),
            verbose=False,
        )
    assert program is not None
    program.save(str(path), external_data=False)


def write_torchscript(network: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated, and still the portable .pt
        traced = torch.jit.trace(network, (example,), check_trace=False)
        torch.jit.save(traced, str(path))


def write_file(
    network: nn.Module, example: torch.Tensor, path: Path, request: ExportRequest
) -> None:
    """Run the exporter; its failure is the user's to know about, in one line."""
    try:
        if request.format == "onnx":
            write_onnx(network, example, path, request.class_maps)
        else:
            write_torchscript(network, example, path)
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        raise UserError(
            f"{request.run_dir}: the {request.format} exporter failed ({type(error).__name__}: "
            f"{first_line}); try the other --format"
        ) from error


def exported_runner(path: Path, export_format: str) -> Callable[[np.ndarray], np.ndarray]:
    if export_format == "onnx":
        session = onnx_session(path, ONNX_THREADS)
        name = session.get_inputs()[0].name
        return lambda pixels: np.asarray(session.run(None, {name: pixels})[0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(pixels)).float().numpy()

    return run


def in_batches(run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([run(pixels[start : start + 32]) for start in range(0, len(pixels), 32)])


def torch_runner(network: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return network(torch.from_numpy(pixels)).float().numpy()

    return run


def compare(reference: np.ndarray, exported: np.ndarray) -> tuple[float, float]:
    """(max abs difference, top-1 agreement); maps are compared whole, top-1 on their mean."""
    if reference.shape != exported.shape:
        raise UserError(f"exported model gives shape {exported.shape}, torch {reference.shape}")
    difference = float(np.max(np.abs(reference.astype(np.float64) - exported)))
    if not np.isfinite(exported).all():
        difference = float("inf")
    pooled = (lambda a: a.mean(axis=(2, 3))) if reference.ndim == 4 else (lambda a: a)
    agreement = float(np.mean(pooled(reference).argmax(1) == pooled(exported).argmax(1)))
    return difference, agreement


def check_parity(
    network: nn.Module,
    path: Path,
    request: ExportRequest,
    images: ParityImages,
) -> ParityReport:
    """Torch vs the exported file on the parity images (and, for maps, a second size)."""
    exported = exported_runner(path, request.format)
    reference = torch_runner(network)
    difference, agreement = compare(
        in_batches(reference, images.pixels), in_batches(exported, images.pixels)
    )
    extra: dict[str, Any] = {}
    if request.class_maps:
        odd = images.at_other_size(MAPS_SIZE_OFFSET)
        odd_difference, odd_agreement = compare(reference(odd), exported(odd))
        extra["other_size"] = {"shape": list(odd.shape), "max_abs": odd_difference}
        difference, agreement = max(difference, odd_difference), min(agreement, odd_agreement)
    return ParityReport(len(images.pixels), difference, agreement, extra)


def parity_failure(report: ParityReport, request: ExportRequest, path: Path) -> str | None:
    if report.top1_agreement < 1.0 or not report.max_abs_logit_difference <= request.tolerance:
        return (
            f"{path}: parity check failed on {report.images} images: top-1 agreement "
            f"{report.top1_agreement:.3f} (need 1.0), max abs logit difference "
            f"{report.max_abs_logit_difference:.3g} (need <= {request.tolerance:g}); the file "
            "was not written. Report this with your torch/onnxruntime versions, or use "
            "--format torchscript"
        )
    return None


def runtime_versions(export_format: str) -> dict[str, str]:
    versions = {"tlvision": tlvision.__version__, "torch": torch.__version__}
    if export_format == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions


def sidecar(
    loaded: LoadedModel, request: ExportRequest, path: Path, report: ParityReport, seconds: float
) -> dict[str, Any]:
    preprocessing = loaded.preprocessing
    crop: int | str = preprocessing.crop_size
    return {
        "file": path.name,
        "file_sha256": sha256_of_file(path),
        "format": request.format,
        "opset": OPSET if request.format == "onnx" else None,
        "exporter": "torch.onnx dynamo" if request.format == "onnx" else "torch.jit.trace",
        "kind": "class-maps" if request.class_maps else "classifier",
        "quantized": request.quantize,
        "input": {
            "name": "pixels",
            "dtype": INPUT_DTYPE,
            "layout": INPUT_LAYOUT,
            "shape": ["batch", *(["height", "width"] if request.class_maps else [crop, crop]), 3],
            "colour": "RGB",
            "resize": (
                f"none: any size (sides multiples of {loaded.backbone.input_multiple})"
                if request.class_maps
                else f"the caller's: shorter side to {preprocessing.resize_size} "
                f"({preprocessing.interpolation}, antialiased), then centre crop {crop}x{crop}"
            ),
            "inside_the_graph": "x / 255, then (x - mean) / std per channel",
        },
        "output": {
            "name": "maps" if request.class_maps else "logits",
            "shape": ["batch", "classes", "h", "w"] if request.class_maps else ["batch", "classes"],
            "meaning": "logits (softmax over classes for probabilities)",
        },
        "preprocessing": preprocessing.to_json(),
        "classes": list(loaded.class_names),
        "backbone": loaded.backbone.name,
        "weights": loaded.metadata.get("weights"),
        "strategy": loaded.metadata.get("strategy"),
        "stage": loaded.metadata.get("stage"),
        "source": {
            "run_dir": str(request.run_dir.absolute()),
            "model_sha256": sha256_of_file(request.run_dir / MODEL_WEIGHTS),
        },
        "versions": runtime_versions(request.format),
        "parity": {
            **report.to_json(),
            "tolerance": None if request.quantize else request.tolerance,
        },
        "export_seconds": round(seconds, 2),
    }


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def export_model(request: ExportRequest, log: Log | None = None) -> dict[str, Any]:
    """Export, check, and only then put the file and its sidecar in place; returns the sidecar."""
    log = log or (lambda _message: None)
    validate_request(request)
    started = time.perf_counter()
    loaded = load_run_model(request.run_dir)
    out = request.out or default_out(request)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = parity_pixels(loaded, request.data, request.min_images)
    network = build_network(loaded, request.class_maps)
    temporary = temporary_path(out)
    try:
        log(f"exporting {request.format} to {out} ...")
        example = torch.from_numpy(images.pixels[:2].copy())
        write_file(network, example, temporary, request)
        report = check_parity(network, temporary, request, images)
        failure = parity_failure(report, request, out)
        if failure:
            raise UserError(failure)
        if request.quantize:
            from tlvision.export.quantize import quantize_and_check

            report = quantize_and_check(temporary, loaded, images, report, log, request.data)
        document = sidecar(loaded, request, temporary, report, time.perf_counter() - started)
        document["file"] = out.name
        os.replace(temporary, out)
        write_json_atomic(sidecar_path(out), document)
    finally:
        temporary.unlink(missing_ok=True)
    log(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): parity on {report.images} images, "
        f"top-1 agreement {report.top1_agreement:.3f}, max abs logit difference "
        f"{report.max_abs_logit_difference:.2g}"
    )
    return document
