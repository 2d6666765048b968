"""The run directory's model: safetensors weights plus a JSON that says how to rebuild it.

model.safetensors holds the trained state dict; model.json holds the classes, backbone, weights
label, preprocessing, strategy and config. Prediction and export need nothing else: no pickle,
no weights download (the architecture is rebuilt empty and the saved tensors fill it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

from tlvision.backbones import BackboneSpec, get_backbone, replace_head
from tlvision.data import Preprocessing
from tlvision.errors import UserError

MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
FORMAT_VERSION = 1


def write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so a reader never sees half a file, even if we are killed."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)


def save_run_model(run_dir: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    temporary = run_dir / f".{MODEL_WEIGHTS}.tmp-{os.getpid()}"
    save_model(model, str(temporary))
    os.replace(temporary, run_dir / MODEL_WEIGHTS)
    write_json_atomic(run_dir / MODEL_JSON, {"format_version": FORMAT_VERSION, **metadata})


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    backbone: BackboneSpec
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    metadata: dict[str, Any]


def read_model_json(run_dir: Path) -> dict[str, Any]:
    json_path = run_dir / MODEL_JSON
    if not (run_dir / MODEL_WEIGHTS).is_file() or not json_path.is_file():
        raise UserError(
            f"{run_dir}: not a tlvision run directory (needs {MODEL_WEIGHTS} and {MODEL_JSON}); "
            "pass the --out directory of a finished `tlvision train`"
        )
    try:
        metadata: dict[str, Any] = json.loads(json_path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{json_path}: not valid JSON ({error}); retrain or restore the file") from error
    return metadata


def build_architecture(metadata: dict[str, Any]) -> tuple[nn.Module, BackboneSpec]:
    """The empty network model.json describes, ready for the saved tensors."""
    backbone = get_backbone(metadata["backbone"])
    model = backbone.build()
    replace_head(model, backbone, len(metadata["classes"]))
    return model, backbone


def load_run_model(run_dir: Path) -> LoadedModel:
    metadata = read_model_json(run_dir)
    model, backbone = build_architecture(metadata)
    weights_path = run_dir / MODEL_WEIGHTS
    try:
        load_model(model, str(weights_path), strict=True)
    except Exception as error:  # noqa: BLE001 - corrupt or foreign file: the user's to fix
        raise UserError(
            f"{weights_path}: cannot load ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "the file is damaged or from another model: retrain into a new --out"
        ) from error
    model.eval()
    return LoadedModel(
        model=model,
        backbone=backbone,
        class_names=tuple(metadata["classes"]),
        preprocessing=Preprocessing.from_json(metadata["preprocessing"]),
        metadata=metadata,
    )
