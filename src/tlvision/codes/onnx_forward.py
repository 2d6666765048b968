"""Forward-only passes of a frozen torch module in ONNX Runtime, the fastest CPU runtime here.

Code extraction (the frozen routes, `probe`, the advisor, the report) runs a body that never
changes over every image. On this project's 2-core reference CPU ONNX Runtime runs MobileNetV2
3-8x faster than eager torch (benchmarks/RESULTS.md), and exporting the traced body takes 2-3 s
with the TorchScript-based exporter (the dynamo exporter took 28-43 s), so a pass over more than
a few dozen images pays for its export. `OnnxForward` is called like the module it replaces:
a float NCHW batch in, the module's tensor or {key: tensor} out. Anything that fails to export
or to load returns None, and the caller keeps torch.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Measured on the reference CPU: the export costs 2-3 s and ONNX Runtime saves 15-60 ms an image
# over channels-last eager torch, so from about 100 images the export has paid for itself.
ONNX_FROM_IMAGES = 100

Forward = Callable[[torch.Tensor], Any]


def use_onnx_runtime(*, device_type: str, image_count: int, onnx_installed: bool) -> bool:
    """Whether a forward-only pass over `image_count` images should run in ONNX Runtime."""
    return device_type == "cpu" and onnx_installed and image_count >= ONNX_FROM_IMAGES


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_session(model: Path | bytes, threads: int, *, memory_arena: bool = True) -> Any:
    """An ONNX Runtime CPU session with a set number of intra-op threads (not one per core).

    No busy-waiting between operators: decoding threads, loader processes and a server's event
    loop share these cores (measured at equal or better throughput). `memory_arena` False: no
    arena kept at the largest batch's size (code extraction, run once)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = memory_arena
    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(
        source, sess_options=options, providers=["CPUExecutionProvider"]
    )


def fastest_forward(
    module: nn.Module, example: torch.Tensor, image_count: int, device: torch.device
) -> Forward:
    """`module` in ONNX Runtime when a pass over `image_count` images on `device` pays for the
    export (use_onnx_runtime) and the export works; otherwise `module` itself (torch)."""
    if use_onnx_runtime(
        device_type=device.type, image_count=image_count, onnx_installed=onnxruntime_installed()
    ):
        runner = onnx_forward(module, example, threads=torch.get_num_threads())
        if runner is not None:
            return runner
    return module


class _AsTuple(nn.Module):
    """The module's outputs as a tuple in a fixed key order: what an ONNX graph can return."""

    def __init__(self, module: nn.Module, keys: tuple[Any, ...] | None) -> None:
        super().__init__()
        self.module, self.keys = module, keys

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.module(images)
        if self.keys is None:
            return (outputs,)
        return tuple(outputs[key] for key in self.keys)


class OnnxForward:
    """`module`'s forward pass in an ONNX Runtime session, for any batch size."""

    def __init__(self, session: Any, keys: tuple[Any, ...] | None) -> None:
        self.session, self.keys = session, keys
        self.input_name = session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor | dict[Any, torch.Tensor]:
        batch = np.ascontiguousarray(images.detach().cpu().float().numpy())
        outputs = [torch.from_numpy(output) for output in self.session.run(None, {"images": batch})]
        if self.keys is None:
            return outputs[0]
        return dict(zip(self.keys, outputs, strict=True))


def onnx_forward(module: nn.Module, example: torch.Tensor, threads: int) -> OnnxForward | None:
    """`module` (in eval mode, on the CPU) exported and opened in ONNX Runtime; None when the
    export or the session fails, so that the caller runs torch instead."""
    with torch.inference_mode(False), torch.no_grad():
        sample = example[:2].detach().cpu().float().contiguous().clone()
        produced = module(sample)
        keys = tuple(produced) if isinstance(produced, dict) else None
        wrapper = _AsTuple(module, keys).eval()
        names = [f"output{index}" for index in range(len(keys or (None,)))]
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
                torch.onnx.export(
                    wrapper, (sample,), buffer,  # type: ignore[arg-type]
                    input_names=["images"], output_names=names,
                    dynamic_axes={name: {0: "batch"} for name in ["images", *names]},
                    opset_version=17, dynamo=False,
                )  # fmt: skip
        except Exception:  # any export failure means: stay on torch
            return None
    try:
        session = onnx_session(buffer.getvalue(), threads, memory_arena=False)
    except Exception:  # an operator ONNX Runtime lacks, say: stay on torch
        return None
    forward = OnnxForward(session, keys)
    return forward if _agrees(forward(sample), produced) else None


def _agrees(ours: Any, expected: Any) -> bool:
    """The session's outputs match torch's on the sample (float rounding, not a wrong graph)."""
    pairs = (
        [(ours, expected)] if isinstance(expected, torch.Tensor)
        else [(ours[key], expected[key]) for key in expected]
    )  # fmt: skip
    return all(
        got.shape == want.shape and torch.allclose(got, want.float(), rtol=1e-3, atol=1e-4)
        for got, want in pairs
    )
