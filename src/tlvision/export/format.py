"""Export formats: how a trained network becomes a file, and how that file is run again.

A format is one module in tlvision/export/formats/ that registers an ExportFormat: its file
suffix, the Python modules it needs (checked before any work), a writer (network, example
pixels, path, whether height and width vary) and an opener (path -> a function from uint8 NHWC
pixels to logits). The exporter (tlvision.export.exporter) checks every file with the opener
against torch before it counts as written; a format that `serves` is also a runtime for
predict, evaluate and serve (tlvision.inference.runtime). Imports no torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlvision.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


@dataclass(frozen=True)
class ExportFormat:
    name: str  # --format NAME
    suffix: str  # of the file written
    needs: tuple[str, ...]  # Python modules the writer and the opener import
    install: str  # how to get them
    exporter: str  # how the file is written, for the sidecar
    write: Callable[[nn.Module, torch.Tensor, Path, bool], None]
    # path -> run(pixels): the logits, or (logits, ood scores) for a network with both outputs
    open: Callable[[Path], Callable[[np.ndarray], Any]]
    versions: Callable[[], dict[str, str]] = field(default=lambda: {})
    serves: bool = False  # a runtime for predict, evaluate and serve
    # int8 quantisation of a checked fp32 file: (path, loaded model, parity images, fp32
    # report, log, data) -> the int8 file's report; None: the format has none
    quantize: Callable[..., Any] | None = None
    notes: str = ""  # what a user of the file should know, into the sidecar
    # the writer and the opener take a network with a second output, (logits, ood_score), for a
    # run whose rejection uses the code-space score; a format without gets the logits only
    ood_output: bool = False

    def missing(self) -> list[str]:
        """The modules it needs that are not installed."""
        return [name for name in self.needs if importlib.util.find_spec(name) is None]


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format", "tlvision.export.formats")


def runtime_names() -> list[str]:
    """The runtimes a trained run can be classified with: auto (tlvision.inference.runtime
    chooses), torch, and every export format that serves."""
    return ["auto", "torch", *(name for name in EXPORT_FORMATS if EXPORT_FORMATS.get(name).serves)]
