"""Plant errors in copies of datasets and see what `tlvision audit` finds, beside two yardsticks.

    python benchmarks/audit_planted.py DATA [DATA ...] --strangers STRANGER_DATA \
        [--rates 0.05 0.10] [--input-size N] [--recovery DATA] [--out FILE]

For each dataset and flip rate, a planted copy is written to a scratch folder (the originals
are only read): RATE of the train images moved to another class (seeded), near copies of 20 val
images put in train (resized to half, recompressed at JPEG quality 40, 10% cropped, mirrored,
in turn), and 3 images of another kind (from STRANGER_DATA) put into train classes. Then, on the
same codes:

- label issues, first N (N = flips planted), precision and recall, each ranking over every
  train and val image: the audit's (confident learning on the out-of-fold probabilities);
  cleanlab's `find_label_issues` on the same out-of-fold probabilities (ranked by
  self-confidence, its default); "sort by training loss" (logistic regression at the same C fit
  on every image, each scored by that model); the seconds of each (the out-of-fold fits are
  counted in both the audit's and cleanlab's);
- duplicates: the first N groups (N = 20): recall = planted pairs in one of them, precision =
  those groups holding a planted pair; beside it, the other groups among the first N that pair
  two images of the set itself that are the same picture at their native resolution (mean
  absolute grey-level difference <= IDENTICAL_GREY_LEVELS of 255, as they are or mirrored: the
  set's own duplicates, found rightly), the precision counting them as right, and the recall
  in the first N + that many groups;
- strangers: how many of the 3 are in the first 10 outliers.

`--recovery DATA` also measures what `train --exclude` buys at 10% flips: final-epoch val
accuracy of feature-extract (10 epochs) on the clean copy, the flipped copy, and the flipped copy
with the audit's train label issues excluded; recovered = (excluded - flipped) / (clean -
flipped).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from tlvision.auditor.collect import CodesSource, collect_codes
from tlvision.auditor.result import AuditOptions, audit_json, score_dataset, write_outputs
from tlvision.data.layouts import find_splits

LEAKS = 20
STRANGERS = 3
IDENTICAL_GREY_LEVELS = 2.0
TRANSFORMS = ("resize", "recompress", "crop", "mirror")


def copy_dataset(source: Path, target: Path) -> None:
    for split in ("train", "val"):
        shutil.copytree(source / split, target / split)


def plant_flips(root: Path, rate: float, seed: int) -> set[str]:
    """Move `rate` of the train images to another class folder; their new relative paths."""
    splits = find_splits(root)
    rng = random.Random(seed)
    samples = list(splits.samples["train"])
    flipped = rng.sample(samples, round(rate * len(samples)))
    moved = set()
    for path, label in flipped:
        other = rng.choice([n for i, n in enumerate(splits.class_names) if i != label])
        target = root / "train" / other / f"flip_{path.name}"
        shutil.move(path, target)
        moved.add(target.relative_to(root).as_posix())
    return moved


def _transformed(image: Image.Image, kind: str) -> Image.Image:
    width, height = image.size
    if kind == "resize":
        return image.resize((max(8, width // 2), max(8, height // 2)))
    if kind == "crop":
        return image.crop((width // 10, height // 10, width, height))
    if kind == "mirror":
        return ImageOps.mirror(image)
    return image


def plant_leaks(root: Path, seed: int) -> list[tuple[str, str]]:
    """Near copies of LEAKS val images in train, each under its own class: (val, copy) pairs."""
    val = find_splits(root).samples["val"]
    pairs = []
    for number, (path, _label) in enumerate(random.Random(seed + 1).sample(val, LEAKS)):
        kind = TRANSFORMS[number % len(TRANSFORMS)]
        copy = root / "train" / path.parent.name / f"leak_{kind}_{path.stem}.jpg"
        image = Image.open(path).convert("RGB")
        _transformed(image, kind).save(copy, quality=40 if kind == "recompress" else 90)
        pairs.append((path.relative_to(root).as_posix(), copy.relative_to(root).as_posix()))
    return pairs


def plant_strangers(root: Path, source: Path, seed: int) -> set[str]:
    pool = sorted(p for p in (source / "train").rglob("*") if p.is_file() and p.name[0] != ".")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    rng = random.Random(seed + 2)
    planted = set()
    for number, path in enumerate(rng.sample(pool, STRANGERS)):
        target = root / "train" / rng.choice(classes) / f"stranger_{number}{path.suffix}"
        shutil.copy(path, target)
        planted.add(target.relative_to(root).as_posix())
    return planted


def first_n(ranked: list[str], truth: set[str], n: int) -> dict[str, float]:
    hits = len(set(ranked[:n]) & truth)
    return {"precision": hits / max(1, min(n, len(ranked))), "recall": hits / max(1, len(truth))}


def own_margin_ranking(probabilities: np.ndarray, labels: np.ndarray) -> list[int]:
    """The audit's first ranking, kept to measure: the confident joint's off-diagonal (or the
    likeliest class not the given one) first, each group by normalised margin."""
    rows = np.arange(len(labels))
    thresholds = np.asarray(
        [probabilities[labels == k, k].mean() for k in range(probabilities.shape[1])]
    )
    above = probabilities >= thresholds[None, :] - 1e-12
    confident = np.where(above, probabilities, -1.0).argmax(axis=1)
    flagged = (above.any(axis=1) & (confident != labels)) | (probabilities.argmax(axis=1) != labels)
    others = probabilities.copy()
    others[rows, labels] = -1.0
    margin = others.max(axis=1) - probabilities[rows, labels]
    return np.lexsort((-margin, ~flagged)).tolist()


def label_rankings(scores: Any, files: list[str]) -> dict[str, tuple[list[str], float]]:
    """Each method's ranking of the images, most suspect first, and its seconds."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tlvision.auditor.labels import confident_learning, out_of_fold_probabilities

    codes, labels = scores.codes.codes, scores.codes.labels
    started = time.perf_counter()
    probabilities = out_of_fold_probabilities(codes, labels, C=scores.C, folds=5, seed=0)
    out_of_fold = time.perf_counter() - started
    started = time.perf_counter()
    ours = confident_learning(probabilities, labels).ranking.tolist()
    ours_seconds = out_of_fold + time.perf_counter() - started
    started = time.perf_counter()
    own = own_margin_ranking(probabilities, labels)
    own_seconds = out_of_fold + time.perf_counter() - started
    started = time.perf_counter()
    theirs = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    theirs_seconds = out_of_fold + time.perf_counter() - started
    started = time.perf_counter()
    head = make_pipeline(StandardScaler(), LogisticRegression(C=scores.C, max_iter=2000))
    fitted = head.fit(np.asarray(codes, dtype=np.float64), labels)
    seen = fitted.predict_proba(np.asarray(codes, dtype=np.float64))
    loss = -np.log(np.clip(seen[np.arange(len(labels)), labels], 1e-12, None))
    by_loss = np.argsort(-loss, kind="stable").tolist()
    loss_seconds = time.perf_counter() - started
    return {
        "audit": ([files[i] for i in ours], ours_seconds),
        "cleanlab": ([files[i] for i in theirs], theirs_seconds),
        "own margin": ([files[i] for i in own], own_seconds),
        "training loss": ([files[i] for i in by_loss], loss_seconds),
    }


def grey_difference(first: Path, second: Path) -> float:
    """Mean absolute grey-level difference (of 255) at the first image's native size, the second
    as it is or mirrored (the lower)."""
    with Image.open(first) as one, Image.open(second) as other:
        left = np.asarray(one.convert("L"), dtype=np.float32)
        right = other.convert("L").resize(one.size, Image.Resampling.BILINEAR)
    return min(
        float(np.abs(left - np.asarray(view, dtype=np.float32)).mean())
        for view in (right, ImageOps.mirror(right))
    )


def same_picture(root: Path, files: set[str]) -> bool:
    """Two of the group's files are the same picture at native resolution."""
    return any(
        grey_difference(root / first, root / second) <= IDENTICAL_GREY_LEVELS
        for first, second in itertools.combinations(sorted(files), 2)
    )


def duplicates_found(
    audit: dict[str, Any], pairs: list[tuple[str, str]], root: Path
) -> dict[str, float]:
    groups = [set(group["files"]) for group in audit["duplicates"][: len(pairs)]]
    found = sum(1 for pair in pairs if any(set(pair) <= group for group in groups))
    planted = [any(set(pair) <= group for pair in pairs) for group in groups]
    own = sum(
        1 for group, is_planted in zip(groups, planted, strict=True)
        if not is_planted and same_picture(root, group)
    )  # fmt: skip
    # with the set's own same-picture groups counted as found rightly, the first N + own groups
    wider = [set(group["files"]) for group in audit["duplicates"][: len(pairs) + own]]
    found_wider = sum(1 for pair in pairs if any(set(pair) <= group for group in wider))
    return {
        "precision": sum(planted) / max(1, len(groups)), "recall": found / len(pairs),
        "own_identical": own, "precision_with_own": (sum(planted) + own) / max(1, len(groups)),
        "recall_in_first_n_plus_own": found_wider / len(pairs),
    }  # fmt: skip


def evaluate(data: Path, strangers: Path, rate: float, input_size: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="audit-planted-") as scratch:
        root = Path(scratch) / data.name
        copy_dataset(data, root)
        flips = plant_flips(root, rate, seed=0)
        leaks = plant_leaks(root, seed=0)
        planted_strangers = plant_strangers(root, strangers, seed=0)
        started = time.perf_counter()
        codes = collect_codes(root, CodesSource(input_size=input_size), log=lambda _m: None)
        codes_seconds = time.perf_counter() - started
        started = time.perf_counter()
        scores = score_dataset(codes, AuditOptions(), log=lambda _m: None)
        audit = audit_json(scores, AuditOptions())
        files = [codes.relative(row) for row in range(len(codes.files))]
        rankings = label_rankings(scores, files)
        outliers = [item["file"] for item in audit["outliers"][:10]]
        return {
            "data": data.name, "rate": rate, "images": len(files), "flips": len(flips),
            "label_issues": {
                name: {**first_n(ranked, flips, len(flips)), "seconds": seconds}
                for name, (ranked, seconds) in rankings.items()
            },
            "duplicates": duplicates_found(audit, leaks, root),
            "threshold": audit["calibration"]["threshold"],
            "strangers_in_first_10": len(set(outliers) & planted_strangers),
            "seconds": {"codes": codes_seconds, "audit": time.perf_counter() - started},
        }  # fmt: skip


def recovery(data: Path, input_size: int | None) -> dict[str, Any]:
    """Final val accuracy: clean, 10% flipped, flipped with the audit's train issues excluded."""
    import tlvision

    options: dict[str, Any] = {"epochs": 10, "input_size": input_size, "device": "cpu"}
    with tempfile.TemporaryDirectory(prefix="audit-recovery-") as scratch:
        clean, flipped = Path(scratch) / "clean", Path(scratch) / "flipped"
        copy_dataset(data, clean)
        copy_dataset(data, flipped)
        plant_flips(flipped, 0.10, seed=0)
        accuracy: dict[str, float] = {}
        runs: list[tuple[str, Path, dict[str, Any]]] = [
            ("clean", clean, {}),
            ("flipped", flipped, {}),
            ("flipped, --exclude audit.json", flipped, {"exclude": Path(scratch) / "a.json"}),
        ]
        for name, root, extra in runs:
            if extra:
                report = tlvision.audit(flipped, input_size=input_size)
                write_outputs(report.to_json(), Path(scratch))
                Path(scratch, "audit.json").rename(Path(scratch) / "a.json")
            run = tlvision.train(root, out=Path(scratch) / name.split(",")[0] / "run",
                                 overwrite=True, **options, **extra)  # fmt: skip
            accuracy[name] = float(run.final_val_acc or 0.0)
    lost = accuracy["clean"] - accuracy["flipped"]
    gained = accuracy["flipped, --exclude audit.json"] - accuracy["flipped"]
    return {"data": data.name, "val_acc": accuracy, "recovered": gained / lost if lost else None}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | flips | audit P/R | cleanlab P/R | own margin P/R | train-loss P/R "
        "| dup P/R (thr) | own identical, P with them, R in N + own | strangers in top 10 "
        "| codes s | audit s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            f"{row['label_issues'][name]['precision']:.2f}/"
            f"{row['label_issues'][name]['recall']:.2f}"
            for name in ("audit", "cleanlab", "own margin", "training loss")
        ]
        dup = row["duplicates"]
        lines.append(
            f"| {row['data']} | {row['rate']:.0%} ({row['flips']}) | {' | '.join(cells)} | "
            f"{dup['precision']:.2f}/{dup['recall']:.2f} ({row['threshold']:.3f}) | "
            f"{dup['own_identical']}, {dup['precision_with_own']:.2f}, "
            f"{dup['recall_in_first_n_plus_own']:.2f} | "
            f"{row['strangers_in_first_10']}/{STRANGERS} | {row['seconds']['codes']:.1f} | "
            f"{row['seconds']['audit']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--strangers", type=Path, required=True)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.05, 0.10])
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--recovery", type=Path, nargs="*", default=[])
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    rows = []
    for data in arguments.data:
        for rate in arguments.rates:
            rows.append(evaluate(data, arguments.strangers, rate, arguments.input_size))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    recovered = [recovery(data, arguments.input_size) for data in arguments.recovery]
    for row in recovered:
        print(json.dumps(row))
    if arguments.out:
        arguments.out.write_text(json.dumps({"rows": rows, "recovery": recovered}, indent=1))


if __name__ == "__main__":
    main()
