"""The speed of issue 25's commands: label-next over a 10,000-image pool, cold and warm, and
what `predict --reject auto` adds to predict's time.

Links --pool-size images from the given folders (symlinks, 1,000 per folder), trains a
feature-extract run on the demo set with its own empty codes cache, then times as subprocesses:

1. `tlvision label-next RUN POOL -n 20` with the pool's codes not in the cache (cold: every
   pool code computed), then again (warm: the codes read back from the cache); with
   `--before REV` the revision's src/ (git archive) and this checkout's take turns, each cold
   pass from the same cache as training left it, `--rounds` times;
2. `tlvision predict RUN FOLDER --jsonl OUT` over --predict-size images with `--reject off`
   and `--reject auto`, alternated --repeats times on the same runtime (the run's ONNX export,
   made once before), so other load on the machine moves both alike.

    python benchmarks/unknown_speed.py ../datasets --pool-size 10000 [--before 9736377]
"""

from __future__ import annotations

import argparse
import os
import shutil
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_time import sources_of  # a sibling benchmark script


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


def timed(command: list[str], src: Path | None = None) -> float:
    environment = {**os.environ, "PYTHONPATH": str(src)} if src else None
    started = time.perf_counter()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
    return time.perf_counter() - started


def label_next_times(
    versions: dict[str, Path | None], label: list[str], cache: Path, rounds: int, repeats: int
) -> None:
    """Cold and warm label-next of each version in turn, each cold pass from the cache as
    training left it (the run's train codes in it, the pool's not)."""
    snapshot = cache.with_name("cache-after-training")
    shutil.copytree(cache, snapshot)
    for round_number in range(rounds):
        for name, src in versions.items():
            shutil.rmtree(cache)
            shutil.copytree(snapshot, cache)
            load = os.getloadavg()[0]
            cold = timed(label, src)
            warm = [timed(label, src) for _ in range(repeats)]
            print(f"round {round_number + 1}, {name}: label-next over the pool: cold {cold:.1f}s, "
                  f"warm {', '.join(f'{s:.1f}s' for s in warm)} (goals: <= 60 s, <= 5 s; "
                  f"load {load:.2f} before)", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", type=Path, nargs="+", help="folders to take pool images from")
    parser.add_argument("--pool-size", type=int, default=10_000)
    parser.add_argument("--predict-size", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", help="git revision to time label-next against")
    parser.add_argument("--rounds", type=int, default=1, help="label-next rounds (with --before)")
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
        label = [*tlvision_command, "label-next", str(run), str(root / "pool"), "-n", "20",
                 "--device", "cpu"]  # fmt: skip
        versions: dict[str, Path | None] = {"now": None}
        if args.before:
            versions = {f"before ({args.before})": sources_of(args.before, root), "now": None}
        print(f"pool: {args.pool_size} images")
        label_next_times(versions, label, root / "cache", args.rounds, args.repeats)
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
