"""`train --exclude FILE`: the files a run leaves out, read from a list or from an audit.

FILE is either a text file with one path a line (relative to DATA, or absolute; blank lines and
lines starting with # are skipped) or an audit.json written by `tlvision audit`, of which the
sections asked for are read: label_issues (every listed file), duplicates (the train copies of a
group that spans splits, so val keeps its images; within one split, all but the first copy) and
outliers (those at or above the audit's stranger score). Only train files are left out unless
`held_out` is asked: dropping the val images a model gets wrong inflates val accuracy, and the
run says so. The dataset itself is never touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tlvision.data.layouts import DatasetSplits
from tlvision.errors import UserError

AUDIT_SECTIONS = ("label_issues", "duplicates", "outliers")
DEFAULT_OUTLIER_MIN_SCORE = 3.0


@dataclass(frozen=True)
class Exclusions:
    source: Path
    sections: tuple[str, ...]  # () for a plain list
    files: frozenset[str]  # relative to DATA, forward slashes


def parse_sections(text: str) -> tuple[str, ...]:
    sections = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in sections if name not in AUDIT_SECTIONS]
    if unknown or not sections:
        raise UserError(
            f"--exclude-sections {text!r}: choose among {', '.join(AUDIT_SECTIONS)}, "
            "comma-separated"
        )
    return sections


def read_exclusions(path: Path, data_dir: Path, sections: str = "label_issues") -> Exclusions:
    """The files `path` names, relative to `data_dir`; a UserError naming the file when it
    cannot be read."""
    if not path.is_file():
        raise UserError(f"--exclude {path}: no such file; pass a list of files or an audit.json")
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if path.suffix.lower() == ".json":
        chosen = parse_sections(sections)
        return Exclusions(path, chosen, frozenset(_audit_files(path, text, chosen)))
    lines = [line.strip() for line in text.splitlines()]
    files = {_relative(line, data_dir) for line in lines if line and not line.startswith("#")}
    return Exclusions(path, (), frozenset(files))


def _relative(line: str, data_dir: Path) -> str:
    candidate = Path(line)
    if candidate.is_absolute():
        try:
            return candidate.resolve().relative_to(data_dir.resolve()).as_posix()
        except ValueError:
            return candidate.as_posix()  # not in DATA: counted as not found
    return candidate.as_posix()


def _audit_files(path: Path, text: str, sections: tuple[str, ...]) -> list[str]:
    try:
        audit = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"--exclude {path}: not valid JSON ({error}); pass an audit.json"
        ) from error
    if not isinstance(audit, dict) or not all(name in audit for name in sections):
        raise UserError(
            f"--exclude {path}: not an audit.json (no {', '.join(sections)}); write one with "
            "`tlvision audit DATA --out DIR`, or pass a list of files"
        )
    files: list[str] = []
    if "label_issues" in sections:
        files += [issue["file"] for issue in audit["label_issues"]]
    if "duplicates" in sections:
        files += [file for group in audit["duplicates"] for file in _redundant_copies(group)]
    if "outliers" in sections:
        least = float(audit.get("outlier_min_score", DEFAULT_OUTLIER_MIN_SCORE))
        files += [item["file"] for item in audit["outliers"] if item["score"] >= least]
    return files


def _redundant_copies(group: dict[str, Any]) -> list[str]:
    """A group across splits: its train copies (val and test keep theirs); else all but one."""
    pairs = list(zip(group["files"], group["splits"], strict=True))
    if len({split for _file, split in pairs}) > 1:
        return [file for file, split in pairs if split == "train"]
    return [file for file, _split in pairs[1:]]


@dataclass(frozen=True)
class ExclusionRecord:
    """What a run left out, as summary.json records it under "excluded"."""

    source: str
    sections: tuple[str, ...]
    held_out_too: bool
    left_out: dict[str, list[str]]  # split -> files (relative to DATA)
    not_found: int  # listed files that are in neither split (already gone, or a typo)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sections": list(self.sections),
            "held_out_too": self.held_out_too,
            "counts": {split: len(files) for split, files in self.left_out.items()},
            "files": self.left_out,
            "not_found": self.not_found,
        }

    def describe(self) -> str:
        counts = ", ".join(f"{len(files)} {split}" for split, files in self.left_out.items())
        text = f"--exclude {self.source}: left out {counts} file(s)"
        if self.not_found:
            text += f"; {self.not_found} listed file(s) are not in the dataset"
        if self.held_out_too and self.left_out.get("val"):
            text += (
                "; val images were left out too, so val accuracy is inflated (the audit flags "
                "the images a model gets wrong): compare runs on the same val"
            )
        elif not self.held_out_too:
            text += "; val was left alone (--exclude-held-out to drop its files too)"
        return text


def exclude_files(
    splits: DatasetSplits, exclusions: Exclusions, *, held_out: bool = False
) -> tuple[DatasetSplits, ExclusionRecord]:
    """`splits` without the excluded files (train only unless `held_out`)."""
    root = splits.root
    samples: dict[str, list[tuple[Path, int]]] = {}
    left_out: dict[str, list[str]] = {}
    found: set[str] = set()
    for phase, phase_samples in splits.samples.items():
        applies = phase == "train" or held_out
        kept, dropped = [], []
        for sample in phase_samples:
            relative = sample[0].relative_to(root).as_posix()
            if relative in exclusions.files:
                found.add(relative)
                if applies:
                    dropped.append(relative)
                    continue
            kept.append(sample)
        samples[phase], left_out[phase] = kept, dropped
    emptied = [
        f"{phase}/{name}" for phase, kept in samples.items() for index, name in
        enumerate(splits.class_names) if not any(label == index for _path, label in kept)
    ]  # fmt: skip
    if emptied:
        raise UserError(
            f"--exclude {exclusions.source}: leaves no images in {', '.join(emptied)}; "
            "exclude fewer files"
        )
    record = ExclusionRecord(
        source=str(exclusions.source), sections=exclusions.sections, held_out_too=held_out,
        left_out=left_out, not_found=len(exclusions.files - found),
    )  # fmt: skip
    return replace(splits, samples=samples), record
