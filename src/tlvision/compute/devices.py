"""Which device a run uses and its arithmetic: the one thing training, probing and advising all
ask first; and how much memory the machine has free for what a run keeps in it."""

from __future__ import annotations

from pathlib import Path

import torch

from tlvision.config import PRECISIONS
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


def resolve_precision(requested: str, device: torch.device) -> str:
    """The arithmetic a run uses: `auto` is bf16 on a CUDA GPU that has it, else 32-bit.

    16 (float16) needs a GPU and a gradient scaler (see `training.finetune`); bf16 keeps
    float32's range, so it needs no scaler and also runs on CPUs.
    """
    if requested not in PRECISIONS:
        raise UserError(f"--precision {requested}: choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "32"
    if requested == "16" and device.type != "cuda":
        raise UserError(
            f"--precision 16 needs --device cuda (this run uses {device}); use bf16 or 32"
        )
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU has no bfloat16; use --precision 16")
    return requested


def autocast_for(device: torch.device, precision: str) -> torch.autocast:
    """Automatic mixed precision at `precision` (a resolved one), or full float32 for 32."""
    dtype = torch.float16 if precision == "16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "32")


def available_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Memory the kernel says new work can have without swapping (Linux's MemAvailable), or
    None where that is not known (other systems): callers then set no cap."""
    try:
        for line in meminfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "MemAvailable":
                return int(value.split()[0]) * 1024  # the file counts in kB
    except (OSError, ValueError, IndexError):
        return None
    return None
