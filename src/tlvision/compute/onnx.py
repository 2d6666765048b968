"""ONNX, written and run: the one place tlvision calls torch.onnx.export and opens ONNX Runtime.

Two exporters, each where it is the right one:
- files users keep (`tlvision export`, the runtime's RUN/export/model.onnx): torch.onnx's
  torch.export-based ("dynamo") exporter at opset 18, the exporter PyTorch maintains, whose
  opset runs on ONNX Runtime >= 1.14 and the other major ONNX runtimes;
- in-process speed-ups (code extraction, the frozen prefix): the TorchScript-based exporter,
  deprecated upstream but 2-3 s where the dynamo exporter took 28-43 s on a MobileNetV2 stage
  graph here, which a pass over a few hundred images cannot repay. Its graph lives in memory
  only, is checked against torch before use, and any failure falls back to torch.

Sessions get ONNX Runtime's intra-op threads from the cores this process may use.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.compute.cores import usable_cores

DYNAMO_OPSET = 18
TORCHSCRIPT_OPSET = 17


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_session(model: Path | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session: `threads` intra-op threads (default: the usable cores).

    No busy-waiting between operators: decoding threads, loader processes and a server's event
    loop share these cores (measured at equal or better throughput).

    The memory arena stays on, even for a one-pass session: without it every operator's output
    is fresh memory from the kernel, and MobileNetV2 at batch 8 to 32 ran at 145-152 img/s
    against 232-251 with it, for 62 MB more peak memory at batch 32 (benchmarks/onnx_arena.py;
    153 MB more in the audit's cold pass over 3,000 images)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads or usable_cores())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(
        source, sess_options=options, providers=["CPUExecutionProvider"]
    )


def write_onnx(
    module: nn.Module,
    example: torch.Tensor,
    *,
    input_name: str,
    output_names: Sequence[str],
    dynamic_axes: dict[int, str],
    path: Path | None = None,
) -> bytes | None:
    """`module` as ONNX: into `path` by the dynamo exporter (files people keep), or, with no
    path, returned as bytes by the TorchScript exporter (in-process speed-ups; see the module
    doc). `dynamic_axes`: the input's axes that may vary, by index, with their names; the
    outputs' batch axis varies with the input's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
        if path is not None:
            dims = {
                axis: torch.export.Dim(name, min=1, max=4096) for axis, name in dynamic_axes.items()
            }
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=DYNAMO_OPSET,
                input_names=[input_name], output_names=list(output_names),
                dynamic_shapes=(dims,), verbose=False,
            )  # fmt: skip
            assert program is not None
            program.save(str(path), external_data=False)
            return None
        buffer = io.BytesIO()
        axes = {input_name: dynamic_axes} | {name: {0: "batch"} for name in output_names}
        torch.onnx.export(
            module, (example,), buffer,  # type: ignore[arg-type]
            input_names=[input_name], output_names=list(output_names), dynamic_axes=axes,
            opset_version=TORCHSCRIPT_OPSET, dynamo=False,
        )  # fmt: skip
        return buffer.getvalue()


def agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(largest absolute difference, share of rows whose argmax agrees) of two (N, C, ...)
    outputs, maps compared on their spatial means: how an exported or converted model is
    checked against torch."""
    if reference.shape != candidate.shape:
        return float("inf"), 0.0
    difference = float(np.max(np.abs(reference.astype(np.float64) - candidate)))
    if not np.isfinite(candidate).all():
        difference = float("inf")
    flat_reference = reference.reshape(len(reference), reference.shape[1], -1).mean(axis=2)
    flat_candidate = candidate.reshape(len(candidate), candidate.shape[1], -1).mean(axis=2)
    agrees = float(np.mean(flat_reference.argmax(axis=1) == flat_candidate.argmax(axis=1)))
    return difference, agrees
