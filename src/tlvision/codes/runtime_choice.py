"""Whether ONNX Runtime or torch runs a frozen module's forward passes faster on this machine:
measured once on a real batch, then remembered.

CPUs of the same kind differ (with AMX, ONNX Runtime ran MobileNetV2 at 230 img/s on 2 threads,
without it at 108; torch's bf16 and oneDNN paths differ as much), so no constant can say which
runtime wins here. The first pass of a module over enough images times both on its first batch
(a warm-up, then the best of TIMING_REPEATS) and keeps the timings in
$XDG_CACHE_HOME/tlvision/runtime-choices/<key>.json, the key naming the CPU (model and flags),
the torch and ONNX Runtime versions, the threads, the module's architecture and the input's
shape. Later passes read the choice; `faster` is the pure decision on the timings.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlvision.codes.cache import default_cache_dir
from tlvision.jsonio import keep, read_kept

ONNX, TORCH = "onnx", "torch"
TIMING_REPEATS = 2
TIMING_IMAGES = 16  # the first batch's first images: enough to time, cheap in eager torch


@dataclass(frozen=True)
class Timing:
    """Seconds per pass over the same batch, the best of TIMING_REPEATS after a warm-up."""

    torch_seconds: float
    onnx_seconds: float
    images: int


def faster(timing: Timing) -> str:
    """ONNX or TORCH: the runtime with the shorter pass (torch on a tie: no export to trust)."""
    return ONNX if timing.onnx_seconds < timing.torch_seconds else TORCH


def choices_dir() -> Path:
    """Beside the codes cache's default folder: $XDG_CACHE_HOME/tlvision/runtime-choices."""
    return default_cache_dir().parent / "runtime-choices"


def _cpu() -> str:
    """The CPU's model name and flags (what decides AMX, VNNI, AVX-512), or the platform's."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))  # the first core's lines, in order


def choice_key(module: nn.Module, example: torch.Tensor, threads: int) -> str:
    """What the timings depend on: this machine, the runtimes' versions, the architecture (not
    its weights: the module's class and parameter shapes) and the input's shape, dtype and
    memory format."""
    shapes = [list(parameter.shape) for parameter in module.parameters()]
    described = {
        "cpu": _cpu(),
        "torch": torch.__version__,
        "onnxruntime": metadata.version("onnxruntime"),
        "threads": threads,
        "module": type(module).__qualname__,
        "parameters": hashlib.sha256(json.dumps(shapes).encode()).hexdigest(),
        "input": [list(example.shape[1:]), str(example.dtype), example.is_contiguous()],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def remembered(key: str) -> Timing | None:
    """The timing kept for `key`; None when there is none yet or it is unreadable (measure)."""
    return read_kept(
        choices_dir() / f"{key}.json",
        lambda document: Timing(
            float(document["torch_seconds"]), float(document["onnx_seconds"]),
            int(document["images"]),
        ),
    )  # fmt: skip


def remember(key: str, timing: Timing) -> None:
    keep(choices_dir() / f"{key}.json", {**asdict(timing), "chose": faster(timing)})


def seconds_per_pass(run: Callable[[], Any]) -> float:
    run()  # warm-up: first-run allocations, kernel selection
    best = float("inf")
    for _ in range(TIMING_REPEATS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def measured_choice(
    key: str, run_torch: Callable[[], Any], run_onnx: Callable[[], Any], images: int
) -> str:
    """ONNX or TORCH for `key` (choice_key): remembered, or timed now on the two passes over
    the same `images` images."""
    timing = remembered(key)
    if timing is None:
        with torch.inference_mode():
            timing = Timing(seconds_per_pass(run_torch), seconds_per_pass(run_onnx), images)
        remember(key, timing)
    return faster(timing)
