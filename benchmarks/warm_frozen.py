"""The classic fixed-feature-extractor loop against `tlvision train --strategy feature-extract`,
whole processes side by side, the report written (issue 26).

    python benchmarks/warm_frozen.py [--data ../shared/data/hymenoptera_data] [--repeats 3]
        [--classic-seconds S]  # reuse a classic-loop figure measured by --classic-only
    python benchmarks/warm_frozen.py --classic-only  # the classic loop alone (~8 minutes)

Every figure is a whole process started from the shell and timed from outside: the classic
loop (benchmarks/recipe_loop.py, 25 epochs, batch 4, the frozen body run on every image every
epoch), then `tlvision train` with a cold CNN-codes cache (a fresh directory), then warm runs
with the report written (as every `train` does) and one with `--no-report`. The report's own
time is read from the line `train` prints after the result, so the table shows where the warm
seconds go.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "hymenoptera_data"
CLASSIC = (
    "import sys, time; sys.path.insert(0, {bench!r}); from pathlib import Path; "
    "from recipe_loop import run_recipe; "
    "r = run_recipe(Path({data!r}), fixed_features=True, epochs=25); "
    "print('best val acc', r['best_val_acc'])"
)
REPORT_TIME = re.compile(r"^report: .* \((\d+(?:\.\d+)?)s\)$", re.MULTILINE)
ACCURACY = re.compile(r"final val acc (\d\.\d+) \(best (\d\.\d+)")


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def classic_loop(data: Path) -> float:
    code = CLASSIC.format(bench=str(Path(__file__).parent), data=str(data))
    seconds, output = timed([sys.executable, "-c", code])
    print(f"classic loop, whole process: {seconds:.1f}s ({output.strip()})", flush=True)
    return seconds


def tlvision_train(data: Path, out: Path, cache: Path, *extra: str) -> tuple[float, str]:
    command = [sys.executable, "-m", "tlvision", "train", str(data), "--strategy",
               "feature-extract", "--cache-dir", str(cache), "--out", str(out), *extra]  # fmt: skip
    return timed(command)


def describe(label: str, seconds: float, output: str, classic: float | None) -> None:
    report = REPORT_TIME.search(output)
    accuracy = ACCURACY.search(output)
    ratio = f"{classic / seconds:6.1f}x" if classic else "      -"
    print(
        f"{label:<34} {seconds:7.2f}  {ratio}  "
        f"{report.group(1) + 's' if report else '-':>7}  "
        f"{accuracy.group(1) + ' / ' + accuracy.group(2) if accuracy else '-'}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3, help="warm runs with the report")
    parser.add_argument("--classic-seconds", type=float, help="reuse this classic-loop figure")
    parser.add_argument("--classic-only", action="store_true")
    arguments = parser.parse_args()
    data = arguments.data.resolve()
    print(f"data {os.path.relpath(data, REPOSITORY)}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    classic = arguments.classic_seconds
    if classic is None:
        classic = classic_loop(data)
    else:
        print(f"classic loop, whole process: {classic:.1f}s (reused, --classic-seconds)")
    if arguments.classic_only:
        return
    print(f"{'tlvision train --strategy feature-extract':<34} {'seconds':>7}  "
          f"{'vs loop':>7}  {'report':>7}  final / best val acc")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        root, cache = Path(scratch), Path(scratch) / "cache"
        seconds, output = tlvision_train(data, root / "cold", cache)
        describe("cold cache, report written", seconds, output, classic)
        for repeat in range(arguments.repeats):
            out = root / f"warm{repeat}"
            seconds, output = tlvision_train(data, out, cache)
            if not (out / "report.html").is_file():
                sys.exit(f"no report in {out}")
            describe(f"warm cache, report written ({repeat + 1})", seconds, output, classic)
        seconds, output = tlvision_train(data, root / "quiet", cache, "--no-report")
        describe("warm cache, --no-report", seconds, output, classic)
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
