"""The CPU this process may use: how many cores, and how idle threads wait. Imports no torch:
the waiting policy must be set before torch loads OpenMP."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset
    narrow), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def prefer_passive_waiting() -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user chose otherwise.

    Spinning threads steal the CPU from data-loader processes: on 2 cores a feature-extract
    epoch measured 21.0 s with OpenMP's default policy and 9.6 s with PASSIVE
    (benchmarks/RESULTS.md). OpenMP reads the variable when torch first loads it, so the entry
    points (the command line, the API's functions) call this before they import torch; importing
    tlvision changes nothing.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
