"""A fine-tuning run's checkpoint: everything needed to continue it, in one file.

RUN/checkpoint.safetensors holds tensors (the model now, the best model so far, the optimizer's
buffers, the random generators' states) and, in its string metadata, a JSON document with the
rest (epoch, best-so-far, scheduler, optimizer settings, config). One file written to a
temporary name and renamed: a reader sees the previous epoch's checkpoint or this one, never
half of one, whenever the process is killed. No pickle: tensors and JSON only.
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
from safetensors.torch import save_file

from tlvision.errors import UserError, writing
from tlvision.runs.layout import TRAINING_CHECKPOINT

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
    needed = sum(tensor.nbytes for tensor in tensors.values())
    with writing(run_dir / TRAINING_CHECKPOINT, needed=needed, temporary=temporary):
        save_file(tensors, str(temporary), metadata={"tlvision": json.dumps(document)})
    os.replace(temporary, run_dir / TRAINING_CHECKPOINT)


def saved_epoch(run_dir: Path) -> int | None:
    """The epoch RUN/checkpoint.safetensors holds (its metadata alone read); None without a
    readable one."""
    try:
        with safe_open(str(run_dir / TRAINING_CHECKPOINT), framework="pt") as handle:
            return int(json.loads((handle.metadata() or {})["tlvision"])["epoch"])
    except Exception:  # none, or damaged: nothing to continue from
        return None


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
