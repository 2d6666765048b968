"""RUN/report.html: one self-contained page that shows what a run learned.

Sections: the run (data, model, the command that reproduces it), learning curves, the confusion
matrix and per-class scores, the top losses with their class maps, the most confused pairs,
calibration, the advisor's evidence (when the run has advice.json) and the dataset check's
problems. Every figure is a PNG embedded as a data: URI and the page has no script, so the file
opens from disk anywhere, offline. All text from files and folders is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlvision.config import reproduce_arguments
from tlvision.data.layouts import DatasetSplits
from tlvision.inference.evaluation import ClassificationReport
from tlvision.report import plots as report_plots
from tlvision.report.interpretation import (
    ValResults,
    calibration,
    confused_pairs,
    top_losses,
    val_results,
)
from tlvision.runs.layout import ADVICE_FILE, REPORT_FILE
from tlvision.runs.reader import LoadedModel, load_run_model, read_run, run_splits
from tlvision.tables import escape, html_table

TOP_LOSSES = 12
MAP_SIDE = 224  # class-map overlays are drawn on the image scaled to this long side
MAX_LISTED_PROBLEMS = 40
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td { font-variant-numeric: tabular-nums; }
code, pre { background: #f4f4f4; padding: 0.2em 0.4em; }
pre { white-space: pre-wrap; word-break: break-all; }
img.plot { max-width: 100%; }
.losses { display: flex; flex-wrap: wrap; gap: 12px; }
.losses figure { margin: 0; width: 230px; font-size: 0.85em; }
.losses img { width: 224px; }
.wrong { color: #b00; }
"""


def image_tag(png: bytes, alt: str, css_class: str = "plot") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: Sequence[str], rows: Sequence[Sequence[object]], css_id: str = "") -> str:
    return html_table(header, rows, table_id=css_id)


def reproduce_command(config: dict[str, Any], run_dir: Path) -> str:
    """The `tlvision train` line that makes this run again, every option it set spelled out
    (tlvision.config.reproduce_arguments)."""
    return shlex.join(["tlvision", "train", *reproduce_arguments(config), "--out", str(run_dir)])


def run_section(
    loaded: LoadedModel, summary: dict[str, Any], splits: DatasetSplits, run_dir: Path
) -> str:
    metadata, config = loaded.metadata, loaded.metadata.get("config", {})
    facts = [
        ("strategy", metadata.get("strategy")),
        ("backbone", metadata.get("backbone")),
        ("weights", metadata.get("weights")),
        ("input size (pixels)", loaded.preprocessing.crop_size),
        ("epochs", summary.get("epochs")),
        ("best epoch (its weights are saved)", summary.get("best_epoch")),
        ("best val accuracy (chosen on val)", summary.get("best_val_acc")),
        ("final epoch val accuracy", summary.get("final_val_acc")),
        ("training time (s)", round(float(summary.get("seconds", 0.0)), 1)),
    ]
    if metadata.get("stage") or metadata.get("head"):
        facts.insert(
            3, ("stage / head", f"{metadata.get('stage') or 'top'} / {metadata.get('head')}")
        )
    counts = {phase: splits.class_counts(phase) for phase in ("train", "val")}
    rows = [
        (name, counts["train"][index], counts["val"][index])
        for index, name in enumerate(splits.class_names)
    ]
    rows.append(("all", sum(counts["train"]), sum(counts["val"])))
    return (
        "<h2>The run</h2>"
        + table(["", "value"], [(key, "-" if value is None else value) for key, value in facts])
        + f"<p>Data: <code>{escape(splits.root)}</code> ({escape(splits.layout)} layout)</p>"
        + table(["class", "train images", "val images"], rows, css_id="dataset-sizes")
        + "<p>Reproduce it:</p>"
        + f'<pre id="command">{escape(reproduce_command(config, run_dir))}</pre>'
    )


def curves_section(metrics: list[dict[str, Any]]) -> str:
    if not metrics:
        return "<h2>Learning curves</h2><p>No metrics.jsonl in this run.</p>"
    return "<h2>Learning curves</h2>" + image_tag(
        report_plots.learning_curves(metrics), "loss, accuracy and learning rate per epoch"
    )


def confusion_section(report: ClassificationReport) -> str:
    names = list(report.class_names)
    rows = zip(names, report.confusion, strict=True)
    counts = [[name, *(int(count) for count in row)] for name, row in rows]
    scores = [
        (row["class"], row["precision"], row["recall"], row["f1"], row["support"])
        for row in report.per_class()
    ]
    return (
        f"<h2>Confusion matrix</h2><p>Val accuracy {report.accuracy:.4f} on {report.total} "
        "images (the saved model, i.e. the best epoch's weights). Rows: true class; columns: "
        "predicted.</p>"
        + image_tag(report_plots.confusion_heat_maps(report.confusion, names), "confusion matrix")
        + table(["true \\ predicted", *names], counts, css_id="confusion")
        + table(["class", "precision", "recall", "F1", "support"], scores, css_id="per-class")
    )


def top_losses_section(loaded: LoadedModel, results: ValResults, root: Path) -> str:
    """The val images with the highest loss, each over its predicted class's map."""
    from tlvision.data.images import BadImageError, load_rgb_image
    from tlvision.inference.class_maps import class_mapper, class_maps, overlay_png

    mapper = class_mapper(_on_cpu(loaded))
    losses = results.losses
    figures = []
    for index in top_losses(losses, TOP_LOSSES):
        path, true = results.predictions.samples[index]
        probabilities = results.predictions.probabilities[index]
        predicted = int(np.argmax(probabilities))
        try:
            maps = class_maps(mapper, load_rgb_image(path), max_side=MAP_SIDE)
        except BadImageError:
            continue
        overlay = overlay_png(
            maps.image, maps.probability_maps()[predicted], value_range=(0.0, 1.0)
        )
        names = results.class_names
        verdict = "wrong" if predicted != true else "right"
        figures.append(
            f'<figure class="top-loss" data-path="{escape(path)}" data-loss="{losses[index]:.6f}">'
            + image_tag(overlay, f"{names[predicted]} map of {path.name}", "overlay")
            + f"<figcaption><b>{escape(_relative(path, root))}</b><br>"
            f"true <b>{escape(names[true])}</b>, predicted "
            f'<b class="{verdict}">{escape(names[predicted])}</b> '
            f"p={probabilities[predicted]:.3f}<br>p(true)={probabilities[true]:.3f}, "
            f"loss {losses[index]:.3f}</figcaption></figure>"
        )
    return (
        "<h2>Top losses</h2><p>The val images the model is most wrong or least sure about "
        "(highest cross-entropy first). Each is overlaid with the map of its predicted class: "
        "the per-location probability of that class (black 0, yellow 1), from the head read as "
        "a 1x1 convolution over the whole image.</p>"
        f'<div class="losses">{"".join(figures)}</div>'
    )


def _on_cpu(loaded: LoadedModel) -> LoadedModel:
    loaded.model.cpu()
    return loaded


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def mistakes_section(report: ClassificationReport, results: ValResults) -> str:
    names = report.class_names
    pairs = confused_pairs(report.confusion, 10)
    rows = [(names[true], names[predicted], count) for true, predicted, count in pairs]
    confused = (
        table(["true class", "predicted as", "images"], rows, css_id="confused-pairs")
        if rows
        else "<p>No val image is misclassified.</p>"
    )
    result = calibration(results.predictions.probabilities, results.predictions.labels)
    return (
        "<h2>Most confused classes</h2>" + confused
        + "<h2>Calibration</h2><p>Does a confidence of p mean right p of the time? Bars: "
        "accuracy of the val images in each confidence bin; expected calibration error "
        f'<b id="ece">{result.expected_calibration_error:.4f}</b>.</p>'
        + image_tag(report_plots.reliability_diagram(result), "reliability diagram")
    )  # fmt: skip


def advice_section(run_dir: Path) -> str:
    path = run_dir / ADVICE_FILE
    if not path.is_file():
        return ""
    advice = json.loads(path.read_text())
    reasons = "".join(f"<li>{escape(reason)}</li>" for reason in advice.get("reasons", []))
    return (
        f"<h2>Why this strategy: the advisor</h2><p>Quadrant <b>{escape(advice.get('quadrant'))}"
        f"</b>: recommended <b>{escape(advice.get('strategy'))}</b>"
        + (f" (stage {escape(advice['stage'])})" if advice.get("stage") else "")
        + f".</p><ul>{reasons}</ul>"
        + image_tag(report_plots.advice_evidence(advice.get("evidence", {})), "advisor evidence")
    )


def check_section(data_dir: Path) -> str:
    from tlvision.data.doctor import check_dataset

    problems = check_dataset(data_dir, progress=False).problems
    if not problems:
        return ""
    rows = [(p.kind, p.path, p.message) for p in problems[:MAX_LISTED_PROBLEMS]]
    more = len(problems) - len(rows)
    return (
        f"<h2>Dataset problems</h2><p><code>tlvision check</code> found {len(problems)} "
        "problem(s) in the data:</p>"
        + table(["kind", "file", "what to do"], rows, css_id="check-problems")
        + (f"<p>... and {more} more: run <code>tlvision check</code>.</p>" if more else "")
    )


@dataclass(frozen=True)
class ReportResult:
    path: Path
    seconds: float
    source: str  # how the val probabilities were computed


def write_report(
    run_dir: Path, data_dir: Path | None = None, *, device: torch.device | None = None
) -> ReportResult:
    """Write RUN/report.html for a finished run; `data_dir` defaults to the run's own data."""
    started = time.perf_counter()
    record = read_run(run_dir)
    loaded = load_run_model(run_dir)
    splits = run_splits(loaded.metadata, data_dir)
    results = val_results(loaded, splits, device=device or torch.device("cpu"))
    classification = results.classification_report()
    sections = [
        run_section(loaded, record.summary, splits, run_dir),
        curves_section(record.metrics),
        confusion_section(classification),
        top_losses_section(loaded, results, splits.root),
        mistakes_section(classification, results),
        advice_section(run_dir),
        check_section(splits.root),
    ]
    seconds = time.perf_counter() - started
    title = f"tlvision report: {run_dir.name}"
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
        f"<p>Classes: {escape(', '.join(loaded.class_names))}</p>{''.join(sections)}"
        f"<p><small>Made in {seconds:.1f}s; val predictions from {escape(results.source)}."
        "</small></p></body></html>\n"
    )
    path = run_dir / REPORT_FILE
    temporary = path.with_name(f".{REPORT_FILE}.tmp-{os.getpid()}")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, path)
    return ReportResult(path, seconds, results.source)
