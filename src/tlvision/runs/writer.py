"""What a run writes into its directory, each file replaced atomically: a reader (or a run
killed half-way) sees the previous file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlvision.errors import writing
from tlvision.jsonio import write_json_atomic
from tlvision.runs.layout import (
    METRICS_FILE,
    MODEL_JSON,
    MODEL_WEIGHTS,
    OOD_CODES_FILE,
    OOD_CODES_TENSOR,
    SUMMARY_FILE,
)

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

FORMAT_VERSION = 1  # of model.json


def save_run_model(run_dir: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """model.safetensors (the state dict, no pickle) and model.json (how to rebuild it)."""
    from safetensors.torch import save_model

    run_dir.mkdir(parents=True, exist_ok=True)
    temporary = run_dir / f".{MODEL_WEIGHTS}.tmp-{os.getpid()}"
    needed = sum(tensor.nbytes for tensor in model.state_dict().values())
    with writing(run_dir / MODEL_WEIGHTS, needed=needed, temporary=temporary):
        save_model(model, str(temporary))
    os.replace(temporary, run_dir / MODEL_WEIGHTS)
    write_json_atomic(run_dir / MODEL_JSON, {"format_version": FORMAT_VERSION, **metadata})


def save_ood_codes(run_dir: Path, codes: np.ndarray) -> Path:
    """RUN/ood_codes.safetensors: the train codes, L2-normalised, as float16 (no pickle)."""
    import numpy as np
    from safetensors.numpy import save_file

    values = np.asarray(codes, dtype=np.float32)
    values = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    path = run_dir / OOD_CODES_FILE
    temporary = run_dir / f".{OOD_CODES_FILE}.tmp-{os.getpid()}"
    with writing(path, needed=values.size * 2, temporary=temporary):
        save_file({OOD_CODES_TENSOR: np.ascontiguousarray(values.astype(np.float16))}, temporary)
    os.replace(temporary, path)
    return path


def start_metrics(run_dir: Path, records: list[dict[str, Any]] | None = None) -> None:
    """metrics.jsonl holding `records` (none: empty), before the epochs append to it."""
    lines = "".join(json.dumps(record) + "\n" for record in records or [])
    temporary = run_dir / f".{METRICS_FILE}.tmp-{os.getpid()}"
    with writing(run_dir / METRICS_FILE, needed=len(lines), temporary=temporary):
        temporary.write_text(lines)
    os.replace(temporary, run_dir / METRICS_FILE)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """One epoch's line; a line is small enough to be written whole."""
    line = json.dumps(record) + "\n"
    with (
        writing(run_dir / METRICS_FILE, needed=len(line)),
        (run_dir / METRICS_FILE).open("a") as handle,
    ):
        handle.write(line)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
