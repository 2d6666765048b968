"""Runs side by side: one row per run (from model.json, summary.json and metrics.jsonl) and a
page with their val curves overlaid (one colour per run), the options that differ between them
and a link to each run's report.

The page goes where it is asked to (`--out`), else next to the runs (their common parent
folder), and never replaces a file that is there unless asked (`overwrite`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlvision.errors import UserError
from tlvision.runs.layout import REPORT_FILE
from tlvision.runs.reader import read_metrics, read_run

PAGE_NAME = "compare.html"
# config.toml fields that say where or how a run was computed, not what it learned
BOOKKEEPING = frozenset({
    "data_dir", "out_dir", "overwrite", "device", "num_workers", "cache_dir", "no_cache",
    "tensorboard", "precision",
})  # fmt: skip
COLUMNS = (
    ("run", "run"), ("dataset", "dataset"), ("strategy", "strategy"), ("backbone", "backbone"),
    ("input_size", "input"), ("epochs", "epochs"), ("best_val_acc", "best val acc"),
    ("final_val_acc", "final val acc"), ("seconds", "time (s)"),
)  # fmt: skip


def compare_row(run_dir: Path) -> dict[str, Any]:
    record = read_run(run_dir)
    metadata, summary, metrics = record.model_info, record.summary, record.metrics
    final = summary.get("final_val_acc", metrics[-1]["val_acc"] if metrics else None)
    data_dir = record.config.get("data_dir")
    return {
        "run": str(run_dir),
        "dataset": os.path.normpath(data_dir) if data_dir else None,
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


def default_page_path(run_dirs: Sequence[Path]) -> Path:
    """compare.html next to the runs: in the folder that holds them all."""
    parents = [str(run_dir.resolve().parent) for run_dir in run_dirs]
    return Path(os.path.commonpath(parents)) / PAGE_NAME


def differing_options(run_dirs: Sequence[Path]) -> tuple[list[str], list[list[Any]]]:
    """(option names, one row of values per run) for the training options whose values are not
    the same in every run (where and how a run was computed left out: BOOKKEEPING)."""
    configs = [read_run(run_dir).config for run_dir in run_dirs]
    names = sorted({name for config in configs for name in config} - BOOKKEEPING)
    differing = [name for name in names if len({repr(c.get(name)) for c in configs}) > 1]
    return differing, [[config.get(name) for name in differing] for config in configs]


def _report_link(run_dir: Path, page_dir: Path) -> str:
    from tlvision.tables import escape

    report = run_dir / REPORT_FILE
    if not report.is_file():
        return f"no report yet: <code>tlvision report {escape(run_dir)}</code>"
    target = Path(os.path.relpath(report.resolve(), page_dir.resolve())).as_posix()
    return f'<a class="report-link" href="{escape(target)}">{escape(run_dir)}</a>'


def write_compare_page(
    run_dirs: Sequence[Path],
    rows: Sequence[dict[str, Any]],
    path: Path | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """A self-contained HTML page: the table, the options that differ, links to each run's
    report and the overlaid val accuracy / loss curves. `path` defaults to compare.html next to
    the runs; a file already there is replaced only with `overwrite`."""
    from tlvision.report.curves import overlaid_val_curves
    from tlvision.report.page import escape, image_tag, table

    path = default_page_path(run_dirs) if path is None else path
    if path.exists() and not overwrite:
        raise UserError(
            f"{path} already exists: pass --overwrite to replace it, or --out to write the "
            "page elsewhere"
        )
    curves = overlaid_val_curves([(str(run_dir), read_metrics(run_dir)) for run_dir in run_dirs])
    body = table(
        [title for _key, title in COLUMNS],
        [[_cell(key, row[key]) for key, _title in COLUMNS] for row in rows],
        css_id="runs",
    )
    names, values = differing_options(run_dirs)
    options = (
        table(["run", *names], [[str(r), *v] for r, v in zip(run_dirs, values, strict=True)],
              css_id="differing-options")
        if names else "<p>Every training option is the same in these runs.</p>"
    )  # fmt: skip
    links = "".join(f"<li>{_report_link(run_dir, path.parent)}</li>" for run_dir in run_dirs)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tlvision compare'
        "</title><style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:.25em .6em}img{max-width:100%}</style>"
        f"</head><body><h1>{escape(f'{len(rows)} runs compared')}</h1>{body}"
        f"<h2>Options that differ</h2>{options}"
        f'<h2>Reports</h2><ul id="reports">{links}</ul>'
        f"<h2>Val curves</h2>{image_tag(curves, 'val accuracy and loss per epoch')}</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, path)
    return path
