"""The report's note on the files a run left out with `train --exclude`."""

from __future__ import annotations

from typing import Any

from tlvision.tables import escape

LISTED = 20


def excluded_note(summary: dict[str, Any]) -> str:
    """A paragraph naming what --exclude left out, with a warning when val files went too
    (dropping the val images a model gets wrong inflates val accuracy); "" without --exclude."""
    excluded = summary.get("excluded")
    if not excluded:
        return ""
    counts = ", ".join(f"{n} {split}" for split, n in excluded.get("counts", {}).items())
    files = [file for split_files in excluded.get("files", {}).values() for file in split_files]
    shown = ", ".join(escape(file) for file in files[:LISTED])
    more = (
        f" and {len(files) - LISTED} more (summary.json lists them)" if len(files) > LISTED else ""
    )
    warning = ""
    if excluded.get("held_out_too") and excluded.get("counts", {}).get("val"):
        warning = (
            '<p class="warning" id="excluded-val"><b>Val files were left out</b>: val accuracy '
            "is inflated, since the audit flags the images a model gets wrong. Compare runs on "
            "the same val images.</p>"
        )
    return (
        f'<p id="excluded">Left out with <code>--exclude {escape(excluded.get("source"))}</code>'
        f" ({escape(', '.join(excluded.get('sections', [])) or 'a list of files')}): "
        f"{escape(counts)} file(s): {shown}{escape(more)}.</p>{warning}"
    )
