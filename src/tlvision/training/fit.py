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
from tlvision.errors import DiskFullError, UserError
from tlvision.models.network import create_model
from tlvision.runs.layout import (
    CODES_RUN_CONFIG,
    CONFIG_FILE,
    SUMMARY_FILE,
    TRAINING_CHECKPOINT,
    is_started_run,
)
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
    except DiskFullError as error:
        if error.path.parent != setup.config.out_dir:  # the codes cache says its own fix
            raise
        raise error.going_on(
            f"continue the run with `tlvision train --resume {setup.config.out_dir}`"
        ) from error
    except KeyboardInterrupt:
        if not (setup.config.out_dir / TRAINING_CHECKPOINT).exists():
            log(
                f"\ninterrupted before the run saved a checkpoint; {setup.config.out_dir} keeps "
                f"its options: start it again with `tlvision train --resume "
                f"{setup.config.out_dir}` (or replace it with --overwrite)"
            )
        raise
    finally:
        distributed.stop(setup.distributed)


# The options a resumed run may change, by API name: how long it trains, and where (neither
# changes what the epochs compute, beyond a device's rounding).
RESUMABLE_CHANGES = {"epochs": "epochs", "device": "device", "workers": "num_workers"}


def resume(
    run_dir: Path, *, log: Log = print, changes: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Continue a run from its last checkpoint, with the same per-epoch results as the run
    would have had (on the same number of processes; with another number the batches differ
    and the schedule is replayed for them).

    `changes`: new values of the options a resumed run may change (RESUMABLE_CHANGES: `epochs`,
    `device`, `workers`; each said in the log); any other is refused. The frozen routes keep
    no per-epoch checkpoint: their codes are cached, so a killed run is simply run again from
    its recorded config (a few seconds). A run stopped before its first checkpoint starts
    again from its config.toml.
    """
    if not (run_dir / TRAINING_CHECKPOINT).exists():
        return _run_again(run_dir, log, changes or {})
    checkpoint = load_training_checkpoint(run_dir)
    recorded = checkpoint.info["config"]
    config = replace(TrainConfig.from_json(recorded), out_dir=run_dir)
    if "batchnorm" not in recorded:  # recorded before the mode was chosen: it trained them
        config = replace(config, batchnorm="train")
    if checkpoint.info.get("processes", 1) > 1:  # several processes ran the whole network
        config = replace(config, views=0)
    config = _with_changes(config, changes or {}, log)
    if checkpoint.epoch > epochs_of(config):
        raise UserError(
            f"--epochs {config.epochs}: {run_dir} has already trained {checkpoint.epoch} epochs; "
            f"give --epochs {checkpoint.epoch + 1} or more to train further"
        )
    if checkpoint.epoch >= epochs_of(config) and (run_dir / SUMMARY_FILE).exists():
        raise UserError(
            f"{run_dir}: this run already finished all {epochs_of(config)} epochs; its model is "
            "model.safetensors (resume with a larger --epochs, or train again with a new --out)"
        )
    if checkpoint.epoch >= epochs_of(config):  # stopped while saving the model (a full disk)
        config = replace(config, epochs=checkpoint.epoch)
        log(f"resuming {run_dir}: its {checkpoint.epoch} epoch(s) are done; saving its model")
    else:
        log(f"resuming {run_dir} after epoch {checkpoint.epoch} of {epochs_of(config)}")
    return fit(config, log=log, checkpoint=checkpoint)


def _with_changes(config: TrainConfig, changes: dict[str, Any], log: Log) -> TrainConfig:
    """The recorded config with the allowed changes, each said in the log; any other change
    (DATA other than the recorded one included) is a UserError."""
    changes = {key: value for key, value in changes.items() if value is not None}
    data = changes.pop("data", None)
    refused = sorted(set(changes) - set(RESUMABLE_CHANGES))
    if data is not None and Path(data).absolute() != config.data_dir.absolute():
        refused.insert(0, "data")
    if refused:
        flags = ", ".join("DATA" if name == "data" else "--" + name.replace("_", "-")
                          for name in refused)  # fmt: skip
        raise UserError(
            f"{config.out_dir}: --resume continues the run with the options it recorded; "
            f"{flags} cannot change on resume (only --epochs, --device and --workers can). To "
            "train with other options, "
            f"start a new run: `tlvision train --config {config.out_dir / CONFIG_FILE} --out "
            "NEW_DIR` and the options to change"
        )
    epochs = changes.pop("epochs", None)
    if epochs is not None and epochs != config.epochs:
        log(
            f"--epochs {epochs}: the run now trains to epoch {epochs} (recorded "
            f"{epochs_of(config)}); its learning-rate schedule is recomputed for {epochs} epochs"
        )
        config = replace(config, epochs=epochs)
    for name, value in changes.items():
        recorded = getattr(config, RESUMABLE_CHANGES[name])
        if value != recorded:
            log(f"--{name} {value}: the run goes on with it (recorded {recorded})")
            config = replace(config, **{RESUMABLE_CHANGES[name]: value})
    return config


def _run_again(run_dir: Path, log: Log, changes: dict[str, Any]) -> dict[str, Any]:
    """A run with no checkpoint: the frozen routes run again on their cached codes; a run
    stopped before its first epoch finished starts again from its config.toml."""
    if (run_dir / SUMMARY_FILE).exists():
        raise UserError(f"{run_dir}: this run already finished; its model is model.safetensors")
    frozen_config = run_dir / CODES_RUN_CONFIG
    if frozen_config.is_file():
        config = TrainConfig.from_json(json.loads(frozen_config.read_text()))
        log(f"resuming {run_dir}: re-running the head on the cached codes")
    elif is_started_run(run_dir):
        from tlvision.runs.config_file import read_config_toml

        config = TrainConfig(**{**read_config_toml(run_dir / CONFIG_FILE), "out_dir": run_dir})
        log(f"resuming {run_dir}: it stopped before its first epoch finished; starting it again")
    else:
        load_training_checkpoint(run_dir)  # raises: no checkpoint to resume from
        raise AssertionError("unreachable")
    config = _with_changes(replace(config, out_dir=run_dir), changes, log)
    return fit(replace(config, overwrite=True), log=log)
