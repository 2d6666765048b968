"""`tlvision.audit`: the data audit as a function, returning an AuditReport (audit.json's
content, the printed summary, and a notebook view with thumbnails)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlvision.api.results import _Report
from tlvision.compute.cores import prefer_passive_waiting
from tlvision.config import TrainConfig
from tlvision.progress import showing_progress
from tlvision.tables import escape, html_table

PathLike = str | os.PathLike[str]
DEFAULT_FOLDS = 5
Log = Callable[[str], None]


def _silent(message: str) -> None:
    """Drops the message: the API prints nothing unless asked."""


@dataclass(frozen=True, repr=False)
class AuditReport(_Report):
    """What `tlvision audit` found, as audit.json holds it; `out_dir` where it was written."""

    out_dir: Path | None = None

    @property
    def label_issues(self) -> list[dict[str, Any]]:
        """file, split, given, suggested, score: most suspect first."""
        return list(self.details["label_issues"])

    @property
    def duplicates(self) -> list[dict[str, Any]]:
        """files, splits, similarity: groups across splits first."""
        return list(self.details["duplicates"])

    @property
    def outliers(self) -> list[dict[str, Any]]:
        return list(self.details["outliers"])

    def __repr__(self) -> str:
        return (
            f"AuditReport(data_dir={self.details['data_dir']!r}, "
            f"label_issues={len(self.label_issues)}, duplicates={len(self.duplicates)}, "
            f"outliers={len(self.outliers)})"
        )

    def _repr_html_(self) -> str:
        from tlvision.auditor.page import label_section

        counts = html_table(
            ["finding", "count"],
            [
                ["label issues", len(self.label_issues)],
                ["duplicate groups", len(self.duplicates)],
                ["across splits", sum(1 for g in self.duplicates if g["across_splits"])],
                ["strangers listed", len(self.outliers)],
            ],
            caption=f"audit of {self.details['data_dir']}",
        )
        where = f"<p>Written to {escape(self.out_dir)}</p>" if self.out_dir else ""
        shown = {**self.details, "label_issues": self.label_issues[:10]}
        return counts + where + label_section(Path(self.details["data_dir"]), shown)


def audit(
    data: PathLike,
    *,
    out: PathLike | None = None,
    run: PathLike | None = None,
    backbone: str = TrainConfig.backbone,
    weights: str | None = TrainConfig.weights,
    input_size: int | None = TrainConfig.input_size,
    folds: int = DEFAULT_FOLDS,
    C: float | None = None,
    cache_dir: PathLike | None = TrainConfig.cache_dir,
    no_cache: bool = TrainConfig.no_cache,
    val_split: float | None = TrainConfig.val_split,
    seed: int = TrainConfig.seed,
    device: str = TrainConfig.device,
    verbose: bool = False,
    log: Log | None = None,
) -> AuditReport:
    """Audit a dataset (`tlvision audit`): label issues, duplicates and leakage, strangers and
    overlapping classes, from the cached codes. `run`: read the images with a trained run's
    backbone, weights and input size (and its --val-split and seed). `out`: write audit.json,
    audit.html and audit_fixes.csv there. Nothing in DATA is changed."""
    from tlvision.auditor.collect import CodesSource
    from tlvision.auditor.result import (
        AuditOptions,
        run_audit,
        source_of_run,
        summary_text,
        write_outputs,
    )

    source = CodesSource(
        backbone=backbone, weights=weights, input_size=input_size,
        cache_dir=None if cache_dir is None else Path(cache_dir), use_cache=not no_cache,
        device=device,
    )  # fmt: skip
    if run is not None:
        source, config = source_of_run(Path(run), source)
        val_split = config.get("val_split", val_split)
        seed = int(config.get("seed", seed))
    options = AuditOptions(folds=folds, seed=seed, val_split=val_split, C=C)
    prefer_passive_waiting()  # before anything loads torch
    report = log if log is not None else (print if verbose else _silent)
    with showing_progress(verbose):
        details = run_audit(Path(data), source, options, log=report)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        write_outputs(details, out_dir)
    return AuditReport(details=details, text=summary_text(details, out_dir), out_dir=out_dir)
