"""What a notebook shows of a run, as fastai users expect: its worst val images
(`run.top_losses()`), its confusion matrix (`run.plot_confusion()`) and its report inline
(`run.inline_report()`). Each result shows itself (`_repr_html_` / `_repr_png_`) and prints as
text. The numbers come from the report's own path (tlvision.report.interpretation), so they are
the report's numbers.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tlvision.tables import escape

if TYPE_CHECKING:
    from tlvision.report.interpretation import ValResults

THUMBNAIL_SIDE = 160
REPORT_HEIGHT_PX = 700


@dataclass(frozen=True)
class Figure:
    """A PNG figure: shows inline in a notebook, `save(path)` writes it."""

    png: bytes

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | Path) -> Path:
        Path(path).write_bytes(self.png)
        return Path(path)


@dataclass(frozen=True)
class TopLoss:
    """One val image the model got most wrong: its true and predicted class, the predicted
    class's probability and the image's loss (-log p(true class))."""

    path: Path
    actual: str
    predicted: str
    probability: float
    loss: float


@dataclass(frozen=True, repr=False)
class TopLosses:
    """The val images with the highest loss, highest first (a sequence of TopLoss)."""

    rows: tuple[TopLoss, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> TopLoss:
        return self.rows[index]

    def __str__(self) -> str:
        lines = ["loss     actual -> predicted (probability)  file"]
        for row in self.rows:
            lines.append(
                f"{row.loss:7.4f}  {row.actual} -> {row.predicted} ({row.probability:.3f})  "
                f"{row.path}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"TopLosses({len(self.rows)} images, highest loss {self.rows[0].loss:.4f})"
            if (self.rows)
            else "TopLosses(0 images)"
        )

    def _repr_html_(self) -> str:
        figures = []
        for row in self.rows:
            caption = (
                f"{escape(row.actual)} &rarr; {escape(row.predicted)} "
                f"({row.probability:.3f}), loss {row.loss:.3f}<br><small>{escape(row.path.name)}"
                "</small>"
            )
            figures.append(
                f'<figure style="margin:0;width:{THUMBNAIL_SIDE + 10}px;overflow-wrap:anywhere">'
                f"{_thumbnail(row.path)}<figcaption>{caption}</figcaption></figure>"
            )
        return f'<div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(figures)}</div>'


def _thumbnail(path: Path) -> str:
    from tlvision.data.images import BadImageError, load_rgb_image

    try:
        image = load_rgb_image(path)
    except BadImageError:
        return "<p>(unreadable now)</p>"
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{escape(path.name)}" src="data:image/png;base64,{data}">'


def top_losses_of(results: ValResults, count: int) -> TopLosses:
    from tlvision.report.interpretation import top_losses

    losses, predictions = results.losses, results.predictions
    rows = []
    for index in top_losses(losses, count):
        path, label = predictions.samples[index]
        probabilities = predictions.probabilities[index]
        predicted = int(probabilities.argmax())
        rows.append(
            TopLoss(
                path=path, actual=results.class_names[label],
                predicted=results.class_names[predicted],
                probability=float(probabilities[predicted]), loss=float(losses[index]),
            )
        )  # fmt: skip
    return TopLosses(tuple(rows))


def confusion_figure(results: ValResults) -> Figure:
    from tlvision.report.plots import confusion_heat_maps

    report = results.classification_report()
    return Figure(confusion_heat_maps(report.confusion, report.class_names))


@dataclass(frozen=True)
class InlineReport:
    """A run's report.html, shown in the notebook's output (an iframe of the page itself)."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)

    def _repr_html_(self) -> str:
        page = html.escape(self.path.read_text(encoding="utf-8"), quote=True)
        return (
            f'<iframe srcdoc="{page}" style="width:100%;height:{REPORT_HEIGHT_PX}px;'
            f'border:1px solid #ccc" title="{escape(self.path)}"></iframe>'
        )
