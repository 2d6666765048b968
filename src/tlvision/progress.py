"""Progress bars that the caller switches on or off: the CLI, a script or a notebook.

The long loops (image passes, epochs, dataset scans) sit several calls below the command or API
function that knows whether the user wants bars, so the choice travels in a context variable
rather than through every signature in between:

- unset (the command line): a text bar on stderr when stderr is a terminal, as tqdm does;
- `showing_progress(True)` (the API with verbose=True): tqdm.auto's bar, a widget in Jupyter and
  text elsewhere (also in Jupyter when ipywidgets is not installed), shown even when the output
  is not a terminal;
- `showing_progress(False)` (the API's default): no bar at all.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm as text_tqdm

Item = TypeVar("Item")

_SHOW_PROGRESS: ContextVar[bool | None] = ContextVar("tlvision_show_progress", default=None)


@contextmanager
def showing_progress(show: bool | None) -> Iterator[None]:
    """Within the block, bars follow `show` (None: the terminal default)."""
    token = _SHOW_PROGRESS.set(show)
    try:
        yield
    finally:
        _SHOW_PROGRESS.reset(token)


def progress_bar(
    iterable: Iterable[Item] | None = None, *, disable: bool | None = None, **options: Any
) -> text_tqdm[Item]:
    """A tqdm bar on stderr (Jupyter: a widget); a caller's `disable=True` (too little work to
    show) always wins."""
    from tqdm import tqdm as text_tqdm  # here, so that `import tlvision` does not load tqdm

    show = _SHOW_PROGRESS.get()
    if show is None:
        return text_tqdm(iterable, disable=disable, file=sys.stderr, **options)
    if not show or disable:
        return text_tqdm(iterable, disable=True, file=sys.stderr, **options)
    if importlib.util.find_spec("ipywidgets") is None:  # a notebook without widgets: tqdm.auto
        return text_tqdm(iterable, file=sys.stderr, **options)  # warns "IProgress not found"
    from tqdm.auto import tqdm as notebook_aware_tqdm

    bar: text_tqdm[Item] = notebook_aware_tqdm(iterable, disable=False, file=sys.stderr, **options)
    return bar
