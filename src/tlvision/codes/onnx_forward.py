"""Forward-only passes of a frozen torch module in ONNX Runtime, when it is faster here.

Code extraction (the frozen routes, `probe`, the advisor, the report) and the frozen prefix of
fine-tuning run a body that never changes over every image. On this project's 2-core reference
CPU ONNX Runtime runs MobileNetV2 2.06x faster than channels-last eager torch, export included
(benchmarks/RESULTS.md), but CPUs differ, so which runtime runs a module is measured on this
machine once and remembered (tlvision.codes.runtime_choice). The in-memory export takes 2-3 s
(tlvision.compute.onnx), so a pass over fewer than ONNX_FROM_IMAGES images stays on torch
without measuring. `OnnxForward` is called like the module it replaces: a batch in (float
NCHW images, or the uint8 NHWC pixels of a module that normalises them itself), the module's
tensor or {key: tensor} out. Anything that fails to export, to load or to agree
with torch returns None, and the caller keeps torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.codes.runtime_choice import ONNX, TIMING_IMAGES, choice_key, measured_choice
from tlvision.compute.onnx import agreement, onnx_session, onnxruntime_installed, write_onnx

# Measured on the reference CPU: the export costs 2-3 s and ONNX Runtime saves 15-60 ms an image
# over channels-last eager torch, so from about 100 images the export has paid for itself.
ONNX_FROM_IMAGES = 100
AGREEMENT = 1e-3  # float rounding between the runtimes, far below what tells a wrong graph

Forward = Callable[[torch.Tensor], Any]


def use_onnx_runtime(*, device_type: str, image_count: int, onnx_installed: bool) -> bool:
    """Whether a forward-only pass over `image_count` images should run in ONNX Runtime."""
    return device_type == "cpu" and onnx_installed and image_count >= ONNX_FROM_IMAGES


def fastest_forward(
    module: nn.Module, example: torch.Tensor, image_count: int, device: torch.device
) -> Forward:
    """`module` in ONNX Runtime when a pass over `image_count` images on `device` may pay for
    the export (use_onnx_runtime), the export works and ONNX Runtime runs `example` faster than
    torch on this machine (measured once, remembered); otherwise `module` itself (torch).
    `example`: a batch as torch would receive it (its memory format included)."""
    if use_onnx_runtime(
        device_type=device.type, image_count=image_count, onnx_installed=onnxruntime_installed()
    ):
        threads = torch.get_num_threads()
        runner = onnx_forward(module, example, threads=threads)
        if runner is not None and _measured_choice(module, runner, example, threads) == ONNX:
            return runner
    return module


def _measured_choice(
    module: nn.Module, runner: OnnxForward, example: torch.Tensor, threads: int
) -> str:
    batch = example[:TIMING_IMAGES]
    key = choice_key(module, example, threads)
    return measured_choice(key, lambda: module(batch), lambda: runner(batch), len(batch))


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

    def __call__(self, images: torch.Tensor) -> torch.Tensor | dict[Any, torch.Tensor]:
        batch = np.ascontiguousarray(_as_fed(images).numpy())
        outputs = [torch.from_numpy(output) for output in self.session.run(None, {"images": batch})]
        if self.keys is None:
            return outputs[0]
        return dict(zip(self.keys, outputs, strict=True))


def _as_fed(images: torch.Tensor) -> torch.Tensor:
    """The batch as the graph takes it: on the CPU, uint8 pixels as they are, else float32."""
    batch = images.detach().cpu()
    return batch if batch.dtype == torch.uint8 else batch.float()


def onnx_forward(module: nn.Module, example: torch.Tensor, threads: int) -> OnnxForward | None:
    """`module` (in eval mode, on the CPU) exported and opened in ONNX Runtime; None when the
    export or the session fails, or its outputs do not agree with torch's on the example."""
    with torch.inference_mode(False), torch.no_grad():
        sample = _as_fed(example[:2]).contiguous().clone()
        produced = module(sample)
        keys = tuple(produced) if isinstance(produced, dict) else None
        names = [f"output{index}" for index in range(len(keys or (None,)))]
        try:
            graph = write_onnx(
                _AsTuple(module, keys).eval(), sample, input_name="images", output_names=names,
                dynamic_axes={0: "batch"},
            )  # fmt: skip
            assert graph is not None
            forward = OnnxForward(onnx_session(graph, threads), keys)
        except Exception:  # any export or session failure (an operator missing): stay on torch
            return None
    return forward if _agrees(forward(sample), produced) else None


def _agrees(ours: Any, expected: Any) -> bool:
    """The session's outputs match torch's on the sample (float rounding, not a wrong graph)."""
    pairs = (
        [(ours, expected)] if isinstance(expected, torch.Tensor)
        else [(ours[key], expected[key]) for key in expected]
    )  # fmt: skip
    for got, want in pairs:
        reference = want.float().numpy()
        difference, _ = agreement(reference, got.numpy())
        if not difference <= AGREEMENT * max(1.0, float(np.abs(reference).max())):
            return False
    return True
