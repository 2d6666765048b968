"""Report time and test-time augmentation, measured side by side (issue 11).

For each dataset: a feature-extract run (default recipe, codes cached by an earlier run or by
this one), then
  - the report: `write_report` in this process, and `tlvision report RUN` as a fresh process
    (Python, torch and matplotlib start-up included), both after training, codes cached;
  - val accuracy of the saved model without and with TTA (centre, mirror, 4 corner crops).

    python benchmarks/report_tta.py                       # the reference set
    python benchmarks/report_tta.py --extra far=../datasets/far
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tlvision.config import TrainConfig
from tlvision.inference.evaluation import evaluate_run
from tlvision.report.page import write_report
from tlvision.training.fit import fit

REPOSITORY = Path(__file__).resolve().parents[1]
REFERENCE = REPOSITORY.parent / "shared" / "data" / "hymenoptera_data"


def measure(name: str, data: Path, out: Path) -> dict[str, float]:
    run = out / name
    summary = fit(TrainConfig(data_dir=data, out_dir=run), log=lambda _message: None)
    started = time.perf_counter()
    result = write_report(run, device=torch.device("cpu"))
    in_process = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tlvision.cli", "report", str(run), "--device", "cpu"],
        check=True, capture_output=True,
    )  # fmt: skip
    command = time.perf_counter() - started
    accuracy = {}
    seconds = {}
    for tta in (False, True):
        started = time.perf_counter()
        report = evaluate_run(run, data / "val", device=torch.device("cpu"), tta=tta)
        accuracy[tta] = report.accuracy
        seconds[tta] = time.perf_counter() - started
    return {
        "final_val_acc": summary["final_val_acc"],
        "report_s": in_process,
        "report_command_s": command,
        "source": result.source,  # type: ignore[dict-item]
        "acc": accuracy[False],
        "acc_tta": accuracy[True],
        "eval_s": seconds[False],
        "eval_tta_s": seconds[True],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REFERENCE)
    parser.add_argument("--extra", nargs="*", default=[], metavar="NAME=DIR")
    arguments = parser.parse_args()
    sets = [("hymenoptera", arguments.data)]
    sets += [(text.split("=", 1)[0], Path(text.split("=", 1)[1])) for text in arguments.extra]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = (
        "| set | val images | report (in process) | `tlvision report` | acc | acc TTA | change "
        "| evaluate s | evaluate --tta s |"
    )
    print(header + "\n|" + "---|" * 9)
    with tempfile.TemporaryDirectory() as scratch:
        for name, data in sets:
            row = measure(name, data, Path(scratch))
            images = sum(1 for _ in (data / "val").rglob("*.*"))
            print(
                f"| {name} | {images} | {row['report_s']:.1f}s ({row['source']}) "
                f"| {row['report_command_s']:.1f}s | {row['acc']:.4f} | {row['acc_tta']:.4f} "
                f"| {row['acc_tta'] - row['acc']:+.4f} | {row['eval_s']:.1f} "
                f"| {row['eval_tta_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
