"""What the code-space score costs predict: the same model with and without it, side by side.

Trains a feature-extract run on DATA (its train codes stored, up to 5,000), copies it and
calibrates the copy with energy (a logits-only network, as runs were before), exports both to
ONNX, then times, alternated --repeats times so other load moves both alike:

1. the ONNX file alone on a batch of 32 images (the kNN over the stored train codes is the
   only difference between the two files);
2. `tlvision predict RUN FOLDER --jsonl OUT --runtime onnx` over --predict-size val/train
   images: the energy copy with `--reject auto` against the code-distance run with
   `--reject auto`, and the code-distance run with `--reject off` (the score is computed, not
   used).

    python benchmarks/reject_overhead.py ../datasets/fashion --predict-size 1000

`--codes N` times the cost of N stored codes (5,000: the cap, the most a run stores) on a set
with fewer train images: the stored codes are repeated, with a little noise, up to N rows
before the export (what the score then says is meaningless; its cost is the cap's).
"""

from __future__ import annotations

# isort: off
import tlvision  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLI does)
# isort: on

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tlvision.config import TrainConfig
from tlvision.data.images import load_rgb_image
from tlvision.data.layouts import is_image_file
from tlvision.data.transforms import prepare_pixels
from tlvision.export.formats.onnx import open_file
from tlvision.inference.rejection import calibrate_run
from tlvision.inference.runtime import ensure_export
from tlvision.runs.reader import load_run_model, read_rejection_file
from tlvision.training.fit import fit


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def model_seconds(path: Path, pixels: np.ndarray, repeats: int) -> float:
    run = open_file(path)
    run(pixels)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        run(pixels)
    return (time.perf_counter() - started) / repeats


def pad_codes(run: Path, rows: int) -> None:
    """RUN/ood_codes.safetensors repeated, with noise, to `rows` rows (rejection.json says so)."""
    from safetensors.numpy import load_file

    from tlvision.jsonio import write_json_atomic
    from tlvision.runs.writer import save_ood_codes

    codes = load_file(str(run / "ood_codes.safetensors"))["codes"].astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.01, (rows, codes.shape[1]))
    save_ood_codes(run, codes[np.arange(rows) % len(codes)] + noise.astype(np.float32))
    document = read_rejection_file(run) or {}
    write_json_atomic(run / "rejection.json", {**document, "train_codes": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a dataset folder (train/, val/)")
    parser.add_argument("--predict-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--codes", type=int, help="pad the stored codes to this many rows")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "tlvision.cli"]
    with tempfile.TemporaryDirectory(prefix="reject-overhead-") as scratch:
        root = Path(scratch)
        codes_run, energy_run = root / "codes", root / "energy"
        config = TrainConfig(
            data_dir=args.data, out_dir=codes_run, strategy="feature-extract", device="cpu"
        )
        fit(config, log=lambda _message: None)
        shutil.copytree(codes_run, energy_run)
        calibrate_run(energy_run, score="energy")
        if args.codes:
            pad_codes(codes_run, args.codes)
        document = read_rejection_file(codes_run) or {}
        files = {name: ensure_export(root / name, "onnx") for name in ("codes", "energy")}
        images = sorted(p for p in args.data.rglob("*") if is_image_file(p))[: args.predict_size]
        folder = root / "images"
        folder.mkdir()
        for index, path in enumerate(images):
            (folder / f"{index:05d}{path.suffix}").symlink_to(path.resolve())
        preprocessing = load_run_model(codes_run).preprocessing
        batch = np.stack([prepare_pixels(load_rgb_image(p), preprocessing) for p in images[:32]])
        alone: dict[str, list[float]] = {"energy": [], "codes": []}
        for _ in range(args.repeats):
            for name in alone:
                alone[name].append(model_seconds(files[name], batch, 5))
        print(f"{document.get('train_codes')} train codes stored; ONNX file alone, batch 32, "
              f"best of {args.repeats}: energy {min(alone['energy']) * 1000:.1f} ms, "
              f"code-distance {min(alone['codes']) * 1000:.1f} ms: "
              f"{min(alone['codes']) / min(alone['energy']) - 1:+.1%}", flush=True)  # fmt: skip
        variants = {
            "energy run, --reject auto": (energy_run, "auto"),
            "code-distance run, --reject off": (codes_run, "off"),
            "code-distance run, --reject auto": (codes_run, "auto"),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, (run, reject) in variants.items():
                out = root / "out.jsonl"
                command = [*cli, "predict", str(run), str(folder), "--runtime", "onnx"]
                times[name].append(timed([*command, "--jsonl", str(out), "--reject", reject]))
        base = min(times["energy run, --reject auto"])
        print(f"predict over {len(images)} images (ONNX Runtime), best of {args.repeats}:")
        for name, seconds in times.items():
            print(f"  {name}: {min(seconds):.1f}s ({min(seconds) / base - 1:+.1%}); all "
                  f"{', '.join(f'{s:.1f}' for s in seconds)}")  # fmt: skip
        print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
