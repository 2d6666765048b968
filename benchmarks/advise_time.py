"""`tlvision advise` cold, whole processes, on sets of several native sizes (issue 26).

    python benchmarks/advise_time.py DATA [DATA ...] [--budget PASSES]

Each set: `tlvision advise DATA --cache-dir EMPTY --json` in a fresh process with an empty
codes cache (cold: nothing extracted before), timed from outside. Prints the seconds, the
race's image passes (spent of the budget), which fine-tuning trials ran or why not, and the
pick. `--budget` sets advisor.budget.RACE_BUDGET_PASSES in the advise process (a huge one
races as before the budget), to show what the budget changes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 90.0


def advise(data: Path, budget: float | None) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as cache:
        arguments = ["advise", str(data), "--cache-dir", cache, "--json"]
        code = (
            "import sys, tlvision.advisor.budget as budget; from tlvision.cli import main; "
            + (f"budget.RACE_BUDGET_PASSES = {budget!r}; " if budget is not None else "")
            + f"sys.exit(main({arguments!r}))"
        )
        command = [sys.executable, "-c", code]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds, json.loads(done.stdout)


def describe(data: Path, seconds: float, advice: dict) -> str:
    evidence = advice["details"]["evidence"] if "details" in advice else advice["evidence"]
    size = evidence["size"]
    trials = [
        f"{e['name']} ({e['seconds']:.0f} s)"
        for e in evidence["race"]
        if e["strategy"] == "finetune"
    ]
    left_out = evidence.get("trial_skipped") or evidence.get("full_trial_skipped") or "-"
    budget = evidence.get("race_budget") or {}
    spent = f"{budget.get('spent', 0):,.0f} / {budget.get('budget', 0):,.0f}" if budget else "-"
    pick = advice.get("strategy"), advice.get("stage"), advice.get("input_size")
    within = "yes" if seconds <= GOAL_SECONDS else "NO"
    return (
        f"| {data.name} | {size['train_images']} + {size['val_images']} | "
        f"{size['native_short_side']} px | {seconds:.1f} | {within} | {spent} | "
        f"{', '.join(trials) or 'none'} | {left_out} | {pick[0]} {pick[1] or 'top'} @{pick[2]} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path, nargs="+")
    parser.add_argument("--budget", type=float, help="race budget in image passes (override)")
    arguments = parser.parse_args()
    print(f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; goal {GOAL_SECONDS:.0f} s")
    print("| set | train + val | native | advise s (cold, whole process) | <= 90 s | "
          "race passes spent / budget | trials run | left out | pick |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for data in arguments.data:
        seconds, advice = advise(data.resolve(), arguments.budget)
        print(describe(data, seconds, advice), flush=True)
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
