"""What ``tlvision check`` found: the Problem and CheckReport records and their text and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

_TEXT_LINES_PER_KIND = 20
LEAK_KINDS = ("duplicate-across-splits", "near-duplicate-across-splits")


IMBALANCE_RATIO = 3.0
"""Largest/smallest train class size at which class imbalance is reported."""


@dataclass(frozen=True)
class Problem:
    """One finding: ``path`` is the file or folder concerned, ``message`` says what to do."""

    kind: str
    path: str
    message: str


@dataclass
class Findings:
    """What a check collects as it goes: problems (exit status 1), notes, ignored files."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class CheckReport:
    """What ``check_dataset`` found. ``exit_status`` is 0 when there are no problems, else 1."""

    data_dir: Path
    problems: list[Problem]
    notes: list[Problem]
    ignored: list[Path]
    class_counts: dict[str, dict[str, int]]
    """Per split (train, val and test when there is one), per class: the images that load
    (tiny ones included; broken ones not)."""
    suggested_class_weights: dict[str, float] | None
    """scikit-learn's "balanced" weights, n_total / (n_classes * n_class), over train counts;
    None unless every class of at least two has a loadable train image."""
    images_checked: int = 0
    layout: str = "split"  # or "flat": one folder per class, checked as the split FLAT_SPLIT

    @property
    def exit_status(self) -> int:
        return 1 if self.problems else 0

    def problem_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
        return counts

    def to_json(self) -> dict[str, object]:
        return {
            "data_dir": str(self.data_dir),
            "layout": self.layout,
            "ok": not self.problems,
            "exit_status": self.exit_status,
            "images_checked": self.images_checked,
            "class_counts": self.class_counts,
            "suggested_class_weights": self.suggested_class_weights,
            "problem_counts": self.problem_counts(),
            "problems": [asdict(problem) for problem in self.problems],
            "notes": [asdict(note) for note in self.notes],
            "ignored": [str(path) for path in self.ignored],
        }

    def to_text(self) -> str:
        split_totals = ", ".join(
            f"{split} {sum(counts.values())}" for split, counts in self.class_counts.items()
        )
        lines = [
            f"Checked {self.images_checked} image files in {self.data_dir}"
            + (f" (loadable: {split_totals})" if split_totals and self.layout != "csv" else "")
        ]
        if self.layout == "csv":
            lines.append("Labels from CSV tables; the counts are each class's positive images:")
        lines += _class_table(self.class_counts)
        suggested = self.suggested_class_weights
        if suggested is not None and worth_weighting(suggested):
            weights = ", ".join(f"{name}={w:g}" for name, w in suggested.items())
            lines.append(f"Suggested class weights (--class-weights auto): {weights}")
        lines += _findings(self.problems, self.notes, self.ignored)
        lines.append("")
        if any(problem.kind in LEAK_KINDS for problem in self.problems):
            lines.append(
                f"Images shared between splits inflate val and test accuracy: `tlvision audit "
                f"{self.data_dir}` also finds copies that were resized, cropped or mirrored "
                "(by their CNN codes), and mislabelled images."
            )
        lines.append(self._result_line())
        return "\n".join(lines)

    def _result_line(self) -> str:
        if not self.problems:
            return "Result: no problems found."
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.problem_counts().items())
        return (
            f"Result: {counted(len(self.problems), 'problem')} ({kinds}); fix "
            f"{'it' if len(self.problems) == 1 else 'them'} and run `tlvision check` again."
        )


def counted(count: int, noun: str) -> str:
    """ "1 problem", "2 problems"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def worth_weighting(weights: dict[str, float] | None) -> bool:
    """Class weights are worth suggesting when the classes are as uneven as the imbalance
    problem says (IMBALANCE_RATIO), not for 0.992 against 1.008."""
    if not weights:
        return False
    return max(weights.values()) / min(weights.values()) >= IMBALANCE_RATIO


def _findings(problems: list[Problem], notes: list[Problem], ignored: list[Path]) -> list[str]:
    """The problems and notes grouped by kind, then the ignored files (a few named)."""
    lines: list[str] = []
    if problems:
        lines.append("")
        lines.append(f"Problems ({len(problems)}):")
        lines += _grouped(problems)
    if notes:
        lines.append("")
        lines.append(f"Notes ({len(notes)}, informational: nothing to fix):")
        lines += _grouped(notes)
    if ignored:
        shown = ", ".join(str(path) for path in ignored[:5])
        more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
        lines.append("")
        lines.append(
            f"Ignored {len(ignored)} hidden/system files and folders "
            f"(training skips them too): {shown}{more}"
        )
    return lines


def _class_table(class_counts: dict[str, dict[str, int]]) -> list[str]:
    names = sorted({name for counts in class_counts.values() for name in counts})
    if not names:
        return []
    splits = list(class_counts)
    width = max(len("class"), *(len(name) for name in names))
    lines = ["", "  " + "class".ljust(width) + "".join(f"  {split:>7}" for split in splits)]
    for name in names:
        cells = "".join(f"  {class_counts[split].get(name, '-')!s:>7}" for split in splits)
        lines.append("  " + name.ljust(width) + cells)
    return lines


def _grouped(findings: list[Problem]) -> list[str]:
    by_kind: dict[str, list[Problem]] = {}
    for finding in findings:
        by_kind.setdefault(finding.kind, []).append(finding)
    lines: list[str] = []
    for kind, group in by_kind.items():
        lines.append(f"  {kind} ({len(group)}):")
        for finding in group[:_TEXT_LINES_PER_KIND]:
            lines.append(f"    {finding.path}: {finding.message}")
        if len(group) > _TEXT_LINES_PER_KIND:
            lines.append(
                f"    ... and {len(group) - _TEXT_LINES_PER_KIND} more (--json lists them all)"
            )
    return lines
