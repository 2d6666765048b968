"""What `tlvision label-next` hands a person: JSON, a CSV to fill in, an HTML contact sheet."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlvision.data.images import BadImageError, load_rgb_image

CSV_COLUMNS = ("file", "class", "predicted", "score")
THUMBNAIL = 160


@dataclass(frozen=True)
class Suggestion:
    """One image to label next, with the model's guess."""

    file: Path  # as given (a folder argument joined with the names found under it)
    score: float  # uncertainty x distance to the nearest labelled image, when picked
    top: tuple[tuple[str, float], ...]  # the model's classes, most likely first

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "score": self.score,
            "predicted": self.top[0][0],
            "top": [{"class": name, "probability": probability} for name, probability in self.top],
        }


def ranked_classes(
    probabilities: np.ndarray, class_names: Sequence[str], count: int
) -> tuple[tuple[str, float], ...]:
    order = np.argsort(-probabilities, kind="stable")[:count]
    return tuple((class_names[int(i)], float(probabilities[i])) for i in order)


def write_csv(suggestions: Sequence[Suggestion], path: Path) -> None:
    """file, class (empty: to fill in), predicted, score; `tlvision add-labels` reads it."""
    with path.open("w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for item in suggestions:
            writer.writerow([str(item.file), "", item.top[0][0], f"{item.score:.4f}"])


def _thumbnail(path: Path) -> str:
    try:
        image = load_rgb_image(path)
    except BadImageError:
        return ""
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(str(path))}" src="data:image/jpeg;base64,{data}">'


def write_contact_sheet(suggestions: Sequence[Suggestion], path: Path, csv_path: Path) -> None:
    """One self-contained page: each pick's thumbnail, file name, the model's guess and score."""
    cards = "".join(
        f"<figure>{_thumbnail(item.file)}<figcaption><b>{index}.</b> "
        f"{html.escape(item.file.name)}<br>guess: {html.escape(item.top[0][0])} "
        f"{item.top[0][1]:.2f}<br>score {item.score:.3f}</figcaption></figure>"
        for index, item in enumerate(suggestions, start=1)
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Label next</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2em}"
        ".sheet{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:170px;"
        "font-size:0.85em}</style></head><body><h1>Label next</h1>"
        f"<p>{len(suggestions)} images, most useful first. Fill in the class column of "
        f"<code>{html.escape(str(csv_path))}</code>, then run <code>tlvision add-labels "
        f'{html.escape(str(csv_path))} DATA</code>.</p><div class="sheet">{cards}</div>'
        "</body></html>\n"
    )
    path.write_text(page, encoding="utf-8", errors="surrogateescape")
