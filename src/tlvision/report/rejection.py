"""The report's "Unknown inputs" section: the out-of-distribution score's distribution on val
and the threshold above which `predict --reject auto` calls an input unknown."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tlvision.report.plots import png_bytes
from tlvision.runs.reader import read_rejection_file


def score_histogram(document: dict[str, Any]) -> bytes:
    """The val images' scores (RUN/rejection.json's histogram) with the threshold marked."""
    histogram = document["val_histogram"]
    edges, counts = histogram["edges"], histogram["counts"]
    figure = Figure(figsize=(6, 2.8), layout="constrained")
    axes = figure.subplots()
    widths = [right - left for left, right in itertools.pairwise(edges)]
    axes.bar(edges[:-1], counts, width=widths, align="edge", color="#4c72b0", label="val images")
    axes.axvline(document["threshold"], color="#b00", linestyle="--", label="threshold")
    axes.set_xlabel(f"{document['score']} score (higher: less like the training classes)")
    axes.set_ylabel("images")
    axes.legend()
    return png_bytes(figure)


def rejection_section(run_dir: Path, image_tag: Any) -> str:
    document = read_rejection_file(run_dir)
    if document is None:
        return (
            "<h2>Unknown inputs</h2><p>This run has no rejection data (trained before tlvision "
            f"rejected unknown inputs): run <code>tlvision calibrate {run_dir}</code>.</p>"
        )
    return (
        f"<h2>Unknown inputs</h2><p>Inputs whose {document['score']} score is above "
        f'<b id="rejection-threshold">{document["threshold"]:.4f}</b> are called unknown by '
        "<code>predict --reject auto</code> and <code>serve --reject auto</code>; the threshold "
        f"rejects {document['val_rejected']:.1%} of the {document['val_images']} val images.</p>"
        + image_tag(score_histogram(document), "out-of-distribution scores on val")
    )
