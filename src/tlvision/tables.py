"""Tables as HTML: the one writer behind the report, the compare page and the notebook views.

Every cell is HTML-escaped; a name that is not valid UTF-8 (a lone surrogate from os.fsdecode,
see tlvision.data.layouts) shows its bytes as backslash escapes; floats show 4 places; None is
"-". Imports nothing heavy.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence


def printable(value: object) -> str:
    """The text of a value with bytes that are not UTF-8 as backslash escapes: fonts, pages and
    files all take it."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def escape(value: object) -> str:
    """HTML-escaped text (quotes too, so it is safe in attributes)."""
    return html.escape(printable(value), quote=True)


def cell_text(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else printable(value)


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    caption: str | None = None,
    table_id: str = "",
) -> str:
    """A plain HTML table: a header row, then one row per item of `rows`."""
    identifier = f' id="{escape(table_id)}"' if table_id else ""
    parts = [f"<table{identifier}>"]
    if caption:
        parts.append(f"<caption>{escape(caption)}</caption>")
    head = "".join(f"<th>{escape(header)}</th>" for header in headers)
    parts.append(f"<thead><tr>{head}</tr></thead><tbody>")
    for row in rows:
        cells = "".join(f"<td>{escape(cell_text(value))}</td>" for value in row)
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)
