"""`tlvision export`: the run's model as a file in a registered format, proven to match.

The graph takes uint8 RGB pixels, NHWC (what image decoders give), with a dynamic batch size;
the backbone's scaling and normalisation are inside (tlvision.models.pixels). `class_maps`
exports the fully convolutional variant instead (tlvision.models.maps): any height and width
in, per-class score maps out.

Nothing is declared done before it is checked: the file is written under a temporary name,
opened by its own runtime and compared with the torch model on 32 images of the run's data
(its val split, topped up from train; tlvision.export.parity); only when every top-1 agrees and
the largest logit difference is within the tolerance is it renamed into place, next to a JSON
sidecar that says what it is and what the check measured. The formats are a registry
(tlvision.export.format): ONNX and TorchScript are built in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlvision.errors import DiskFullError, UserError, writing
from tlvision.export.format import EXPORT_FORMATS, ExportFormat
from tlvision.export.input_rules import input_section, output_section, preprocessing_section
from tlvision.export.parity import ParityReport, check_parity, parity_pixels
from tlvision.jsonio import write_json_atomic
from tlvision.models.maps import ClassMapNetwork
from tlvision.models.weights import sha256_of_file
from tlvision.runs.layout import CODE_DISTANCE, EXPORT_DIR, MODEL_WEIGHTS, OOD_CODES_FILE
from tlvision.runs.reader import LoadedModel, load_run_model, read_rejection_file

# max abs logit difference allowed for an fp32 export, per unit of the largest |logit| (or of 1)
TOLERANCE = 1e-4
QUANTIZATIONS = ("int8",)
Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    run_dir: Path
    format: str = "onnx"
    out: Path | None = None  # default: RUN/export/model[-maps][-int8]<the format's suffix>
    class_maps: bool = False
    quantize: str | None = None  # "int8", for a format that has it
    data: Path | None = None  # images for the check; default: the run's data_dir
    tolerance: float = TOLERANCE
    min_images: int = 32


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def default_out(request: ExportRequest) -> Path:
    name = "model" + ("-maps" if request.class_maps else "")
    name += f"-{request.quantize}" if request.quantize else ""
    return request.run_dir / EXPORT_DIR / (name + EXPORT_FORMATS.get(request.format).suffix)


def export_is_current(path: Path, run_dir: Path, *, kind: str | None = None) -> bool:
    """True when `path` and its sidecar exist, match each other and the run's weights (and,
    given `kind`, the export is an unquantized one of that kind: "classifier" or "class-maps")."""
    sidecar = sidecar_path(path)
    if not path.is_file() or not sidecar.is_file():
        return False
    try:
        document = json.loads(sidecar.read_text())
        return bool(
            document["file_sha256"] == sha256_of_file(path)
            and document["source"]["model_sha256"] == sha256_of_file(run_dir / MODEL_WEIGHTS)
            # rejection recalibrated since (`tlvision calibrate`): another score output
            and document["source"].get("ood_codes_sha256") == ood_codes_sha256(run_dir)
            and (kind is None or (document["kind"] == kind and not document["quantized"]))
        )
    except (KeyError, TypeError, ValueError):
        return False


def validate_request(request: ExportRequest) -> ExportFormat:
    """The request's format, once everything about the request has been checked."""
    export_format = EXPORT_FORMATS.get(request.format)
    if request.quantize is not None and request.quantize not in QUANTIZATIONS:
        raise UserError(f"--quantize {request.quantize}: choose one of {', '.join(QUANTIZATIONS)}")
    if request.quantize and (export_format.quantize is None or request.class_maps):
        quantized = [name for name in EXPORT_FORMATS if EXPORT_FORMATS.get(name).quantize]
        raise UserError(
            f"--quantize applies to --format {' or '.join(quantized)} without --class-maps"
        )
    if request.tolerance < 0:
        raise UserError(f"the parity tolerance {request.tolerance}: must be >= 0")
    missing = export_format.missing()
    if missing:
        raise UserError(
            f"--format {export_format.name} needs {', '.join(missing)}: {export_format.install}"
        )
    return export_format


def build_network(loaded: LoadedModel, class_maps: bool, ood_output: bool = True) -> nn.Module:
    """The network the file holds: class maps, or the classifier (with the code-space ood score
    as a second output when the run has one and the format takes it)."""
    if class_maps:
        stage = loaded.metadata.get("stage")
        return ClassMapNetwork(loaded.model, loaded.backbone, loaded.preprocessing, stage)
    if not ood_output:
        loaded = dataclasses.replace(loaded, ood=None)
    return loaded.network().eval()


def parity_failure(
    report: ParityReport, request: ExportRequest, path: Path, *, multi_label: bool = False
) -> str | None:
    """Why the written file fails the check, or None. A multi-label model's outputs are
    sigmoid probabilities per class: those are held to the tolerance instead of the logits."""
    sigmoid_difference = report.extra.get("max_abs_sigmoid_difference")
    if (
        multi_label
        and report.top1_agreement == 1.0
        and sigmoid_difference is not None
        and sigmoid_difference <= request.tolerance
    ):
        return None
    score_difference = report.extra.get("max_abs_ood_score_difference")
    if score_difference is not None and not score_difference <= request.tolerance:
        return (
            f"{path}: parity check failed on {report.images} images: the ood score differs by "
            f"{score_difference:.3g} (need <= {request.tolerance:.3g}); the file was not written. "
            "Report this with your torch and runtime versions, or try another --format"
        )
    allowed = report.allowed_difference(request.tolerance)
    if report.top1_agreement < 1.0 or not report.max_abs_logit_difference <= allowed:
        return (
            f"{path}: parity check failed on {report.images} images: top-1 agreement "
            f"{report.top1_agreement:.3f} (need 1.0), max abs logit difference "
            f"{report.max_abs_logit_difference:.3g} (need <= {allowed:.3g}); the file "
            "was not written. Report this with your torch and runtime versions, or try another "
            "--format"
        )
    return None


def sidecar(
    loaded: LoadedModel, request: ExportRequest, path: Path, report: ParityReport, seconds: float
) -> dict[str, Any]:
    """What the file is, what it takes and gives, where it came from and what the check found."""
    export_format = EXPORT_FORMATS.get(request.format)
    preprocessing = loaded.preprocessing
    multiple = loaded.backbone.input_multiple
    return {
        "file": path.name,
        "file_sha256": sha256_of_file(path),
        "format": request.format,
        "exporter": export_format.exporter,
        "kind": "class-maps" if request.class_maps else "classifier",
        "quantized": request.quantize,
        "input": input_section(
            preprocessing, class_maps=request.class_maps, side_multiple=multiple
        ),
        "output": _output(loaded.metadata, request.class_maps),
        **_second_output(loaded, request),
        **_multi_label_fields(loaded.metadata),
        "preprocessing": preprocessing_section(
            preprocessing, class_maps=request.class_maps, side_multiple=multiple
        ),
        "classes": list(loaded.class_names),
        "backbone": loaded.backbone.name,
        "weights": loaded.metadata.get("weights"),
        "strategy": loaded.metadata.get("strategy"),
        "stage": loaded.metadata.get("stage"),
        "source": {
            "run_dir": str(request.run_dir.absolute()),
            "model_sha256": sha256_of_file(request.run_dir / MODEL_WEIGHTS),
            "ood_codes_sha256": ood_codes_sha256(request.run_dir),
        },
        "versions": {
            "tlvision": metadata.version("tlvision"),
            "torch": torch.__version__,
            **export_format.versions(),
        },
        "notes": export_format.notes,
        "parity": {
            **report.to_json(),
            "tolerance": None if request.quantize else request.tolerance,
        },
        "export_seconds": round(seconds, 2),
        **(
            {}
            if request.class_maps
            else rejection_of_file(request.run_dir, has_ood_output(request.format), report)
        ),
    }


REJECTION_FORMULAS = {
    "energy": "score = -logsumexp(logits)",
    "max-softmax": "score = 1 - max(softmax(logits))",
    CODE_DISTANCE: "score = 1 - mean of the k largest cosine similarities between the image's "
    "codes (the head's input) and the run's train codes; computed inside the file: its second "
    "output, ood_score",
}


def ood_codes_sha256(run_dir: Path) -> str | None:
    """The train codes the file's ood score compares with (None: a logits score, none)."""
    document = read_rejection_file(run_dir)
    if document is None or document.get("score") != CODE_DISTANCE:
        return None
    path = run_dir / str(document.get("codes_file", OOD_CODES_FILE))
    return sha256_of_file(path) if path.is_file() else None


def _second_output(loaded: LoadedModel, request: ExportRequest) -> dict[str, Any]:
    if request.class_maps or loaded.ood is None or not has_ood_output(request.format):
        return {}
    return {
        "ood_output": {
            "name": "ood_score",
            "shape": ["batch"],
            "meaning": "how unlike the training images (higher: more): "
            + REJECTION_FORMULAS[CODE_DISTANCE].split(";")[0],
        }
    }


def has_ood_output(format_name: str) -> bool:
    return EXPORT_FORMATS.get(format_name).ood_output


def rejection_of_file(run_dir: Path, ood_output: bool, report: ParityReport) -> dict[str, Any]:
    """rejection_for_clients, with the threshold an int8 file calibrated on its own scores
    (tlvision.export.quantize.own_rejection) in place of the run's fp32 one."""
    section = rejection_for_clients(run_dir, ood_output)
    own = report.extra.get("int8", {}).get("rejection")
    if section and own:
        section["rejection"].update(
            threshold=own["threshold"],
            val_rejected=own["val_rejected"],
            calibrated=(
                f"on this int8 file's own scores of {own['val_images']} val images; the run's "
                f"fp32 threshold {own['run_threshold']:.4g} rejects "
                f"{own['run_threshold_val_rejected']:.1%} of them through this file"
            ),
        )
    return section


def rejection_for_clients(run_dir: Path, ood_output: bool = True) -> dict[str, Any]:
    """What a client needs to reject unknown inputs as `predict --reject auto` does: the score
    (the file's ood_score output, or computed from its logits) and the threshold calibrated on
    val (RUN/rejection.json)."""
    document = read_rejection_file(run_dir)
    if document is None:
        return {}
    score = str(document["score"])
    code_space: dict[str, Any] = {}
    if score == CODE_DISTANCE:
        code_space = {"output": "ood_score" if ood_output else None, "k": document.get("k", 1)}
        if not ood_output:
            code_space["note"] = (
                "this format's files give the logits only: predict with the run directory, or "
                "export to onnx or torchscript, to reject"
            )
    return {
        "rejection": {
            "score": score,
            "formula": REJECTION_FORMULAS.get(score, score),
            **code_space,
            "threshold": document["threshold"],
            "rule": "unknown when score > threshold: give no class",
            "val_rejected": document.get("val_rejected"),
        }
    }


def _output(metadata: dict[str, Any], class_maps: bool) -> dict[str, Any]:
    """The sidecar's "output": what the file gives and how to read it."""
    section = output_section(class_maps)
    if metadata.get("task") == "multi-label" and not class_maps:
        section["meaning"] = (
            "logits, one per class: sigmoid(logit) is that class's probability; a class is "
            "predicted when it reaches its threshold (thresholds)"
        )
    return section


def _multi_label_fields(metadata: dict[str, Any]) -> dict[str, Any]:
    """A multi-label model's task and per-class thresholds (tuned on val), as model.json has
    them; nothing for a single-label one."""
    if metadata.get("task") != "multi-label":
        return {}
    return {"task": "multi-label", "thresholds": metadata.get("thresholds")}


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def export_model(request: ExportRequest, log: Log | None = None) -> dict[str, Any]:
    """Export, check, and only then put the file and its sidecar in place; returns the sidecar."""
    log = log or (lambda _message: None)
    export_format = validate_request(request)
    started = time.perf_counter()
    loaded = load_run_model(request.run_dir)
    out = request.out or default_out(request)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = parity_pixels(loaded, request.data, request.min_images)
    network = build_network(loaded, request.class_maps, export_format.ood_output)
    temporary = temporary_path(out)
    try:
        log(f"exporting {request.format} to {out} ...")
        example = torch.from_numpy(images.pixels[:2].copy())
        write_file(export_format, network, example, temporary, request)
        runner = export_format.open(temporary)
        report = check_parity(network, runner, images, class_maps=request.class_maps)
        multi_label = loaded.metadata.get("task") == "multi-label"
        failure = parity_failure(report, request, out, multi_label=multi_label)
        if failure:
            raise UserError(failure)
        if request.quantize and export_format.quantize is not None:
            report = export_format.quantize(temporary, loaded, images, report, log, request.data)
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


def write_file(
    export_format: ExportFormat,
    network: nn.Module,
    example: torch.Tensor,
    path: Path,
    request: ExportRequest,
) -> None:
    """Run the format's writer; its failure is the user's to know about, in one line."""
    try:
        out = request.out or default_out(request)
        needed = sum(tensor.nbytes for tensor in network.state_dict().values())
        with writing(out, needed=needed, temporary=path, then="export again"):
            export_format.write(network, example, path, request.class_maps)
    except DiskFullError:
        raise  # another format would not help
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        raise UserError(
            f"{request.run_dir}: the {request.format} exporter failed ({type(error).__name__}: "
            f"{first_line}); try another --format ({', '.join(EXPORT_FORMATS)})"
        ) from error
