"""Streaming `tlvision predict --jsonl` at scale: throughput against the bare model, and memory.

Makes a folder of N images by linking the reference set's files over and over (symlinks in
folders of 1,000), trains a small run on the demo set for the model, then in one run:
  1. the bare model's forward rate on preloaded inputs (batches of 32, no decoding at all), on
     both runtimes: torch eager (channels-last float tensors) and ONNX Runtime (uint8 pixels,
     what `predict` runs on a CPU),
  2. `tlvision predict RUN FOLDER --jsonl OUT` as a subprocess for each of --sizes (numbers
     of images), sampling the memory of the process tree every 0.25 s,
  3. the bare forward rates again after each (other load on the machine moves both; each
     predict run is compared with the mean of the bare rates just before and after it),
  4. the decoding cost (decode, resize, crop) per image on one thread, and from it the best
     rate that decoding and the forward can reach together when they share the cores.
Prints images/s side by side with their ratios and the peak memory at each size.

    python benchmarks/predict_scale.py --data ../shared/data/hymenoptera_data --sizes 2000 20000

Linux only (memory from /proc). The predict rate counts from its first written line to its
exit: the model load and the process start are not the streaming's cost.
"""

from __future__ import annotations

# isort: off
# First, as the CLI does: tlvision sets OMP_WAIT_POLICY=PASSIVE before torch loads. Without it
# the bare forward here ran 1.6x slower than the same forward inside `tlvision predict`.
import tlvision  # noqa: F401
# isort: on

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tlvision.api import demo_data_dir
from tlvision.compute.cores import usable_cores
from tlvision.config import TrainConfig
from tlvision.data.images import load_rgb_image
from tlvision.data.layouts import is_image_file
from tlvision.data.loading import default_num_workers
from tlvision.data.transforms import build_transforms, prepare_pixels
from tlvision.inference.runtime import ensure_export, open_classifier
from tlvision.runs.reader import load_run_model
from tlvision.training.fit import fit

BATCH = 32


def link_images(source: Path, target: Path, count: int) -> None:
    """`count` symlinks to the source's images, cycling through them, 1,000 per folder."""
    files = sorted(path for path in source.rglob("*") if is_image_file(path) and path.is_file())
    for index in range(count):
        folder = target / f"part{index // 1000:03d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True)
        original = files[index % len(files)]
        (folder / f"{index:06d}{original.suffix}").symlink_to(original.resolve())


def torch_forward_rate(run: Path, images: list[Path], seconds: float) -> float:
    """Images/s of the bare torch model on preloaded, preprocessed tensors (channels-last)."""
    loaded = load_run_model(run)
    transform = build_transforms(loaded.preprocessing)["val"]
    batch = torch.stack([transform(load_rgb_image(path)) for path in images[:BATCH]])
    batch = batch.contiguous(memory_format=torch.channels_last)
    model = loaded.model.to(memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        model(batch)  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            torch.softmax(model(batch).float(), dim=1).topk(1, dim=1)
            done += BATCH
    return done / (time.perf_counter() - started)


def onnx_forward_rate(run: Path, images: list[Path], seconds: float) -> float:
    """Images/s of the model in ONNX Runtime (predict's CPU runtime) on preloaded pixels."""
    classifier = open_classifier(run, "onnx")
    pixels = np.stack(
        [prepare_pixels(load_rgb_image(path), classifier.preprocessing) for path in images]
    )
    classifier.logits(pixels)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.logits(pixels)
        done += len(pixels)
    return done / (time.perf_counter() - started)


def decode_seconds(run: Path, images: list[Path]) -> float:
    """Seconds per image to decode, resize and crop on one thread (best of 3 passes)."""
    preprocessing = load_run_model(run).preprocessing
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for path in images:
            prepare_pixels(load_rgb_image(path), preprocessing)
        best = min(best, (time.perf_counter() - started) / len(images))
    return best


def tree_memory(pid: int) -> tuple[int, int, int]:
    """Bytes: (RSS of `pid`, RSS summed over it and its descendants, PSS summed likewise).

    Summed RSS counts the pages the loader workers share with the main process (torch's
    libraries, forked memory) once per process; PSS splits each shared page among its users,
    so the PSS sum is the tree's real footprint.
    """
    rss = pss = 0
    main_rss = None
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                    main_rss = rss if main_rss is None else main_rss
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue  # ended between listing and reading
        pending += [int(child) for child in children]
    return main_rss or 0, rss, pss


def streamed_predict(run: Path, folder: Path, count: int, decoders: int) -> dict[str, float]:
    out = folder.parent / f"predictions-{count}.jsonl"
    command = [
        sys.executable, "-m", "tlvision", "predict", str(run), str(folder),
        "--jsonl", str(out), "--batch-size", str(BATCH), "--workers", str(decoders),
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = [0, 0, 0]
    first_line = None
    while process.poll() is None:
        peaks = [max(peak, now) for peak, now in zip(peaks, tree_memory(process.pid), strict=True)]
        if first_line is None and out.exists() and out.stat().st_size > 0:
            first_line = time.perf_counter()
        time.sleep(0.25)
    ended = time.perf_counter()
    if process.returncode != 0:
        raise SystemExit(f"predict failed: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
    lines = sum(1 for _ in out.open())
    assert lines == count, f"{lines} lines for {count} images"
    first_line = first_line or started
    return {
        "images": count,
        "wall_seconds": ended - started,
        "rate": (count - BATCH) / max(1e-9, ended - first_line),
        "main_rss_gb": peaks[0] / 1e9,
        "tree_rss_gb": peaks[1] / 1e9,
        "tree_pss_gb": peaks[2] / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/hymenoptera_data"))
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[2_000, 20_000], help="images per predict run"
    )
    parser.add_argument("--decoders", type=int, default=default_num_workers())
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--forward-seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="predict-scale-") as temporary:
        root = Path(temporary)
        run = root / "run"
        fit(
            TrainConfig(
                data_dir=demo_data_dir(), out_dir=run, strategy="feature-extract", epochs=1,
                input_size=arguments.input_size, no_cache=True,
            ),
            log=lambda _: None,
        )  # fmt: skip
        ensure_export(run, "onnx")  # as the first streamed predict would; not timed
        sample = sorted(p for p in arguments.data.rglob("*.jpg"))[:BATCH]
        decoding = decode_seconds(run, sorted(arguments.data.rglob("*.jpg"))[:200])

        def bare_rates() -> tuple[float, float]:
            seconds = arguments.forward_seconds
            return torch_forward_rate(run, sample, seconds), onnx_forward_rate(run, sample, seconds)

        # the bare rates just before and just after each streamed run: load elsewhere drifts
        forward = [bare_rates()]
        results = []
        for count in arguments.sizes:
            folder = root / f"images-{count}"
            link_images(arguments.data, folder, count)
            results.append(streamed_predict(run, folder, count, arguments.decoders))
            forward.append(bare_rates())
    report(arguments, forward, results, decoding)


def report(
    arguments: argparse.Namespace,
    forward: list[tuple[float, float]],
    results: list[dict[str, float]],
    decoding: float,
) -> None:
    cores = len(os.sched_getaffinity(0))
    print(
        f"cores {cores}, torch threads {torch.get_num_threads()}, ONNX Runtime threads "
        f"{usable_cores()}, decoding threads {arguments.decoders}, input {arguments.input_size}px, "
        f"batch {BATCH}"
    )
    torch_rates = ", ".join(f"{rates[0]:.1f}" for rates in forward)
    onnx_rates = ", ".join(f"{rates[1]:.1f}" for rates in forward)
    print(f"bare torch eager on preloaded tensors (img/s): {torch_rates}")
    print(f"bare ONNX Runtime on preloaded pixels (img/s): {onnx_rates}")
    onnx_mean = sum(rate for _, rate in forward) / len(forward)
    # Sharing `cores` cores, each image costs the forward's CPU time plus decoding's.
    bound = 1 / (cores / onnx_mean + decoding) * cores
    print(
        f"decoding {1000 * decoding:.2f} ms per image on one thread; with the forward's "
        f"{1000 * cores / onnx_mean:.2f} ms of CPU per image, {cores} cores allow at most "
        f"{bound:.0f} img/s ({bound / onnx_mean:.2f}x ONNX Runtime's bare rate)"
    )
    for index, result in enumerate(results):
        torch_bare = (forward[index][0] + forward[index + 1][0]) / 2
        onnx_bare = (forward[index][1] + forward[index + 1][1]) / 2
        print(
            f"predict --jsonl {result['images']:>6} images: {result['rate']:.1f} img/s; "
            f"{result['rate'] / torch_bare:.2f}x bare torch eager ({torch_bare:.1f}), "
            f"{result['rate'] / onnx_bare:.2f}x bare ONNX Runtime ({onnx_bare:.1f}); "
            f"wall {result['wall_seconds']:.0f}s; peak memory: main process RSS "
            f"{result['main_rss_gb']:.2f} GB, process tree PSS {result['tree_pss_gb']:.2f} GB"
        )


if __name__ == "__main__":
    main()
