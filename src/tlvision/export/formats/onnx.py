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
    names = ["maps"] if spatial else ["logits"]
    if getattr(network, "ood", None) is not None:  # the run's code-space score, computed inside
        names.append("ood_score")
    write_onnx(
        network, example, input_name="pixels", output_names=names, dynamic_axes=axes, path=path
    )
    name_axes(path, input_axes=axes, spatial=spatial)


def name_axes(path: Path, *, input_axes: dict[int, str], spatial: bool) -> None:
    """The file's varying axes named as its sidecar names them: the exporter may call the input's
    s69/s89 and the maps' "(((height - 1)//32)) + 1"; a client reads these names."""
    import onnx

    model = onnx.load(str(path))
    dimensions = model.graph.input[0].type.tensor_type.shape.dim
    for axis, name in input_axes.items():
        dimensions[axis].dim_param = name
    output_names = {0: "batch"} | ({2: "map_height", 3: "map_width"} if spatial else {})
    for output in model.graph.output:
        for axis, name in output_names.items():
            output.type.tensor_type.shape.dim[axis].dim_param = name
    onnx.save(model, str(path))


def open_file(path: Path) -> Callable[[np.ndarray], Any]:
    """pixels -> the logits, or (logits, ood scores) when the file has both outputs."""
    import numpy as np

    from tlvision.compute.onnx import onnx_session

    session = onnx_session(path)
    name = session.get_inputs()[0].name

    def run(pixels: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        outputs = [np.asarray(out, dtype=np.float32) for out in session.run(None, {name: pixels})]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    return run


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
        ood_output=True,
        notes="fp32 files load in any ONNX runtime (tested: ONNX Runtime, OpenCV's DNN module 4.x "
        "and 5.x); int8 files (--quantize int8) run correctly only in ONNX Runtime: OpenCV 5.x "
        "refuses them, and OpenCV 4.x loads them but disagrees with ONNX Runtime's top-1 on "
        "16% of the reference val images",
    ),
)
