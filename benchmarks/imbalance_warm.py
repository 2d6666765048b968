"""A warm frozen run on imbalanced data, before and after: whole `tlvision train` processes of a
revision's sources and this checkout's, alternated, on one warm codes cache.

    python benchmarks/imbalance_warm.py ../shared/data/hymenoptera_data [--before 841774a]
        [--repeats 5]

The data is made imbalanced as benchmarks/imbalance.py makes it (symlinks in a temporary folder:
all train ants, the first 30 train bees by name). One untimed run fills the codes cache; then
`python -m tlvision train DATA --out RUN --cache-dir CACHE --overwrite` (feature-extract, the
report written, as every `train` does) alternates between the two versions `--repeats` times, so
other load on the machine moves both alike. Printed: each version's wall seconds (median, min,
max), the ratio of the medians, and the balanced accuracy and macro F1 each summary recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from audit_time import sources_of
from imbalance import imbalanced_copy

REPOSITORY = Path(__file__).resolve().parents[1]


def train_seconds(src: Path, data: Path, cache: Path, out: Path) -> float:
    """One whole `tlvision train` process of the sources in `src`: its wall seconds."""
    command = [sys.executable, "-m", "tlvision", "train", str(data), "--out", str(out),
               "--cache-dir", str(cache), "--overwrite"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(
        command, check=True, env={**os.environ, "PYTHONPATH": str(src)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def balanced_fields(out: Path) -> tuple[float, float]:
    summary = json.loads((out / "summary.json").read_text())
    return summary["final_val_balanced_acc"], summary["val_macro_f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the ants/bees reference set")
    parser.add_argument("--before", default="841774a", help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imbalance-warm-") as scratch_name:
        scratch = Path(scratch_name)
        data = imbalanced_copy(args.reference, scratch / "data")
        versions = {f"before ({args.before})": sources_of(args.before, scratch),
                    "after": REPOSITORY / "src"}  # fmt: skip
        cache = scratch / "cache"
        train_seconds(versions["after"], data, cache, scratch / "warm-up")
        seconds: dict[str, list[float]] = {name: [] for name in versions}
        print(f"load average before: {os.getloadavg()}")
        for _ in range(args.repeats):
            for name, src in versions.items():
                seconds[name].append(train_seconds(src, data, cache, scratch / name))
        print(f"load average after: {os.getloadavg()}")
        for name, times in seconds.items():
            accuracy, f1 = balanced_fields(scratch / name)
            spread = f"min {min(times):.2f}, max {max(times):.2f}"
            print(f"{name}: wall median {statistics.median(times):.2f} s ({spread}); "
                  f"balanced accuracy {accuracy:.4f}, macro F1 {f1:.4f}")  # fmt: skip
        before, after = (statistics.median(times) for times in seconds.values())
        print(f"after / before: {after / before:.3f}")


if __name__ == "__main__":
    main()
