"""Training, top to bottom: set the run up, then hand it to its strategy.

`fit` checks and completes the config, resolves the data, backbone, weights and device, makes
the run directory (tlvision.training.setup), builds the pretrained network with a new head and
runs the strategy's `train` (tlvision.training.strategy): the frozen routes train a head on
cached codes (tlvision.training.codes_route), fine-tuning runs epochs over the images
(tlvision.training.finetune). `resume` continues a stopped run from what its directory holds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from tlvision.compute import distributed
from tlvision.config import TrainConfig
from tlvision.errors import UserError
from tlvision.models.network import create_model
from tlvision.runs.layout import CODES_RUN_CONFIG, SUMMARY_FILE, TRAINING_CHECKPOINT
from tlvision.training.checkpoint import TrainingCheckpoint, load_training_checkpoint
from tlvision.training.run_setup import Log, silent
from tlvision.training.setup import set_up
from tlvision.training.strategy import epochs_of, strategy_of


def fit(
    config: TrainConfig, *, log: Log = print, checkpoint: TrainingCheckpoint | None = None
) -> dict[str, Any]:
    """Train a classifier as `config` says and leave a complete run directory behind.

    With `checkpoint` (see `resume`), carry on from the end of its epoch instead of starting.
    Under torchrun every rank calls this; rank 0 alone logs, writes the run directory and
    returns the summary (the others return an empty dict).
    """
    setup = set_up(config, log, fresh=checkpoint is None)
    try:
        log = log if setup.distributed.is_main else silent
        model = create_model(setup.backbone, len(setup.splits.class_names), setup.weights)
        summary = strategy_of(setup.config).train(setup, model, log, checkpoint)
        distributed.barrier(setup.distributed)  # the others wait for rank 0's files
        return summary
    finally:
        distributed.stop(setup.distributed)


def resume(run_dir: Path, *, log: Log = print) -> dict[str, Any]:
    """Continue a run from its last checkpoint, with the same per-epoch results as the run
    would have had (on the same number of processes; with another number the batches differ
    and the schedule is replayed for them).

    The frozen routes keep no per-epoch checkpoint: their codes are cached, so a killed run is
    simply run again from its recorded config (a few seconds).
    """
    frozen_config = run_dir / CODES_RUN_CONFIG
    if not (run_dir / TRAINING_CHECKPOINT).exists() and frozen_config.is_file():
        config = TrainConfig.from_json(json.loads(frozen_config.read_text()))
        if (run_dir / SUMMARY_FILE).exists():
            raise UserError(f"{run_dir}: this run already finished; its model is model.safetensors")
        log(f"resuming {run_dir}: re-running the head on the cached codes")
        return fit(replace(config, out_dir=run_dir, overwrite=True), log=log)
    checkpoint = load_training_checkpoint(run_dir)
    recorded = checkpoint.info["config"]
    config = replace(TrainConfig.from_json(recorded), out_dir=run_dir)
    if "batchnorm" not in recorded:  # recorded before the mode was chosen: it trained them
        config = replace(config, batchnorm="train")
    if checkpoint.epoch >= epochs_of(config):
        raise UserError(
            f"{run_dir}: this run already finished all {epochs_of(config)} epochs; its model is "
            "model.safetensors (train again with a new --out to go further)"
        )
    log(f"resuming {run_dir} after epoch {checkpoint.epoch} of {epochs_of(config)}")
    return fit(config, log=log, checkpoint=checkpoint)
