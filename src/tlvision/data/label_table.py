"""Labels from CSV: DATA/train.csv and DATA/val.csv (and an optional DATA/test.csv).

Each table has the columns `file,labels`: `file` relative to DATA, `labels` the image's classes
separated by `;` (empty: none of the classes). The class list is the union of the labels,
sorted. When every row of every table has exactly one label the dataset is an ordinary
single-label one (samples are (path, class index)); otherwise it is multi-label and a sample's
integer is its row in `DatasetSplits.targets[phase]`, the tuple of its class indices.

Every bad row is a UserError naming the table, the row and the fix.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tlvision.errors import UserError

CSV_PHASES = ("train", "val")
SCORED_SPLITS = ("val", "test")  # what `evaluate --split` picks in a DATA folder
DEFAULT_SCORED_SPLIT = "val"
COLUMNS = ("file", "labels")
SEPARATOR = ";"
CSV_LAYOUT = "DATA/train.csv and DATA/val.csv with columns file,labels (labels separated by ;)"


def has_label_tables(data_dir: Path) -> bool:
    return (data_dir / "train.csv").is_file()


@dataclass(frozen=True)
class LabelRow:
    """One row of a table: its line number (1 is the header), the image, its labels."""

    line: int
    path: Path
    labels: tuple[str, ...]


def read_table(table: Path, data_dir: Path) -> list[LabelRow]:
    """The rows of one CSV, each checked; the first bad one raises its UserError."""
    rows, problems = scan_table(table, data_dir)
    if problems:
        raise problems[0]
    return rows


def scan_table(table: Path, data_dir: Path) -> tuple[list[LabelRow], list[UserError]]:
    """The good rows of one CSV and an error per bad one (columns, a missing file, a bad row,
    a duplicate), each naming the table and the line: `check` lists them all."""
    if not table.is_file():
        return [], [UserError(f"{table}: no such file; a CSV dataset has {CSV_LAYOUT}")]
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [cell.strip() for cell in next(reader, [])]
        if tuple(header) != COLUMNS:
            message = (
                f"{table}: line 1 has columns {header}; a label table has exactly the columns "
                f"{','.join(COLUMNS)}"
            )
            return [], [UserError(message)]
        rows, problems = [], []
        for line, cells in enumerate(reader, start=2):
            try:
                row = _row(table, data_dir, line, cells)
            except UserError as error:
                problems.append(error)
                continue
            if row is not None:
                rows.append(row)
    if not rows and not problems:
        problems.append(UserError(f"{table}: no rows; list one image per line as file,labels"))
    return _without_duplicates(table, rows, problems)


def _without_duplicates(
    table: Path, rows: list[LabelRow], problems: list[UserError]
) -> tuple[list[LabelRow], list[UserError]]:
    seen: dict[Path, int] = {}
    kept = []
    for row in rows:
        if row.path in seen:
            problems.append(
                UserError(
                    f"{table}: line {row.line}: {row.path.name} is listed again (first on line "
                    f"{seen[row.path]}); list each image once with all its labels"
                )
            )
            continue
        seen[row.path] = row.line
        kept.append(row)
    return kept, problems


def _row(table: Path, data_dir: Path, line: int, cells: list[str]) -> LabelRow | None:
    if not any(cell.strip() for cell in cells):
        return None  # a blank line
    if len(cells) != len(COLUMNS):
        raise UserError(
            f"{table}: line {line}: {len(cells)} cells ({','.join(cells)}); give file,labels "
            "(quote a name that holds a comma)"
        )
    name, labels = cells[0].strip(), cells[1]
    if not name:
        raise UserError(f"{table}: line {line}: the file cell is empty; name an image under DATA")
    path = data_dir / name
    if not path.is_file():
        raise UserError(
            f"{table}: line {line}: {path}: no such file; fix the name (relative to {data_dir}) "
            "or drop the row"
        )
    parts = tuple(part.strip() for part in labels.split(SEPARATOR)) if labels.strip() else ()
    if any(not part for part in parts):
        raise UserError(
            f"{table}: line {line}: empty label in {labels!r}; separate labels with a single ;"
        )
    return LabelRow(line, path, tuple(dict.fromkeys(parts)))


@dataclass(frozen=True)
class LabelTables:
    """The tables of a CSV dataset, read and checked against each other."""

    data_dir: Path
    rows: dict[str, list[LabelRow]]  # phase -> rows
    class_names: tuple[str, ...]

    @property
    def multi_label(self) -> bool:
        return any(len(row.labels) != 1 for rows in self.rows.values() for row in rows)

    def positives(self, phase: str) -> Counter[str]:
        return Counter(label for row in self.rows[phase] for label in row.labels)

    def targets(self, phase: str) -> tuple[tuple[int, ...], ...]:
        index = {name: position for position, name in enumerate(self.class_names)}
        return tuple(tuple(index[label] for label in row.labels) for row in self.rows[phase])


def table_phases(data_dir: Path, *, with_test: bool) -> list[str]:
    phases = list(CSV_PHASES)
    if with_test and (data_dir / "test.csv").is_file():
        phases.append("test")
    return phases


def read_label_tables(data_dir: Path, *, with_test: bool = False) -> LabelTables:
    """train.csv and val.csv (and test.csv when asked and present), checked; the first problem
    (see `scan_table` and `cross_table_problems`) raises its UserError."""
    rows = {}
    for phase in table_phases(data_dir, with_test=with_test):
        rows[phase] = read_table(data_dir / f"{phase}.csv", data_dir)
    class_names = tuple(sorted({label for row in rows["train"] for label in row.labels}))
    problems = cross_table_problems(data_dir, rows, class_names)
    if problems:
        raise problems[0]
    return LabelTables(data_dir, rows, class_names)


def cross_table_problems(
    data_dir: Path, rows: dict[str, list[LabelRow]], class_names: tuple[str, ...]
) -> list[UserError]:
    """Classes come from train: a train table with no label at all, or one class alone, and a
    label of another table that no train row has, are problems naming the table and row."""
    train_table = data_dir / "train.csv"
    if rows.get("train") and not any(row.labels for row in rows["train"]):
        return [
            UserError(
                f"{train_table}: the labels column is empty on every row; give each image its "
                "classes separated by ;"
            )
        ]
    problems = []
    if len(class_names) == 1 and all(row.labels for row in rows.get("train", [])):
        problems.append(
            UserError(f"{train_table}: one class ({class_names[0]}); a classifier needs two")
        )
    known = set(class_names)
    for phase, phase_rows in rows.items():
        for row in phase_rows:
            unknown = [label for label in row.labels if label not in known]
            if phase != "train" and unknown:
                problems.append(
                    UserError(
                        f"{data_dir / f'{phase}.csv'}: line {row.line}: label {unknown[0]!r} has "
                        f"no positive example in {train_table}; add train images of it or drop "
                        "the label"
                    )
                )
    return problems


def no_positive_classes(tables: LabelTables, phase: str) -> list[str]:
    """Classes with no positive image in `phase` (for val: their AP cannot be measured)."""
    positives = tables.positives(phase)
    return [name for name in tables.class_names if positives[name] == 0]
