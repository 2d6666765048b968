"""audit.html: one self-contained page (thumbnails inline) of what the audit found: each label
issue beside examples of its given and its suggested class, duplicate groups side by side, the
strangers, and the confused class pairs."""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path
from typing import Any

from tlvision.data.images import BadImageError, load_rgb_image
from tlvision.tables import escape, html_table

THUMBNAIL_SIDE = 112
LISTED = 60  # items per section on the page (audit.json lists them all)

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}
.row{display:flex;gap:1.5em;align-items:flex-start;margin:.6em 0;padding:.4em;
border-bottom:1px solid #ddd}
figure{margin:0;text-align:center;font-size:.8em;max-width:9em;word-break:break-all}
figure img{display:block;margin:auto;border:1px solid #ccc}
.group{display:flex;gap:.4em}.label{font-weight:bold}.leak{color:#b00020}
.note{color:#555}
"""


@lru_cache(maxsize=512)  # class examples show beside many issues
def thumbnail(path: Path) -> str:
    """An inline JPEG data URL of the image, at most THUMBNAIL_SIDE px a side; "" if unreadable."""
    try:
        image = load_rgb_image(path)
    except (BadImageError, OSError):
        return ""
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(root: Path, file: str, caption: str) -> str:
    source = thumbnail(root / file)
    image = f'<img alt="{escape(file)}" src="{source}">' if source else "(unreadable)"
    return f"<figure>{image}<figcaption>{escape(caption)}</figcaption></figure>"


def _examples(root: Path, audit: dict[str, Any], name: str) -> str:
    figures = "".join(_figure(root, file, name) for file in audit["class_examples"].get(name, []))
    return f'<div class="group">{figures}</div>'


def label_section(root: Path, audit: dict[str, Any]) -> str:
    issues = audit["label_issues"]
    rows = []
    for issue in issues[:LISTED]:
        rows.append(
            '<div class="row">'
            + _figure(root, issue["file"], f"{issue['file']} ({issue['split']})")
            + f'<div><p class="label">given {escape(issue["given"])}, looks like '
            f"{escape(issue['suggested'])}</p><p>score {issue['score']:.3f}</p></div>"
            + f"<div><p>{escape(issue['given'])}:</p>{_examples(root, audit, issue['given'])}</div>"
            + f"<div><p>{escape(issue['suggested'])}:</p>"
            f"{_examples(root, audit, issue['suggested'])}</div></div>"
        )
    return _section("Label issues", len(issues), rows, "label-issues")


def duplicate_section(root: Path, audit: dict[str, Any]) -> str:
    groups = audit["duplicates"]
    rows = []
    for group in groups[:LISTED]:
        figures = "".join(
            _figure(root, file, f"{file} ({split})")
            for file, split in zip(group["files"], group["splits"], strict=True)
        )
        found = ", ".join(group.get("found_by", []))
        kind = "same bytes" if group["exact"] else f"similarity {group['similarity']:.3f}"
        kind += f" (found by {found})" if found and not group["exact"] else ""
        leak = '<p class="leak">across splits</p>' if group["across_splits"] else ""
        rows.append(f'<div class="row"><div class="group">{figures}</div><div>{leak}'
                    f"<p>{escape(kind)}</p></div></div>")  # fmt: skip
    return _section("Duplicates", len(groups), rows, "duplicates")


def outlier_section(root: Path, audit: dict[str, Any]) -> str:
    outliers = audit["outliers"]
    figures = "".join(
        _figure(root, item["file"], f"{item['file']} ({item['given']}, {item['score']:.1f})")
        for item in outliers[:LISTED]
    )
    rows = [f'<div class="row" style="flex-wrap:wrap">{figures}</div>'] if figures else []
    return _section("Strangers (unlike every class)", len(outliers), rows, "outliers")


def _section(title: str, count: int, rows: list[str], identifier: str) -> str:
    shown = f" (the first {LISTED} here; audit.json lists all)" if count > LISTED else ""
    body = "".join(rows) if rows else '<p class="note">none found</p>'
    return f'<h2 id="{identifier}">{escape(title)}: {count}{escape(shown)}</h2>{body}'


def audit_page(audit: dict[str, Any]) -> str:
    """The whole page, images and all, as one HTML string."""
    root = Path(audit["data_dir"])
    images = ", ".join(f"{split} {count}" for split, count in audit["images"].items())
    pairs = html_table(
        ["classes", "confused", "rate"],
        [
            [" / ".join(p["classes"]), p["confused"], p["rate"]]
            for p in audit["overlapping_classes"]
        ],
        table_id="overlapping-classes",
    )
    unreadable = html_table(
        ["kind", "path", "message"],
        [[item["kind"], item["path"], item["message"]] for item in audit["unreadable"]],
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>tlvision audit</title>"
        f"<style>{STYLE}</style></head><body><h1>Audit of {escape(audit['data_dir'])}</h1>"
        f"<p>{escape(images)}; {escape(audit['backbone'])} codes; out-of-fold accuracy "
        f"{audit['out_of_fold_accuracy']:.3f} ({audit['folds']} folds, C={audit['C']:g}). "
        "Nothing in the dataset was changed: the fixes are proposals (audit_fixes.csv).</p>"
        + label_section(root, audit)
        + duplicate_section(root, audit)
        + outlier_section(root, audit)
        + "<h2>Overlapping classes</h2>"
        + pairs
        + (f"<h2>Unreadable files</h2>{unreadable}" if audit["unreadable"] else "")
        + "</body></html>"
    )
