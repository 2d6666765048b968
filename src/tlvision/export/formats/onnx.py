"""ONNX: written by torch.onnx's dynamo exporter at opset 18 (tlvision.compute.onnx), run by ONNX
Runtime; the CPU runtime predict and serve prefer (benchmarks/export_runtime.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlvision.export.format import EXPORT_FORMATS, ExportFormat

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


def write(network: nn.Module, example: torch.Tensor, path: Path, spatial: bool) -> None:
    from tlvision.compute.onnx import write_onnx

    axes = {0: "batch"} | ({1: "height", 2: "width"} if spatial else {})
    write_onnx(
        network, example, input_name="pixels", output_names=["maps" if spatial else "logits"],
        dynamic_axes=axes, path=path,
    )  # fmt: skip


def open_file(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import numpy as np

    from tlvision.compute.onnx import onnx_session

    session = onnx_session(path)
    name = session.get_inputs()[0].name
    return lambda pixels: np.asarray(session.run(None, {name: pixels})[0], dtype=np.float32)


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def quantize(*arguments: Any) -> Any:
    from tlvision.export.quantize import quantize_and_check

    return quantize_and_check(*arguments, open_file=open_file)


EXPORT_FORMATS.register(
    "onnx",
    ExportFormat(
        name="onnx",
        suffix=".onnx",
        needs=("onnx", "onnxscript", "onnxruntime"),
        install="pip install 'tlvision[export]'",
        exporter="torch.onnx dynamo, opset 18",
        write=write,
        open=open_file,
        versions=versions,
        serves=True,
        quantize=quantize,
        notes="int8 files (--quantize int8) use ONNX Runtime's com.microsoft operators: they "
        "run in ONNX Runtime only; fp32 files run in any ONNX runtime",
    ),
)
