"""JSON as tlvision writes it: indented ASCII, files replaced atomically. Imports no torch, so
the command line and `import tlvision` can use it without loading torch."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

Kept = TypeVar("Kept")


def json_text(data: Any) -> str:
    """Indented JSON in pure ASCII: how every JSON file and --json output of tlvision is written.

    A file name that is not valid UTF-8 is held as a str with lone surrogates (os.fsdecode);
    ensure_ascii writes each as a "\\udcff" escape, which json.loads turns back into the same
    str, so Path(name) opens the same file. Raw, those surrogates cannot be encoded as UTF-8.
    """
    return json.dumps(data, indent=2, ensure_ascii=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so a reader never sees half a file, even if we are killed."""
    from tlvision.errors import writing

    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json_text(data) + "\n"
    with writing(path, needed=len(text), temporary=temporary):
        temporary.write_text(text, encoding="ascii")
    os.replace(temporary, path)


def read_kept(path: Path, decode: Callable[[Any], Kept]) -> Kept | None:
    """A value `keep` wrote, decoded; None when the file is absent, unreadable or not what
    `decode` expects (the caller computes it again: a kept value is only ever a shortcut)."""
    try:
        return decode(json.loads(path.read_text(encoding="ascii")))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def keep(path: Path, data: Any) -> None:
    """Write a value that can be computed again, creating its folder. A read-only folder or a
    full disk is not the user's problem here: the value is computed again next time."""
    from tlvision.errors import UserError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    except (OSError, UserError):
        pass
