"""TorchScript: written by torch.jit.trace, a .pt that libtorch (C++) and mobile load without
Python (torch.export's .pt2 needs Python torch); deprecated upstream, and still the most
portable TorchScript there is."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlvision.export.format import EXPORT_FORMATS, ExportFormat

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


def write(network: nn.Module, example: torch.Tensor, path: Path, spatial: bool) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation
        torch.jit.save(torch.jit.trace(network, (example,), check_trace=False), str(path))


def open_file(path: Path) -> Callable[[np.ndarray], Any]:
    """pixels -> the logits, or (logits, ood scores) when the model returns both."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(pixels: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        with torch.inference_mode():
            output = module(torch.from_numpy(pixels))
        if isinstance(output, tuple):
            return tuple(tensor.float().numpy() for tensor in output)
        result: np.ndarray = output.float().numpy()
        return result

    return run


EXPORT_FORMATS.register(
    "torchscript",
    ExportFormat(
        name="torchscript",
        suffix=".pt",
        needs=(),
        install="",
        exporter="torch.jit.trace",
        write=write,
        open=open_file,
        ood_output=True,
    ),
)
