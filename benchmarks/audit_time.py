"""`tlvision audit` time, cold and warm, before and after: a revision's sources beside this
checkout's, run the same way in one go.

    python benchmarks/audit_time.py DATA [--before 407a713] [--repeats 1] [--out FILE]

For each version (`--before REV`: its src/ taken with `git archive` into a scratch folder;
"after": this checkout's src/), `python -m tlvision audit DATA` as a subprocess with an empty
codes cache of its own (cold: every code computed), then again on that cache (warm). Printed
per pass: wall seconds of the process, the codes seconds and the total the audit reports
(audit.json "seconds"), the process's peak RSS and the load average (1 minute) before it; then
whether both versions found the same things (label issues, duplicates, strangers, C). The
versions alternate pass by pass so other load moves both alike. Under the timing lock:

    flock /tmp/tlvision-heavy.lock python benchmarks/audit_time.py ../datasets/fashion
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
GOALS = {"cold": 60.0, "warm": 10.0}  # issue 24, 3,000 images on the 2-core machine


def sources_of(revision: str, scratch: Path) -> Path:
    """The revision's src/ folder, unpacked under `scratch` (the repository is only read)."""
    archive = scratch / "before.tar"
    with archive.open("wb") as handle:
        subprocess.run(
            ["git", "-C", str(REPOSITORY), "archive", revision, "src"], check=True, stdout=handle
        )
    with tarfile.open(archive) as tar:
        tar.extractall(scratch / "before", filter="data")
    return scratch / "before" / "src"


def audit_pass(src: Path, data: Path, cache: Path, out: Path) -> dict[str, Any]:
    """One `tlvision audit` process: its wall seconds, peak RSS and audit.json."""
    environment = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-m", "tlvision", "audit", str(data), "--cache-dir", str(cache),
               "--out", str(out), "--json"]  # fmt: skip
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed (PYTHONPATH={src})")
    audit = json.loads((out / "audit.json").read_text())
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "load": load, "audit": audit}


def findings(audit: dict[str, Any]) -> dict[str, Any]:
    """What the audit found, without its seconds or the order of near-equal scores."""
    return {
        "C": audit["C"],
        "label_issues": sorted((i["file"], i["suggested"]) for i in audit["label_issues"]),
        "first_20_issues": sorted(i["file"] for i in audit["label_issues"][:20]),
        "duplicates": [group["files"] for group in audit["duplicates"]],
        "outliers": [item["file"] for item in audit["outliers"]],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| version | pass | wall s | codes s | audit total s | peak RSS MB | load (1 min) | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = row["audit"]["seconds"]
        goal = GOALS[row["pass"]]
        lines.append(
            f"| {row['version']} | {row['pass']} | {row['wall']:.1f} | {seconds['codes']:.1f} | "
            f"{seconds['total']:.1f} | {row['rss_mb']:.0f} | {row['load']:.2f} | "
            f"<= {goal:g} s: {'met' if row['wall'] <= goal else 'NOT met'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--before", default="407a713", help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=1, help="cold + warm rounds per version")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    arguments = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="audit-time-") as folder:
        scratch = Path(folder)
        versions = {f"before ({arguments.before})": sources_of(arguments.before, scratch),
                    "after (this checkout)": REPOSITORY / "src"}  # fmt: skip
        for round_number in range(arguments.repeats):
            for kind in ("cold", "warm"):
                for number, (version, src) in enumerate(versions.items()):
                    cache = scratch / f"cache-{number}-{round_number}"
                    out = scratch / f"out-{number}-{round_number}-{kind}"
                    row = audit_pass(src, arguments.data, cache, out)
                    rows.append({"version": version, "pass": kind, **row})
                    print(f"{version} {kind}: {row['wall']:.1f} s (load {row['load']:.2f})",
                          flush=True)  # fmt: skip
    print(table(rows))
    found = [findings(row["audit"]) for row in rows]
    for key in found[0]:
        same = all(each[key] == found[0][key] for each in found)
        print(f"{key}: {'the same' if same else 'DIFFERENT'} in every pass")
    if arguments.out:
        arguments.out.write_text(json.dumps(
            [{k: v for k, v in row.items() if k != "audit"} | {"seconds": row["audit"]["seconds"]}
             for row in rows], indent=1,
        ))  # fmt: skip


if __name__ == "__main__":
    main()
