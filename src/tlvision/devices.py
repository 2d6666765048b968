"""Which device a run uses: the one thing training, probing and advising all ask first."""

from __future__ import annotations

import torch

from tlvision.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA, then Apple's MPS, then the CPU; anything else as torch names it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible here; use --device auto or cpu")
    return device
