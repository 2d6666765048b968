"""Runs side by side: one row per run (from model.json, summary.json and metrics.jsonl) and a
page with their val curves overlaid."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlvision.runs.reader import read_metrics, read_run

COLUMNS = (
    ("run", "run"), ("strategy", "strategy"), ("backbone", "backbone"),
    ("input_size", "input"), ("epochs", "epochs"), ("best_val_acc", "best val acc"),
    ("final_val_acc", "final val acc"), ("seconds", "time (s)"),
)  # fmt: skip


def compare_row(run_dir: Path) -> dict[str, Any]:
    record = read_run(run_dir)
    metadata, summary, metrics = record.model_info, record.summary, record.metrics
    final = summary.get("final_val_acc", metrics[-1]["val_acc"] if metrics else None)
    return {
        "run": str(run_dir),
        "strategy": metadata.get("strategy"),
        "backbone": metadata.get("backbone"),
        "input_size": metadata.get("preprocessing", {}).get("crop_size"),
        "epochs": summary.get("epochs"),
        "best_val_acc": summary.get("best_val_acc"),
        "final_val_acc": final,
        "seconds": summary.get("seconds"),
    }


def compare_rows(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    return [compare_row(run_dir) for run_dir in run_dirs]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "seconds":
        return f"{value:.1f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def compare_text(rows: Sequence[dict[str, Any]]) -> str:
    cells = [[title for _key, title in COLUMNS]]
    cells += [[_cell(key, row[key]) for key, _title in COLUMNS] for row in rows]
    widths = [max(len(line[column]) for line in cells) for column in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def write_compare_page(
    run_dirs: Sequence[Path], rows: Sequence[dict[str, Any]], path: Path
) -> Path:
    """A self-contained HTML page: the table and the overlaid val accuracy / loss curves."""
    from tlvision.report.page import escape, image_tag, table
    from tlvision.report.plots import overlaid_val_curves

    curves = overlaid_val_curves([(str(run_dir), read_metrics(run_dir)) for run_dir in run_dirs])
    body = table(
        [title for _key, title in COLUMNS],
        [[_cell(key, row[key]) for key, _title in COLUMNS] for row in rows],
        css_id="runs",
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tlvision compare'
        "</title><style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:.25em .6em}img{max-width:100%}</style>"
        f"</head><body><h1>{escape(f'{len(rows)} runs compared')}</h1>{body}"
        f"<h2>Val curves</h2>{image_tag(curves, 'val accuracy and loss per epoch')}</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, path)
    return path
