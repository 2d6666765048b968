"""The one error type users see: a message that names the file and the fix, exit status 2.

Also how a full disk is said: every write that can meet one runs inside `writing(...)`, which
turns "No space left on device" (an OSError, or the same words from a library written in
another language, such as safetensors) into a DiskFullError naming the directory, the space
needed and free, and the fix; the file being replaced is left as it was.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_WORDS = (
    "No space left on device", "Disk quota exceeded", "os error 28", "database or disk is full",
)  # fmt: skip


class UserError(ValueError):
    """A problem with the user's input or environment that they can fix.

    A ValueError too, so that code which already catches bad values catches it. The command
    line prints the message on one line (no traceback) and exits with status 2.
    """

    exit_status = 2


class DiskFullError(UserError):
    """A write that met a full disk (or quota): `then` says how to go on once space is freed."""

    def __init__(
        self, path: Path, needed: int | None, then: str, kept: str = "nothing was replaced"
    ) -> None:
        self.path, self.needed, self.then, self.kept = path, needed, then, kept
        directory = path.parent
        try:
            free: int | None = shutil.disk_usage(directory).free
        except OSError:
            free = None
        space = ", ".join(
            part
            for part in (
                None if needed is None else f"needs about {_size(needed)}",
                None if free is None else f"{_size(free)} free",
            )
            if part
        )
        super().__init__(
            f"{directory}: no space left on the device to write {path.name}"
            + (f" ({space})" if space else "")
            + f"; {kept}. Free space there (or choose another location), then {then}"
        )

    def going_on(self, then: str) -> DiskFullError:
        """The same error with another way to go on (what the caller knows better)."""
        return DiskFullError(self.path, self.needed, then, self.kept)


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.1f} kB"


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
        return True
    return any(words in str(error) for words in NO_SPACE_WORDS)


@contextmanager
def writing(
    path: Path,
    *,
    needed: int | None = None,
    temporary: Path | None = None,
    then: str = "run the command again",
    kept: str = "nothing was replaced",
) -> Iterator[None]:
    """Within the block, a full disk raises DiskFullError for `path` (its `temporary` file,
    if any, removed); any other error passes unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        if not is_disk_full(error):
            raise
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise DiskFullError(path, needed, then, kept) from error
