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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlvision.config import reproduce_arguments
from tlvision.data.doctor_report import Problem
from tlvision.data.layouts import DatasetSplits
from tlvision.errors import writing
from tlvision.inference.evaluation import ClassificationReport
from tlvision.inference.multilabel import is_multi_label
from tlvision.report import curves as report_curves
from tlvision.report import plots as report_plots
from tlvision.report.excluded import excluded_note
from tlvision.report.headline import epochs_text, fitted_in_one_step, headline_section, leak_banner
from tlvision.report.interpretation import ValResults, calibration, confused_pairs, val_results
from tlvision.report.multilabel_page import multilabel_sections
from tlvision.report.rejection import rejection_section
from tlvision.report.top_losses import STYLE as TOP_LOSSES_STYLE
from tlvision.report.top_losses import TOP_LOSSES, top_losses_section
from tlvision.runs.layout import ADVICE_FILE, REPORT_FILE
from tlvision.runs.reader import LoadedModel, load_run_model, read_run, run_splits
from tlvision.tables import escape, html_table

__all__ = ["TOP_LOSSES", "ReportResult", "reproduce_command", "write_report"]
MAX_LISTED_PROBLEMS = 40
STYLE = (
    """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td { font-variant-numeric: tabular-nums; }
code, pre { background: #f4f4f4; padding: 0.2em 0.4em; }
pre { white-space: pre-wrap; word-break: break-all; }
img.plot { max-width: 100%; }
.wrong { color: #b00; }
.headline { font-size: 1.15em; background: #f4f7fb; border: 1px solid #c8d3e0; padding: 0.2em 1em; }
.warning { background: #fdecea; border: 2px solid #b00; padding: 0.5em 1em; margin: 0.8em 0; }
"""
    + TOP_LOSSES_STYLE
)


def image_tag(png: bytes, alt: str, css_class: str = "plot") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: Sequence[str], rows: Sequence[Sequence[object]], css_id: str = "") -> str:
    return html_table(header, rows, table_id=css_id)


def reproduce_command(config: dict[str, Any], run_dir: Path) -> str:
    """The `tlvision train` line that makes this run again, every option it set spelled out
    (tlvision.config.reproduce_arguments)."""
    return shlex.join(["tlvision", "train", *reproduce_arguments(config), "--out", str(run_dir)])


def _balanced_facts(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """Imbalanced classes (the summary has them): balanced accuracy and macro F1, which the
    run's table then leads with; multi-label runs: mAP and F1."""
    keys = [
        ("test mAP (the saved weights, scored once at the end)", "test_map"),
        ("test micro F1 (at the thresholds)", "test_micro_f1"),
        ("val balanced accuracy (classes of very different sizes)", "final_val_balanced_acc"),
        ("val macro F1", "val_macro_f1"),
        ("final epoch val mAP", "final_val_map"),
        ("val micro F1 (at the thresholds)", "val_micro_f1"),
    ]
    return [(label, round(summary[key], 4)) for label, key in keys if key in summary]


def run_section(
    loaded: LoadedModel,
    summary: dict[str, Any],
    splits: DatasetSplits,
    run_dir: Path,
    metrics: Sequence[dict[str, Any]] = (),
) -> str:
    metadata, config = loaded.metadata, loaded.metadata.get("config", {})
    if fitted_in_one_step(summary, metrics):  # no epochs to choose from: one accuracy
        accuracies = [("val accuracy (the one fit, saved)", summary.get("final_val_acc"))]
    else:
        accuracies = [
            ("best epoch (its weights are saved)", summary.get("best_epoch")),
            ("best val accuracy (chosen on val)", summary.get("best_val_acc")),
            ("final epoch val accuracy", summary.get("final_val_acc")),
        ]
    facts = [
        ("strategy", metadata.get("strategy")),
        ("backbone", metadata.get("backbone")),
        ("weights", metadata.get("weights")),
        ("input size (pixels)", loaded.preprocessing.crop_size),
        ("epochs", epochs_text(summary, metrics)),
        *_balanced_facts(summary),  # test mAP; on imbalanced or multi-label data, these lead
        *accuracies,
        ("training time (s)", round(float(summary.get("seconds", 0.0)), 1)),
    ]
    if metadata.get("stage") or metadata.get("head"):
        facts.insert(
            3, ("stage / head", f"{metadata.get('stage') or 'top'} / {metadata.get('head')}")
        )
    skipped = [str(entry["path"]) for entry in summary.get("skipped_files", [])]
    counts = {phase: _readable_counts(splits, phase, set(skipped)) for phase in ("train", "val")}
    rows = [
        (name, counts["train"][index], counts["val"][index])
        for index, name in enumerate(splits.class_names)
    ]
    rows.append(("all", sum(counts["train"]), sum(counts["val"])))
    left_out = "".join(f"<li><code>{escape(path)}</code></li>" for path in skipped)
    return (
        "<h2>The run</h2>"
        + table(["", "value"], [(key, "-" if value is None else value) for key, value in facts])
        + f"<p>Data: <code>{escape(splits.root)}</code> ({escape(splits.layout)} layout)</p>"
        + excluded_note(summary)
        + table(["class", "train images", "val images"], rows, css_id="dataset-sizes")
        + (f"<p>Left out, unreadable ({len(skipped)}):</p><ul>{left_out}</ul>" if skipped else "")
        + "<p>Reproduce it:</p>"
        + f'<pre id="command">{escape(reproduce_command(config, run_dir))}</pre>'
    )


def _readable_counts(splits: DatasetSplits, phase: str, skipped: set[str]) -> list[int]:
    """Images per class that the run read (the unreadable files it skipped left out): the
    counts its log and summary.json give."""
    counts = [0] * len(splits.class_names)
    for path, label in splits.samples[phase]:
        for class_index in splits.classes_of(label):  # multi-label: each of the image's classes
            counts[class_index] += str(path) not in skipped
    return counts


def curves_section(metrics: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    if not metrics:
        return "<h2>Learning curves</h2><p>No metrics.jsonl in this run.</p>"
    if fitted_in_one_step(summary, metrics):
        head = str(summary.get("head") or "the")
        return (
            '<h2>Learning curves</h2><p id="one-step">No curves: the head is fitted in one step '
            "(no epochs, no loss to follow).</p>"
            + image_tag(report_curves.one_step_panel(metrics, head), "the one fit's accuracy")
        )
    saved = summary.get("best_epoch")
    return (
        "<h2>Learning curves</h2><p>The dotted line marks the saved weights' epoch"
        + (f" ({int(saved)})" if saved is not None else "")
        + ".</p>"
        + image_tag(
            report_curves.learning_curves(metrics, None if saved is None else int(saved)),
            "loss, accuracy and learning rate per epoch",
        )
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
        "accuracy of the val images in each confidence bin, its number of images above it; "
        "red dashes: each bin's mean confidence, where a calibrated bar would reach; expected "
        "calibration error "
        f'<b id="ece">{result.expected_calibration_error:.4f}</b>.</p>'
        + image_tag(report_curves.reliability_diagram(result), "reliability diagram")
        + calibration_table(result)
    )  # fmt: skip


def calibration_table(result: Any) -> str:
    """Each confidence bin that holds images: its range, count, accuracy and mean confidence."""
    rows = [
        (f"{low:.1f}-{high:.1f}", int(count), float(accuracy), float(confidence))
        for low, high, count, accuracy, confidence in zip(
            result.edges[:-1], result.edges[1:], result.counts, result.accuracy,
            result.confidence, strict=True,
        )
        if count
    ]  # fmt: skip
    return table(["confidence bin", "images", "accuracy", "mean confidence"], rows,
                 css_id="calibration-bins")  # fmt: skip


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


def check_section(problems: Sequence[Problem]) -> str:
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
    device = device or torch.device("cpu")
    with ThreadPoolExecutor(max_workers=1) as background:  # the check decodes while we draw
        checked = background.submit(_dataset_problems, splits.root)
        if is_multi_label(loaded.metadata):  # sigmoid outputs: scores, PR curves, errors per class
            sections = [
                run_section(loaded, record.summary, splits, run_dir, record.metrics),
                curves_section(record.metrics, record.summary),
                *multilabel_sections(loaded, splits, splits.root, device),
                advice_section(run_dir),
            ]
            problems = checked.result()
            sections = [leak_banner(problems), *sections, check_section(problems)]
            return _write_page(run_dir, loaded, started, "images", sections)
        results = val_results(loaded, splits, device=device)
        classification = results.classification_report()
        sections = _sections(loaded, record, splits, run_dir, results, classification)
        problems = checked.result()
    sections = [
        headline_section(record.summary, record.metrics, classification.accuracy),
        leak_banner(problems),
        *sections,
        check_section(problems),
    ]
    return _write_page(run_dir, loaded, started, results.source, sections)


def _write_page(
    run_dir: Path, loaded: LoadedModel, started: float, source: str, sections: list[str]
) -> ReportResult:
    seconds = time.perf_counter() - started
    title = f"tlvision report: {run_dir.name}"
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
        f"<p>Classes: {escape(', '.join(loaded.class_names))}</p>{''.join(sections)}"
        f"<p><small>Made in {seconds:.1f}s; val predictions from {escape(source)}."
        "</small></p></body></html>\n"
    )
    path = run_dir / REPORT_FILE
    temporary = path.with_name(f".{REPORT_FILE}.tmp-{os.getpid()}")
    then = f"write it with `tlvision report {run_dir}`"
    with writing(path, needed=len(page.encode()), temporary=temporary, then=then):
        temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, path)
    return ReportResult(path, seconds, source)


def _dataset_problems(data_dir: Path) -> list[Problem]:
    from tlvision.data.doctor import check_dataset

    return check_dataset(data_dir, progress=False).problems


def _sections(
    loaded: LoadedModel,
    record: Any,
    splits: DatasetSplits,
    run_dir: Path,
    results: ValResults,
    classification: ClassificationReport,
) -> list[str]:
    """The page's sections between the headline and the dataset check, in order."""
    return [
        run_section(loaded, record.summary, splits, run_dir, record.metrics),
        curves_section(record.metrics, record.summary),
        confusion_section(classification),
        top_losses_section(loaded, results, splits.root),
        mistakes_section(classification, results),
        rejection_section(run_dir, image_tag),
        advice_section(run_dir),
    ]
