"""Check the advisor against reality: run every candidate strategy and compare with its pick.

    python benchmarks/advisor_validation.py DATA [DATA ...] [--finetune-epochs 10]

For each dataset: `advise`, then every candidate (feature-extract on the top codes; linear-probe
with logistic regression on the top and on earlier stages; fine-tuning the whole network), each
at the input size the advisor recommends, and a table of val accuracy, seconds and the margin
the pick must fall within: 0.02, or one standard error of the best accuracy where that is larger.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from tlvision.advisor import advise
from tlvision.config import TrainConfig
from tlvision.training import fit

CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("feature-extract", {"strategy": "feature-extract"}),
    ("linear-probe top logreg", {"strategy": "linear-probe", "head": "logreg"}),
    (
        "linear-probe stage4 logreg",
        {"strategy": "linear-probe", "stage": "stage4", "head": "logreg"},
    ),
    (
        "linear-probe stage3 logreg",
        {"strategy": "linear-probe", "stage": "stage3", "head": "logreg"},
    ),
    (
        "linear-probe stage2 logreg",
        {"strategy": "linear-probe", "stage": "stage2", "head": "logreg"},
    ),
    ("finetune", {"strategy": "finetune"}),
]


def label_of(advice_json: dict[str, Any]) -> str:
    if advice_json["strategy"] == "linear-probe":
        stage = advice_json["stage"] or "top"
        return f"linear-probe {stage} {advice_json['head']}"
    return str(advice_json["strategy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path, nargs="+")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    arguments = parser.parse_args()
    results = []
    for data in arguments.data:
        started = time.perf_counter()
        advice = advise(data, log=lambda _: None)
        advise_seconds = time.perf_counter() - started
        print(f"\n== {data} ==\n{advice.to_text()}\nadvise took {advise_seconds:.0f}s", flush=True)
        rows = []
        with tempfile.TemporaryDirectory() as scratch:
            for name, options in CANDIDATES:
                epochs = arguments.finetune_epochs if options["strategy"] == "finetune" else 25
                config = TrainConfig(
                    data_dir=data, out_dir=Path(scratch) / name.replace(" ", "-"),
                    input_size=advice.input_size, epochs=epochs, **options,
                )  # fmt: skip
                run_started = time.perf_counter()
                summary = fit(config, log=lambda _: None)
                seconds = time.perf_counter() - run_started
                rows.append(
                    {"candidate": name, "val_acc": summary["best_val_acc"], "seconds": seconds}
                )
                print(
                    f"  {name:<28} val acc {summary['best_val_acc']:.4f}  {seconds:7.1f}s",
                    flush=True,
                )
        best = max(row["val_acc"] for row in rows)
        val_images = advice.evidence["size"]["val_images"]
        standard_error = math.sqrt(best * (1 - best) / val_images)
        margin = max(0.02, standard_error)
        pick = label_of(advice.to_json())
        pick_row = next((row for row in rows if row["candidate"] == pick), None)
        pick_acc = pick_row["val_acc"] if pick_row else float("nan")
        verdict = "within margin" if best - pick_acc <= margin else "OUTSIDE margin"
        print(
            f"  pick: {pick} {pick_acc:.4f}; best {best:.4f}; margin {margin:.4f} "
            f"(standard error {standard_error:.4f} on {val_images} val images): {verdict}",
            flush=True,
        )
        results.append(
            {"data": str(data), "advice": advice.to_json(), "advise_seconds": advise_seconds,
             "candidates": rows, "best": best, "margin": margin, "pick": pick,
             "pick_val_acc": pick_acc, "verdict": verdict}
        )  # fmt: skip
    if arguments.out:
        arguments.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
