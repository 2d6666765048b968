"""The speed of issue 25's commands: label-next over a 10,000-image pool, cold and warm, and
what `predict --reject auto` adds to predict's time.

Links --pool-size images from the given folders (symlinks, 1,000 per folder), trains a
feature-extract run on the demo set with its own empty codes cache, then times as subprocesses:

1. `tlvision label-next RUN POOL -n 20` with the cache empty (cold: every pool code computed),
   then again (warm: the codes read back from the cache);
2. `tlvision predict RUN FOLDER --jsonl OUT` over --predict-size images with `--reject off`
   and `--reject auto`, alternated --repeats times on the same runtime (the run's ONNX export,
   made once before), so other load on the machine moves both alike.

    python benchmarks/unknown_speed.py /work/datasets --pool-size 10000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tlvision.api import demo_data_dir
from tlvision.config import TrainConfig
from tlvision.data.layouts import is_image_file
from tlvision.inference.runtime import ensure_export
from tlvision.training.fit import fit


def link_pool(sources: list[Path], target: Path, count: int) -> None:
    files = sorted(
        path
        for source in sources
        for path in source.rglob("*")
        if is_image_file(path) and path.is_file()
    )
    if len(files) < count:
        raise SystemExit(f"only {len(files)} images under {sources}; lower --pool-size")
    for index, path in enumerate(files[:count]):
        folder = target / f"part{index // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}{path.suffix}").symlink_to(path.resolve())


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", type=Path, nargs="+", help="folders to take pool images from")
    parser.add_argument("--pool-size", type=int, default=10_000)
    parser.add_argument("--predict-size", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    tlvision_command = [sys.executable, "-m", "tlvision.cli"]
    with tempfile.TemporaryDirectory(prefix="unknown-speed-") as scratch:
        root = Path(scratch)
        link_pool(args.sources, root / "pool", args.pool_size)
        run = root / "run"
        fit(
            TrainConfig(
                data_dir=demo_data_dir(), out_dir=run, strategy="feature-extract",
                device="cpu", cache_dir=root / "cache",
            ),
            log=lambda _message: None,
        )  # fmt: skip
        label = [*tlvision_command, "label-next", str(run), str(root / "pool"), "-n", "20"]
        cold = timed([*label, "--device", "cpu"])
        warm = [timed([*label, "--device", "cpu"]) for _ in range(args.repeats)]
        print(f"label-next over {args.pool_size} pool images: cold {cold:.1f}s, warm "
              f"{', '.join(f'{s:.1f}s' for s in warm)} (goals: <= 60 s, <= 5 s)")  # fmt: skip
        ensure_export(run, "onnx")
        folders = sorted((root / "pool").iterdir())[: max(1, args.predict_size // 1000)]
        predict = [*tlvision_command, "predict", str(run), *map(str, folders), "--runtime", "onnx"]
        times: dict[str, list[float]] = {"off": [], "auto": []}
        for _ in range(args.repeats):
            for reject in ("off", "auto"):
                out = root / f"predict-{reject}.jsonl"
                times[reject].append(timed([*predict, "--jsonl", str(out), "--reject", reject]))
        off, auto = min(times["off"]), min(times["auto"])
        print(f"predict over {len(folders) * 1000} images (ONNX Runtime), best of {args.repeats}: "
              f"--reject off {off:.1f}s, --reject auto {auto:.1f}s: {auto / off - 1:+.1%} "
              f"(goal <= +5%); all: {times}")  # fmt: skip
        print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
