"""The run directory's model: safetensors weights plus a JSON that says how to rebuild it.

model.safetensors holds the trained state dict; model.json holds the classes, backbone, weights
label, preprocessing, strategy and config. Prediction and export need nothing else: no pickle,
no weights download (the architecture is rebuilt empty and the saved tensors fill it).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from tlvision.models.backbones import BackboneSpec, get_backbone, replace_head
from tlvision.errors import UserError
from tlvision.jsonio import write_json_atomic
from tlvision.models.stages import StageClassifier
from tlvision.models.weights import Preprocessing

MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
FORMAT_VERSION = 1


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
        raise UserError(
            f"{json_path}: not valid JSON ({error}); retrain or restore the file"
        ) from error
    return metadata


def build_architecture(metadata: dict[str, Any]) -> tuple[nn.Module, BackboneSpec]:
    """The empty network model.json describes, ready for the saved tensors."""
    backbone = get_backbone(metadata["backbone"])
    if metadata.get("stage"):
        # A linear probe on an earlier stage: the body cut at that stage plus its head.
        return StageClassifier(backbone, metadata["stage"], len(metadata["classes"])), backbone
    model = backbone.build()
    replace_head(model, backbone, len(metadata["classes"]))
    return model, backbone


def load_run_model(run_dir: Path) -> LoadedModel:
    metadata = read_model_json(run_dir)
    model, backbone = build_architecture(metadata)
    weights_path = run_dir / MODEL_WEIGHTS
    try:
        load_model(model, str(weights_path), strict=True)
    except Exception as error:
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


# --- Training checkpoints: everything needed to continue a run exactly, in one file. ---------
#
# checkpoint.safetensors holds tensors (the model now, the best model so far, the optimizer's
# buffers, the random generators' states) and, in its string metadata, a JSON document with the
# rest (epoch, best-so-far, scheduler, optimizer settings, config). One file written to a
# temporary name and renamed: a reader sees the previous epoch's checkpoint or this one, never
# half of one, whenever the process is killed.

TRAINING_CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainingCheckpoint:
    epoch: int  # the last finished epoch
    model_state: dict[str, torch.Tensor]
    best_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    random_state: dict[str, Any]
    info: dict[str, Any]  # best_val_acc, best_epoch, config, skipped files, seconds so far


def _cpu_contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}


def capture_random_state() -> dict[str, Any]:
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *map(_plain, numpy_state[2:])],  # type: ignore[index]
    }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def restore_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def save_training_checkpoint(run_dir: Path, checkpoint: TrainingCheckpoint) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"model.{k}": v for k, v in _cpu_contiguous(checkpoint.model_state).items()})
    tensors.update({f"best.{k}": v for k, v in _cpu_contiguous(checkpoint.best_state).items()})
    optimizer_json: dict[str, Any] = {"param_groups": checkpoint.optimizer_state["param_groups"]}
    optimizer_json["state"] = {}
    for index, values in checkpoint.optimizer_state["state"].items():
        optimizer_json["state"][str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
                optimizer_json["state"][str(index)][key] = {"tensor": f"optimizer.{index}.{key}"}
            else:
                optimizer_json["state"][str(index)][key] = value
    random_json = {key: value for key, value in checkpoint.random_state.items()}
    tensors["random.torch"] = random_json.pop("torch")
    for device_index, cuda_state in enumerate(random_json.pop("cuda")):
        tensors[f"random.cuda.{device_index}"] = cuda_state
    document = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "epoch": checkpoint.epoch,
        "optimizer": optimizer_json,
        "scheduler": checkpoint.scheduler_state,
        "random": random_json,
        "info": checkpoint.info,
    }
    temporary = run_dir / f".{TRAINING_CHECKPOINT}.tmp-{os.getpid()}"
    save_file(tensors, str(temporary), metadata={"tlvision": json.dumps(document)})
    os.replace(temporary, run_dir / TRAINING_CHECKPOINT)


def load_training_checkpoint(run_dir: Path) -> TrainingCheckpoint:
    path = run_dir / TRAINING_CHECKPOINT
    if not path.is_file():
        raise UserError(
            f"{path}: no checkpoint to resume from; pass the --out directory of a `tlvision "
            "train` that finished at least one epoch"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            document = json.loads((handle.metadata() or {})["tlvision"])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # a damaged file is the user's to know about
        raise UserError(
            f"{path}: damaged checkpoint ({type(error).__name__}); start a new run with --out"
        ) from error

    def prefixed(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer_state: dict[str, Any] = {
        "param_groups": document["optimizer"]["param_groups"],
        "state": {},
    }
    for index, values in document["optimizer"]["state"].items():
        optimizer_state["state"][int(index)] = {
            key: tensors[value["tensor"]] if isinstance(value, dict) else value
            for key, value in values.items()
        }
    cuda_states = prefixed("random.cuda.")
    random_state = {
        **document["random"],
        "torch": tensors["random.torch"],
        "cuda": [cuda_states[str(index)] for index in range(len(cuda_states))],
    }
    return TrainingCheckpoint(
        epoch=document["epoch"],
        model_state=prefixed("model."),
        best_state=prefixed("best."),
        optimizer_state=optimizer_state,
        scheduler_state=document["scheduler"],
        random_state=random_state,
        info=document["info"],
    )
