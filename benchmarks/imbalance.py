"""Imbalanced classes: the routes and their remedies side by side on the reference set made
imbalanced (every train ant, the first 30 train bees by name: 4.1x; val unchanged).

    flock /tmp/tlvision-heavy.lock nice .venv/bin/python benchmarks/imbalance.py \\
        ../shared/data/hymenoptera_data --finetune-epochs 3

The imbalanced set is made of symlinks in a temporary folder (never copied, never in the
repository), and removed at the end with the runs and their codes cache. One `tlvision.train`
per row, defaults otherwise (mobilenet_v2, ImageNet weights, CPU); the three figures are what
summary.json records: val accuracy of the final epoch (`final_val_acc`), balanced accuracy
(`final_val_balanced_acc`) and macro F1 (`val_macro_f1`) of the saved weights (the best val
epoch's; a scikit-learn head's only fit), and beside them the saved weights' accuracy
(`best_val_acc`), so that the last three columns describe one model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import tlvision

KEPT_BEES = 30  # the first train bees by name: 124 ants / 30 bees, 4.1x
ROUTES: dict[str, dict[str, Any]] = {
    "feature-extract": {"strategy": "feature-extract"},
    "feature-extract --class-weights auto": {
        "strategy": "feature-extract",
        "class_weights": "auto",
    },
    "linear-probe --head logreg": {"strategy": "linear-probe", "head": "logreg"},
    "finetune": {"strategy": "finetune"},
    "finetune --sampler balanced": {"strategy": "finetune", "sampler": "balanced"},
    "finetune --class-weights auto": {"strategy": "finetune", "class_weights": "auto"},
}


def imbalanced_copy(reference: Path, root: Path) -> Path:
    """DATA under `root` as symlinks: train ants all, train bees the first KEPT_BEES by name,
    val as it is."""
    for phase in ("train", "val"):
        for class_dir in sorted(path for path in (reference / phase).iterdir() if path.is_dir()):
            images = sorted(path for path in class_dir.iterdir() if path.is_file())
            if phase == "train" and class_dir.name == "bees":
                images = images[:KEPT_BEES]
            target = root / phase / class_dir.name
            target.mkdir(parents=True)
            for image in images:
                (target / image.name).symlink_to(image.resolve())
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="the reference set (train/ and val/)")
    parser.add_argument("--finetune-epochs", type=int, default=3, help="epochs of each finetune")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlvision-imbalance-") as temporary:
        work = Path(temporary)
        data = imbalanced_copy(args.reference.resolve(), work / "data")
        counts = {p.name: len(list(p.iterdir())) for p in sorted((data / "train").iterdir())}
        print(f"train {counts}, val unchanged", flush=True)
        for label, options in ROUTES.items():
            if options["strategy"] == "finetune":
                options = {**options, "epochs": args.finetune_epochs}
            started = time.perf_counter()
            run = tlvision.train(
                data, out=work / "runs" / label.replace(" ", "_"), cache_dir=work / "cache",
                device="cpu", no_report=True, **options,
            )  # fmt: skip
            summary = run.summary
            row = (
                label,
                summary["final_val_acc"],
                summary["final_val_balanced_acc"],
                summary["val_macro_f1"],
                summary["best_val_acc"],
            )
            rows.append(row)
            print(
                f"  {label}: acc {row[1]:.4f}, balanced {row[2]:.4f}, macro F1 {row[3]:.4f}, "
                f"saved acc {row[4]:.4f} (epoch {summary['best_epoch']}) "
                f"({time.perf_counter() - started:.0f}s, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    print(
        "\n| route | val accuracy (final epoch) | val balanced accuracy | val macro F1 | "
        "val accuracy (saved weights) |\n|---|---|---|---|---|"
    )
    for label, accuracy, balanced, macro_f1, saved in rows:
        shown = f"{label}, {args.finetune_epochs} epochs" if "finetune" in label else label
        print(f"| {shown} | {accuracy:.4f} | {balanced:.4f} | {macro_f1:.4f} | {saved:.4f} |")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
