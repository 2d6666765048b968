"""Check the advisor against reality: run every candidate of its race on val/ and compare.

    python benchmarks/advisor_validation.py DATA [DATA ...] [--finetune-epochs 5] [--out F]

For each dataset, in one process: `advise` (with a fresh codes cache, so its time is a cold
one), then every candidate the race knows, trained on all of train/ and scored on val/:

- frozen STAGE @SIZE: `tlvision probe` logistic regression (C by 3-fold cross-validation on
  train, as `train --strategy linear-probe --head logreg` does) on the codes of stage2, stage3
  and the top, at the native-based input size and at the weights' own; seconds: the codes pass
  at that size plus the head's fit;
- fine-tune after stage2 / all @SIZE: `training.fit` with --freeze-until stage2 or none, at
  the native-based size, `--finetune-epochs` epochs, every other option at the run's default
  (lr 0.01; BatchNorm mode and backbone rate measured, batchnorm.py), the FINAL epoch's val
  accuracy.

Margin: max(0.02, one standard error of the best val accuracy). The pick is "within" when its val
accuracy is no more than the margin below the best, and "cheapest" when no candidate within the
margin costs fewer image passes (decision.cost_passes: the same count the advisor ranks by).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from tlvision.advisor.decision import Entry, Evidence, SizeEvidence, cost_passes, decide
from tlvision.advisor.measure import advise
from tlvision.advisor.race import frozen_name, race_stages
from tlvision.api import probe
from tlvision.config import NO_FREEZING, TrainConfig
from tlvision.models.backbone import get_backbone
from tlvision.models.stages import stage_label
from tlvision.training.fit import fit

BACKBONE = get_backbone("mobilenet_v2")  # the advisor's default: what the validation measured


def pick_name(advice: dict[str, Any]) -> str:
    if advice["strategy"] == "linear-probe":
        return frozen_name(advice["stage"], advice["input_size"])
    after = f"after {advice['stage']}" if advice["stage"] else "all"
    return f"fine-tune {after} @{advice['input_size']}"


def frozen_rows(data: Path, sizes: list[int], cache: Path) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        table = probe(
            data, stages=[stage_label(stage) for stage in race_stages(BACKBONE)], heads=["logreg"],
            input_size=size, cache_dir=cache,
        ).details  # fmt: skip
        head_seconds = sum(row["seconds"] for row in table["rows"])
        for row in table["rows"]:
            stage = None if row["stage"] == "top" else row["stage"]
            rows.append(
                {
                    "candidate": frozen_name(stage, size),
                    "strategy": "linear-probe",
                    "stage": stage,
                    "input_size": size,
                    "val_acc": row["val_acc"],
                    "seconds": table["seconds"] - head_seconds + row["seconds"],
                    "run": "probe logreg, C by 3-fold CV on train",
                }
            )
    return rows


def finetune_rows(data: Path, size: int, epochs: int, scratch: Path) -> list[dict[str, Any]]:
    rows = []
    for freeze_until in (BACKBONE.partial_freeze_stage, None):
        name = f"fine-tune {'after ' + freeze_until if freeze_until else 'all'} @{size}"
        started = time.perf_counter()
        summary = fit(
            TrainConfig(
                data_dir=data, out_dir=scratch / name.replace(" ", "-"), strategy="finetune",
                freeze_until=freeze_until or NO_FREEZING, input_size=size, epochs=epochs, seed=0,
                cache_dir=scratch / "cache",
            ),
            log=lambda _: None,
        )  # fmt: skip
        rows.append(
            {
                "candidate": name,
                "strategy": "finetune",
                "stage": freeze_until,
                "input_size": size,
                "val_acc": summary["final_val_acc"],
                "best_epoch_val_acc": summary["best_val_acc"],
                "seconds": time.perf_counter() - started,
                "run": f"{epochs} epochs, all of train, final epoch",
            }
        )
    return rows


def judge(advice: dict[str, Any], rows: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    size = SizeEvidence(**advice["evidence"]["size"])
    for row in rows:
        entry = Entry(row["candidate"], row["strategy"], row["stage"], row["input_size"], 0, "", 0)
        row["cost_passes"] = cost_passes(entry, size, epochs)
        row["predicted"] = next(
            (s["predicted_accuracy"] for s in advice["standings"] if s["name"] == row["candidate"]),
            None,
        )
    best = max(row["val_acc"] for row in rows)
    standard_error = math.sqrt(best * (1 - best) / size.val_images)
    margin = max(0.02, standard_error)
    within = [row for row in rows if row["val_acc"] >= best - margin]
    pick = pick_name(advice)
    pick_row = next((row for row in rows if row["candidate"] == pick), None)
    pick_acc = pick_row["val_acc"] if pick_row else math.nan
    cheapest_cost = min(row["cost_passes"] for row in within)
    cheapest = [row["candidate"] for row in within if row["cost_passes"] == cheapest_cost]
    return {
        "best": best, "margin": margin, "standard_error": standard_error, "pick": pick,
        "pick_val_acc": pick_acc, "within_margin": best - pick_acc <= margin,
        "cheapest_within_margin": pick in cheapest,
        "cheapest_candidates": cheapest,
    }  # fmt: skip


def validate(data: Path, epochs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="advisor-validation-") as scratch_name:
        scratch = Path(scratch_name)
        started = time.perf_counter()
        advice = advise(data, cache_dir=scratch / "cache", log=lambda _: None)
        advise_seconds = time.perf_counter() - started
        print(f"\n== {data} ==\n{advice.to_text()}\nadvise took {advise_seconds:.0f}s", flush=True)
        details = advice.to_json()
        native = details["evidence"]["native_input_size"]
        sizes = sorted({row["input_size"] for row in details["evidence"]["race"]})
        rows = frozen_rows(data, sizes, scratch / "cache") + finetune_rows(
            data, native, epochs, scratch
        )
    verdict = judge(details, rows, epochs)
    for row in rows:
        mark = "<- pick" if row["candidate"] == verdict["pick"] else ""
        predicted = f"{row['predicted']:.3f}" if row["predicted"] is not None else "  -  "
        print(
            f"  {row['candidate']:<28} val {row['val_acc']:.4f}  advisor predicted {predicted}"
            f"  {row['seconds']:7.1f}s  {row['cost_passes']:9.0f} passes {mark}",
            flush=True,
        )
    print(
        f"  pick {verdict['pick']} {verdict['pick_val_acc']:.4f}; best {verdict['best']:.4f}; "
        f"margin {verdict['margin']:.4f}; within: {verdict['within_margin']}; cheapest within: "
        f"{verdict['cheapest_within_margin']} ({', '.join(verdict['cheapest_candidates'])})",
        flush=True,
    )
    return {
        "data": data.name, "advice": details, "advise_seconds": advise_seconds,
        "finetune_epochs": epochs, "time_budget": 30.0, "candidates": rows, **verdict,
    }  # fmt: skip


def redecide(result: dict[str, Any]) -> dict[str, Any]:
    """The verdict if this checkout's `decide` had decided on the recorded evidence (decide is
    pure: no measuring again), beside the recorded one."""
    evidence = result["advice"]["evidence"]
    advice = decide(
        Evidence.from_json(evidence), time_budget_minutes=result.get("time_budget", 30.0)
    )
    details = {**advice.to_json(), "evidence": evidence}
    return judge(details, copy.deepcopy(result["candidates"]), result["finetune_epochs"])


def markdown(results: list[dict[str, Any]]) -> str:
    """One table per dataset (every candidate: val accuracy, advisor's prediction, seconds,
    image passes) and a summary line, as in benchmarks/RESULTS.md."""
    lines = []
    for result in results:
        size = result["advice"]["evidence"]["size"]
        lines += [
            f"**{result['data']}** ({size['train_images']} train / {size['val_images']} val, "
            f"{size['classes']} classes, native {size['native_short_side']} px; advise "
            f"{result['advise_seconds']:.0f} s)",
            "",
            "| candidate | val acc | advisor's prediction | seconds | image passes |",
            "|---|---|---|---|---|",
        ]
        for row in result["candidates"]:
            accuracy = f"{row['val_acc']:.4f}"
            if row["val_acc"] == result["best"]:
                accuracy = f"**{accuracy}**"
            if row["candidate"] == result["pick"]:
                accuracy += " (pick)"
            predicted = "-" if row["predicted"] is None else f"{row['predicted']:.3f}"
            lines.append(
                f"| {row['candidate']} | {accuracy} | {predicted} | {row['seconds']:.0f} | "
                f"{row['cost_passes']:.0f} |"
            )
        lines += [
            "",
            f"pick {result['pick']} {result['pick_val_acc']:.4f}, best {result['best']:.4f}, "
            f"margin {result['margin']:.3f}: within {'yes' if result['within_margin'] else 'NO'}"
            f", cheapest within {'yes' if result['cheapest_within_margin'] else 'NO'} "
            f"(cheapest: {', '.join(result['cheapest_candidates'])})",
        ]
        again = redecide(result)
        lines += [
            "",
            f"decided again by this checkout's rules: pick {again['pick']} "
            f"{again['pick_val_acc']:.4f}: within {'yes' if again['within_margin'] else 'NO'}, "
            f"cheapest within {'yes' if again['cheapest_within_margin'] else 'NO'}",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path, nargs="+")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="append each dataset's results as JSON lines")
    parser.add_argument(
        "--markdown", action="store_true", help="DATA are --out files: print their tables"
    )
    arguments = parser.parse_args()
    if arguments.markdown:
        lines = [line for path in arguments.data for line in path.read_text().splitlines()]
        print(markdown([json.loads(line) for line in lines if line.strip()]))
        return
    for data in arguments.data:
        result = validate(data, arguments.finetune_epochs)
        if arguments.out:
            with arguments.out.open("a") as out:
                out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
