"""What the commands share: progress bars when someone watches, the flat-layout note, JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def show_progress() -> bool:
    """Progress bars when someone watches: stderr is a terminal (tqdm's own rule)."""
    return sys.stderr.isatty()


def announce_layout(data_dir: Path, val_split: float | None) -> None:
    """One line on stderr when a flat dataset is split for the user (stdout may be JSON)."""
    from tlvision.data.layouts import layout_note

    note = layout_note(data_dir, val_split)
    if note is not None:
        print(note, file=sys.stderr)


def print_json(data: Any) -> None:
    from tlvision.jsonio import json_text

    print(json_text(data))


def quiet(message: str) -> None:
    """The log of a command whose stdout is JSON."""
