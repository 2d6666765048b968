"""The audit from start to end (`run_audit`), its audit.json content and the fixes CSV."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tlvision.auditor.collect import AuditCodes, CodesSource, collect_codes, file_digests
from tlvision.auditor.duplicates import DuplicateGroup, calibrate, duplicate_groups, unit_rows
from tlvision.auditor.labels import (
    DEFAULT_FOLDS,
    LabelIssues,
    choose_C,
    confident_learning,
    confused_pairs,
    out_of_fold_probabilities,
    require_folds,
)
from tlvision.auditor.outliers import stranger_scores
from tlvision.auditor.thumbnails import calibrate_pixels, pixel_signal, thumbnails_of
from tlvision.codes.cache import default_cache_dir
from tlvision.compute.cores import usable_cores
from tlvision.errors import UserError
from tlvision.jsonio import write_json_atomic

Log = Callable[[str], None]
OUTLIER_MIN_SCORE = 3.0  # robust z-score from the nearest class centre
OUTLIERS_ALWAYS_LISTED = 10
OUTLIERS_MAX_LISTED = 500
AUDIT_FILE = "audit.json"
AUDIT_PAGE = "audit.html"
FIXES_FILE = "audit_fixes.csv"
SECTIONS = ("label_issues", "duplicates", "outliers")
CHOICES = "audit-choices"  # under the codes cache: the C chosen for each set of train codes


@dataclass(frozen=True)
class AuditOptions:
    folds: int = DEFAULT_FOLDS
    seed: int = 0
    val_split: float | None = None
    C: float | None = None  # default: chosen by cross-validation on the train codes


@dataclass(frozen=True)
class Scores:
    """Everything the audit computed, per image, before it is listed."""

    codes: AuditCodes
    probabilities: np.ndarray
    issues: LabelIssues
    groups: list[DuplicateGroup]
    strangers: np.ndarray
    C: float
    calibration: dict[str, Any]


def score_dataset(
    codes: AuditCodes, options: AuditOptions, log: Log, remember_in: Path | None = None
) -> Scores:
    """Label issues, duplicate groups and stranger scores of every image (`remember_in`: where
    the chosen C is kept for the next audit of the same images, labels.choose_C)."""
    require_folds(codes.labels, codes.class_names, options.folds, codes.root)
    train_rows = codes.in_split("train")
    jobs = usable_cores()  # independent fits side by side; each one as it would be alone
    C = options.C if options.C is not None else choose_C(
        codes.codes, codes.labels, train_rows, options.seed, jobs=jobs, remember_in=remember_in
    )  # fmt: skip
    log(f"audit: out-of-fold probabilities, {options.folds} folds, logistic regression C={C:g}")
    probabilities = out_of_fold_probabilities(
        codes.codes, codes.labels, C=C, folds=options.folds, seed=options.seed, jobs=jobs
    )
    unit = unit_rows(codes.codes)
    digests = file_digests(codes.files)
    calibration = calibrate(unit, digests, codes.calibration, codes.calibration_codes)
    pixels = calibrate_pixels(
        codes.thumbnails if codes.thumbnails is not None else thumbnails_of(codes.files),
        digests, codes.calibration, codes.calibration_thumbnails,
    )  # fmt: skip
    log(
        f"audit: near duplicates at codes cosine similarity >= {calibration.threshold:.3f} or "
        f"thumbnail similarity >= {pixels.threshold:.4f}"
    )
    return Scores(
        codes=codes,
        probabilities=probabilities,
        issues=confident_learning(probabilities, codes.labels),
        groups=_duplicate_groups(codes, unit, digests, calibration.threshold, pixels.threshold),
        strangers=stranger_scores(unit, codes.labels, len(codes.class_names)),
        C=C,
        calibration={**calibration.to_json(), "pixels": pixels.to_json()},
    )


def _duplicate_groups(
    codes: AuditCodes, unit: np.ndarray, digests: list[str], threshold: float, pixels: float
) -> list[DuplicateGroup]:
    """Same bytes, or near by the codes or by the thumbnails (either signal)."""
    views = codes.thumbnails if codes.thumbnails is not None else thumbnails_of(codes.files)
    signal = pixel_signal(views, pixels)
    return duplicate_groups(unit, digests, threshold, codes.splits, extra=[signal])


def run_audit(
    data_dir: Path, source: CodesSource, options: AuditOptions, *, log: Log
) -> dict[str, Any]:
    """The audit of DATA as audit.json holds it (nothing in DATA is written)."""
    started = time.perf_counter()
    codes = collect_codes(
        Path(data_dir), source, val_split=options.val_split, seed=options.seed, log=log
    )
    read = time.perf_counter()
    remember_in = (source.cache_dir or default_cache_dir()) / CHOICES if source.use_cache else None
    scores = score_dataset(codes, options, log, remember_in)
    audit = audit_json(scores, options)
    audit["seconds"] = {"codes": read - started, "total": time.perf_counter() - started}
    return audit


def audit_json(scores: Scores, options: AuditOptions) -> dict[str, Any]:
    codes = scores.codes
    splits = sorted(set(codes.splits), key=lambda split: ("train", "val", "test").index(split))
    return {
        "data_dir": str(codes.root),
        "backbone": codes.backbone,
        "weights": codes.weights,
        "input_size": codes.input_size,
        "classes": list(codes.class_names),
        "images": {split: int(codes.in_split(split).sum()) for split in splits},
        "folds": options.folds,
        "C": scores.C,
        "label_issues": _label_issues(scores),
        "duplicates": _duplicates(scores),
        "outliers": _outliers(scores),
        "outlier_min_score": OUTLIER_MIN_SCORE,
        "overlapping_classes": confused_pairs(
            scores.probabilities, codes.labels, codes.class_names
        ),
        "unreadable": [
            {"kind": "unreadable", "path": str(path), "message": f"{reason}; fix or remove it"}
            for path, reason in codes.unreadable
        ],
        "class_examples": _class_examples(scores),
        "calibration": scores.calibration,
        "out_of_fold_accuracy": float((scores.probabilities.argmax(axis=1) == codes.labels).mean()),
    }


def _label_issues(scores: Scores) -> list[dict[str, Any]]:
    codes, issues = scores.codes, scores.issues
    names = codes.class_names
    return [
        {
            "file": codes.relative(row),
            "split": codes.splits[row],
            "given": names[codes.labels[row]],
            "suggested": names[issues.suggested[row]],
            "score": float(issues.score[row]),
            "given_probability": float(scores.probabilities[row, codes.labels[row]]),
            "suggested_probability": float(scores.probabilities[row, issues.suggested[row]]),
        }
        for row in issues.ranking.tolist()
        if issues.flagged[row]
    ]


def _class_examples(scores: Scores, count: int = 3) -> dict[str, list[str]]:
    """Per class: the train images the out-of-fold model is surest of, to show beside issues."""
    codes = scores.codes
    rows = np.arange(len(codes.labels))
    confidence = scores.probabilities[rows, codes.labels]
    train = codes.in_split("train")
    examples = {}
    for k, name in enumerate(codes.class_names):
        members = rows[(codes.labels == k) & train]
        best = members[np.argsort(-confidence[members], kind="stable")[:count]]
        examples[name] = [codes.relative(row) for row in best.tolist()]
    return examples


def _duplicates(scores: Scores) -> list[dict[str, Any]]:
    codes = scores.codes
    return [
        {
            "files": [codes.relative(row) for row in group.rows],
            "splits": [codes.splits[row] for row in group.rows],
            "classes": [codes.class_names[codes.labels[row]] for row in group.rows],
            "similarity": group.similarity,
            "exact": group.exact,
            "found_by": list(group.found_by),
            "strength": group.strength,
            "across_splits": group.spans_splits(codes.splits),
        }
        for group in scores.groups
    ]


def _outliers(scores: Scores) -> list[dict[str, Any]]:
    codes = scores.codes
    order = np.argsort(-scores.strangers, kind="stable")
    listed = [
        row
        for rank, row in enumerate(order.tolist()[:OUTLIERS_MAX_LISTED])
        if rank < OUTLIERS_ALWAYS_LISTED or scores.strangers[row] >= OUTLIER_MIN_SCORE
    ]
    return [
        {
            "file": codes.relative(row),
            "split": codes.splits[row],
            "given": codes.class_names[codes.labels[row]],
            "score": float(scores.strangers[row]),
        }
        for row in listed
    ]


def fixes_csv(audit: dict[str, Any]) -> str:
    """One row per proposed fix: file, split, issue, action, detail. Nothing is applied."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "split", "issue", "action", "detail"])
    for issue in audit["label_issues"]:
        writer.writerow([
            issue["file"], issue["split"], "label", f"move to {issue['suggested']}",
            f"given {issue['given']}, suggested {issue['suggested']} (score {issue['score']:.3f})",
        ])  # fmt: skip
    for group in audit["duplicates"]:
        kept = group["files"][0]
        for file, split in zip(group["files"][1:], group["splits"][1:], strict=True):
            why = "leaks into " + split if split != group["splits"][0] else "duplicate"
            writer.writerow([
                file, split, "duplicate", "remove",
                f"{why} of {kept} (similarity {group['similarity']:.3f})",
            ])  # fmt: skip
    for outlier in audit["outliers"]:
        if outlier["score"] >= OUTLIER_MIN_SCORE:
            writer.writerow([
                outlier["file"], outlier["split"], "outlier", "review",
                f"unlike every class (score {outlier['score']:.1f})",
            ])  # fmt: skip
    return buffer.getvalue()


def summary_text(audit: dict[str, Any], out_dir: Path | None) -> str:
    """What `tlvision audit` prints."""
    images = ", ".join(f"{split} {count}" for split, count in audit["images"].items())
    leaking = sum(1 for group in audit["duplicates"] if group["across_splits"])
    lines = [
        f"Audited {audit['data_dir']} ({images}) with {audit['backbone']} codes; out-of-fold "
        f"accuracy {audit['out_of_fold_accuracy']:.3f} ({audit['folds']} folds, C={audit['C']:g})",
        f"  label issues: {len(audit['label_issues'])}",
        f"  duplicate groups: {len(audit['duplicates'])} ({leaking} across splits: val/test "
        "accuracy is inflated by them)",
        f"  strangers (score >= {OUTLIER_MIN_SCORE:g}): "
        f"{sum(1 for o in audit['outliers'] if o['score'] >= OUTLIER_MIN_SCORE)}",
    ]
    for issue in audit["label_issues"][:10]:
        lines.append(
            f"    {issue['file']}: given {issue['given']}, looks like {issue['suggested']} "
            f"({issue['score']:.2f})"
        )
    for group in audit["duplicates"][:5]:
        more = f" and {len(group['files']) - 3} more" if len(group["files"]) > 3 else ""
        lines.append(f"    {' = '.join(group['files'][:3])}{more} ({group['similarity']:.3f})")
    if audit["overlapping_classes"]:
        pair = audit["overlapping_classes"][0]
        lines.append(f"  most confused classes: {' / '.join(pair['classes'])} ({pair['rate']:.1%})")
    for item in audit["unreadable"]:
        lines.append(f"  unreadable: {item['path']}: {item['message']}")
    if out_dir is not None:
        lines.append(
            f"Wrote {out_dir / AUDIT_FILE}, {out_dir / AUDIT_PAGE} and {out_dir / FIXES_FILE}; "
            "nothing in the dataset was changed. To train without the label issues: "
            f"tlvision train DATA --exclude {out_dir / AUDIT_FILE}"
        )
    return "\n".join(lines)


def write_outputs(audit: dict[str, Any], out_dir: Path) -> None:
    """audit.json, audit.html and the fixes CSV in `out_dir`, which must lie outside DATA."""
    from tlvision.auditor.page import audit_page

    data_dir = Path(audit["data_dir"]).resolve()
    target = Path(out_dir).resolve()
    if target == data_dir or data_dir in target.parents:
        raise UserError(
            f"--out {out_dir}: inside the dataset {audit['data_dir']}; the audit writes nothing "
            "there: pass a folder outside it"
        )
    target.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target / AUDIT_FILE, audit)
    (target / AUDIT_PAGE).write_text(audit_page(audit), encoding="utf-8")
    (target / FIXES_FILE).write_text(fixes_csv(audit), encoding="utf-8")


def source_of_run(run_dir: Path, source: CodesSource) -> tuple[CodesSource, dict[str, Any]]:
    """The codes source of a trained run (its backbone, weights and input size) and its config."""
    from tlvision.runs.reader import read_model_json

    metadata = read_model_json(Path(run_dir))
    config = metadata.get("config", {})
    return replace(
        source, backbone=str(metadata["backbone"]), weights=config.get("weights"),
        input_size=int(metadata["preprocessing"]["crop_size"]),
    ), config  # fmt: skip
