"""`tlvision check` on a CSV dataset (DATA/train.csv, val.csv, test.csv): every bad row of
every table (missing file, bad row, duplicate, unknown columns), labels no train row has,
classes with no positive val image, and the imbalance of the train classes' positives."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tlvision.data.doctor_classes import imbalance, suggested_class_weights
from tlvision.data.doctor_report import CheckReport, Findings, Problem
from tlvision.data.label_table import (
    LabelRow,
    cross_table_problems,
    scan_table,
    table_phases,
)
from tlvision.errors import UserError


def _problem(kind: str, error: UserError) -> Problem:
    message = str(error)
    path, _, rest = message.partition(": ")
    return Problem(kind, path, rest or message)


def check_label_tables(data_dir: Path) -> CheckReport:
    """Read every table, collect every problem (check does not stop at the first)."""
    findings = Findings()
    rows: dict[str, list[LabelRow]] = {}
    for phase in table_phases(data_dir, with_test=True):
        rows[phase], problems = scan_table(data_dir / f"{phase}.csv", data_dir)
        findings.problems += [_problem("label-table", error) for error in problems]
    class_names = tuple(sorted({label for row in rows.get("train", []) for label in row.labels}))
    findings.problems += [
        _problem("label-table", error)
        for error in cross_table_problems(data_dir, rows, class_names)
    ]
    counts = {phase: _positives(phase_rows, class_names) for phase, phase_rows in rows.items()}
    for name in class_names:
        if rows.get("val") and counts["val"][name] == 0:
            findings.notes.append(
                Problem(
                    "no-val-positive",
                    str(data_dir / "val.csv"),
                    f"class {name!r} has no positive val image, so its AP and threshold cannot "
                    "be measured (its threshold stays 0.5); add val images of it",
                )
            )
    train_counts = counts.get("train", {})
    weights = suggested_class_weights(train_counts)
    skew = imbalance(data_dir / "train.csv", train_counts, weights)
    if skew is not None:
        findings.problems.append(skew)
    return CheckReport(
        data_dir=data_dir,
        problems=findings.problems,
        notes=findings.notes,
        ignored=[],
        class_counts=counts,
        suggested_class_weights=weights,
        images_checked=sum(len(phase_rows) for phase_rows in rows.values()),
        layout="csv",
    )


def _positives(rows: list[LabelRow], class_names: tuple[str, ...]) -> dict[str, int]:
    counted = Counter(label for row in rows for label in row.labels)
    return {name: counted[name] for name in class_names}
