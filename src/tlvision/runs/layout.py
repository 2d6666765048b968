"""The run directory: what its files are called, and how one is made without losing anything.

RUN/ holds model.safetensors + model.json (the trained model and how to rebuild it),
metrics.jsonl (one line per epoch), summary.json (the headline numbers, written last),
config.toml (the options it was started with), and while it trains checkpoint.safetensors
(fine-tuning) or run_config.json (the frozen routes); beside them what else was asked for:
val_split.json, rejection.json (how unknown inputs are rejected) and ood_codes.safetensors (the
train codes its code-space score compares with), advice.json, lr_find.json
and lr_find.png, report.html, export/, tensorboard/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tlvision.errors import UserError

MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"
TRAINING_CHECKPOINT = "checkpoint.safetensors"
CODES_RUN_CONFIG = "run_config.json"  # the frozen routes' config, written first: for --resume
VAL_SPLIT_FILE = "val_split.json"
REJECTION_FILE = "rejection.json"  # the out-of-distribution score and its val threshold
OOD_CODES_FILE = "ood_codes.safetensors"  # the train codes of the code-space score (float16)
OOD_CODES_TENSOR = "codes"  # the one tensor in it: (M, C) L2-normalised codes
# rejection.json's "score": the code-space one (computed by the network, tlvision.models.ood)
# or one from the logits alone (tlvision.inference.ood)
CODE_DISTANCE = "code-distance"
LOGIT_SCORES = ("energy", "max-softmax")
OOD_SCORES = (CODE_DISTANCE, *LOGIT_SCORES)
ADVICE_FILE = "advice.json"
REPORT_FILE = "report.html"
EXPORT_DIR = "export"
TENSORBOARD_DIR = "tensorboard"
# A folder holding any of these is a tlvision run, which --overwrite may replace; so is one
# whose config.toml starts with CONFIG_HEADER (a run stopped before its first epoch).
RUN_MARKERS = (SUMMARY_FILE, METRICS_FILE, TRAINING_CHECKPOINT, CODES_RUN_CONFIG)
CONFIG_HEADER = "# tlvision train: the options of this run (tlvision train --config reads it)\n"


def is_started_run(out_dir: Path) -> bool:
    """A run directory that tlvision made, even one stopped before anything but its
    config.toml was written."""
    if any((out_dir / marker).exists() for marker in RUN_MARKERS):
        return True
    try:
        with (out_dir / CONFIG_FILE).open(encoding="utf-8") as handle:
            return handle.readline() == CONFIG_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def refuse_to_overwrite(out_dir: Path, *, overwrite: bool) -> None:
    """Never overwrite a run without --overwrite, and never delete anything but a run."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"{out_dir}: already exists and is not empty; choose a new --out or pass "
                "--overwrite"
            )
        if not is_started_run(out_dir):
            raise UserError(
                f"{out_dir}: --overwrite replaces only tlvision run directories, and this one "
                "has no metrics.jsonl, summary.json, checkpoint or tlvision config.toml; choose "
                "a new --out"
            )


def prepare_run_dir(out_dir: Path, *, overwrite: bool) -> None:
    """An empty run directory, replacing an earlier run only when `overwrite` allows it."""
    refuse_to_overwrite(out_dir, overwrite=overwrite)
    if out_dir.exists() and any(out_dir.iterdir()):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
