"""Which runtime serves a trained model faster on this CPU, and what int8 costs.

    python benchmarks/export_runtime.py [--data ../shared/data/hymenoptera_data] [--run RUN]

Trains a feature-extract mobilenet_v2 run on the data (frozen route on cached codes, seconds)
unless --run is given, exports it to ONNX fp32 and int8 (each checked for parity), then measures
side by side in one process, 2 threads each, batch 32 of the val images as uint8 pixels:
torch eager (tlvision.inference.runtime.TorchClassifier), ONNX Runtime fp32 and int8 (one
session per file, as the runtime opens it, with the usable cores' threads). The runtimes take
turns batch by batch for `--rounds` rounds, so a load change on a shared machine hits them all;
the median per runtime is reported. Val accuracy is over the whole val split.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from tlvision.config import TrainConfig
from tlvision.export.exporter import ExportRequest, export_model
from tlvision.export.formats.onnx import open_file
from tlvision.export.parity import load_pixels
from tlvision.inference.runtime import TorchClassifier
from tlvision.runs.reader import load_run_model, run_splits
from tlvision.training.fit import fit

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"
THREADS = 2
BATCH = 32


def train_run(data: Path, out: Path) -> Path:
    config = TrainConfig(data_dir=data, out_dir=out, strategy="feature-extract", epochs=5)
    fit(config, log=lambda _message: None)
    return out


def interleaved_rates(
    runners: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray, rounds: int
) -> dict[str, float]:
    """Median images/s per runner; the runners take turns, one batch each per round."""
    for run in runners.values():
        run(batch)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            run(batch)
            seconds[name].append(time.perf_counter() - started)
    return {name: len(batch) / statistics.median(values) for name, values in seconds.items()}


Runner = Callable[[np.ndarray], np.ndarray]


def accuracy(run: Runner, pixels: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.concatenate(
        [run(pixels[start : start + BATCH]).argmax(1) for start in range(0, len(pixels), BATCH)]
    )
    return float(np.mean(predicted == labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--run", type=Path, help="a trained run (default: train one now)")
    parser.add_argument("--rounds", type=int, default=15)
    arguments = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {THREADS} threads "
        f"each, batch {BATCH}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        run = arguments.run or train_run(arguments.data, Path(scratch) / "run")
        loaded = load_run_model(run)
        fp32_path, int8_path = Path(scratch) / "model.onnx", Path(scratch) / "model-int8.onnx"
        fp32 = export_model(ExportRequest(run, "onnx", out=fp32_path, data=arguments.data))
        int8 = export_model(
            ExportRequest(run, "onnx", out=int8_path, quantize="int8", data=arguments.data)
        )
        print(f"parity fp32: {fp32['parity']['max_abs_logit_difference']:.2g} max abs logit")
        val = load_pixels(loaded, run_splits(loaded.metadata, arguments.data).samples["val"])
        runners = {
            "torch eager": TorchClassifier(loaded).logits,
            "onnxruntime fp32": open_file(fp32_path),
            "onnxruntime int8": open_file(int8_path),
        }
        rates = interleaved_rates(runners, val.pixels[:BATCH], arguments.rounds)
        sizes = {
            "torch eager": (run / "model.safetensors").stat().st_size,
            "onnxruntime fp32": fp32_path.stat().st_size,
            "onnxruntime int8": int8_path.stat().st_size,
        }
        print(f"{'runtime':<18} {'images/s':>9} {'vs torch':>9} {'MB':>6} {'val acc':>8}")
        for name, run_batch in runners.items():
            print(
                f"{name:<18} {rates[name]:>9.1f} {rates[name] / rates['torch eager']:>8.2f}x "
                f"{sizes[name] / 1e6:>6.1f} {accuracy(run_batch, val.pixels, val.labels):>8.4f}"
            )
        print(
            f"onnxruntime / torch: {rates['onnxruntime fp32'] / rates['torch eager']:.2f}x; "
            f"int8 / fp32: {rates['onnxruntime int8'] / rates['onnxruntime fp32']:.2f}x speed, "
            f"{sizes['onnxruntime fp32'] / sizes['onnxruntime int8']:.1f}x smaller; "
            f"int8 top-1 agreement with torch on the parity images "
            f"{int8['parity']['top1_agreement']:.3f}; val images {len(val.pixels)}"
        )


if __name__ == "__main__":
    main()
