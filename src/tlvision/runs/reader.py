"""The one reader of a run directory: its JSON files, its model, its data.

Every command and the API read a run through here, so a missing or damaged file is always the
same one line: the file, what is wrong, and what to do. Run directories of earlier releases
read the same way: their files have the same names and keys, and a key added since (the body's
state, `body`) is inferred where it is missing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlvision.data.exclusions import exclude_files, read_exclusions
from tlvision.data.layouts import DatasetSplits, find_splits
from tlvision.data.preprocessing import Preprocessing
from tlvision.errors import UserError
from tlvision.runs.layout import (
    CODE_DISTANCE,
    METRICS_FILE,
    MODEL_JSON,
    MODEL_WEIGHTS,
    OOD_CODES_FILE,
    OOD_CODES_TENSOR,
    REJECTION_FILE,
    SUMMARY_FILE,
)

if TYPE_CHECKING:
    from torch import nn

    from tlvision.models.backbone import BackboneSpec
    from tlvision.models.ood import CodeDistance
    from tlvision.models.pixels import PixelClassifier

# Runs written before model.json said whether the pretrained body trained: by their strategy.
EARLIER_RELEASES_BODY = {
    "feature-extract": "frozen",
    "linear-probe": "frozen",
    "finetune": "trained",
}


def read_json_file(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object from `path`, or a UserError naming it and `fix`."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"{path}: missing; {fix}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error}); {fix}") from error
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a {type(data).__name__}, not a JSON object; {fix}")
    return data


def read_model_json(run_dir: Path) -> dict[str, Any]:
    """model.json: classes, backbone, weights, preprocessing, strategy, body and config."""
    if not (run_dir / MODEL_WEIGHTS).is_file() or not (run_dir / MODEL_JSON).is_file():
        raise UserError(
            f"{run_dir}: not a tlvision run directory (needs {MODEL_WEIGHTS} and {MODEL_JSON}); "
            "pass the --out directory of a finished `tlvision train`"
        )
    metadata = read_json_file(run_dir / MODEL_JSON, "retrain, or restore the file")
    metadata.setdefault("body", EARLIER_RELEASES_BODY.get(str(metadata.get("strategy")), "trained"))
    return metadata


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, one dict per epoch ([] when there is none yet)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UserError(
                    f"{path}: line {number} is not valid JSON ({error}); retrain, or restore "
                    "the file"
                ) from error
    return records


def read_rejection_file(run_dir: Path) -> dict[str, Any] | None:
    """rejection.json (the out-of-distribution score and its threshold calibrated on val), or
    None for a run trained before tlvision wrote it."""
    path = run_dir / REJECTION_FILE
    if not path.exists():
        return None
    document = read_json_file(path, f"recalibrate it with `tlvision calibrate {run_dir}`")
    if not isinstance(document.get("score"), str) or not isinstance(
        document.get("threshold"), int | float
    ):
        raise UserError(
            f"{path}: needs a 'score' name and a numeric 'threshold'; recalibrate it with "
            f"`tlvision calibrate {run_dir}`"
        )
    return document


def read_code_distance(run_dir: Path, document: dict[str, Any] | None) -> CodeDistance | None:
    """The code-space score rejection.json asks for (score "code-distance"): its train codes
    (RUN/ood_codes.safetensors) and k; None for a logits score (energy, max-softmax)."""
    from tlvision.models.ood import CodeDistance

    if document is None or document.get("score") != CODE_DISTANCE:
        return None
    fix = f"recalibrate with `tlvision calibrate {run_dir}`"
    path = run_dir / str(document.get("codes_file", OOD_CODES_FILE))
    k = document.get("k", 1)
    try:
        from safetensors.torch import load_file

        codes = load_file(str(path))[OOD_CODES_TENSOR]
        return CodeDistance(codes, k=int(k))
    except FileNotFoundError as error:
        raise UserError(f"{path}: missing (rejection.json's train codes); {fix}") from error
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise UserError(
            f"{path}: cannot be read as the train codes with k={k} ({str(error).splitlines()[0]})"
            f"; {fix}"
        ) from error
    except Exception as error:  # safetensors' own errors: a damaged or foreign file
        raise UserError(f"{path}: damaged ({type(error).__name__}); {fix}") from error


@dataclass(frozen=True)
class RunRecord:
    """What a finished run directory says about its run."""

    run_dir: Path
    model_info: dict[str, Any]  # model.json
    summary: dict[str, Any]  # summary.json
    metrics: list[dict[str, Any]]  # metrics.jsonl

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.model_info.get("config", {}))

    @property
    def classes(self) -> list[str]:
        return list(self.model_info["classes"])


def read_run(run_dir: Path) -> RunRecord:
    """A finished run's model.json, summary.json and metrics.jsonl."""
    model_info = read_model_json(run_dir)
    summary = read_json_file(
        run_dir / SUMMARY_FILE, "the run did not finish: resume it with `tlvision train --resume`"
    )
    return RunRecord(run_dir, model_info, summary, read_metrics(run_dir))


@dataclass(frozen=True)
class LoadedModel:
    """A run's trained network (eval mode, on the CPU) with what it needs to be used."""

    model: nn.Module
    backbone: BackboneSpec
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    metadata: dict[str, Any]  # model.json
    run_dir: Path | None = None  # where it was loaded from (None: built in memory)
    ood: CodeDistance | None = None  # the code-space score of rejection.json, when it has one

    def network(self) -> PixelClassifier:
        """Pixels in, logits out (and, with `ood`, the scores beside them): what every runtime
        and every export runs."""
        from tlvision.models.ood import with_codes
        from tlvision.models.pixels import PixelClassifier
        from tlvision.models.stages import StageClassifier

        if self.ood is None:
            return PixelClassifier(self.model, self.preprocessing)
        head = "head" if isinstance(self.model, StageClassifier) else self.backbone.head
        return PixelClassifier(with_codes(self.model, head), self.preprocessing, self.ood)


def build_architecture(metadata: dict[str, Any]) -> tuple[nn.Module, BackboneSpec]:
    """The empty network model.json describes, ready for the saved tensors."""
    from tlvision.models.backbone import get_backbone
    from tlvision.models.network import replace_head
    from tlvision.models.stages import StageClassifier

    backbone = get_backbone(metadata["backbone"])
    if metadata.get("stage"):
        # A linear probe on an earlier stage: the body cut at that stage plus its head.
        return StageClassifier(backbone, metadata["stage"], len(metadata["classes"])), backbone
    model = backbone.build()
    replace_head(model, backbone, len(metadata["classes"]))
    return model, backbone


def load_run_model(run_dir: Path) -> LoadedModel:
    """The run's model, with the code-space ood score when rejection.json uses it."""
    loaded = load_model_only(run_dir)
    ood = read_code_distance(run_dir, read_rejection_file(run_dir))
    return loaded if ood is None else dataclasses.replace(loaded, ood=ood)


def load_model_only(run_dir: Path) -> LoadedModel:
    """The run's model, its rejection files not read (`tlvision calibrate` rewrites them)."""
    from safetensors.torch import load_model

    metadata = read_model_json(run_dir)
    model, backbone = build_architecture(metadata)
    weights_path = run_dir / MODEL_WEIGHTS
    try:
        load_model(model, str(weights_path), strict=True)
    except Exception as error:
        raise UserError(
            f"{weights_path}: cannot load ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "the file is damaged or from another model: retrain into a new --out"
        ) from error
    model.eval()
    return LoadedModel(
        model=model,
        backbone=backbone,
        class_names=tuple(metadata["classes"]),
        preprocessing=Preprocessing.from_json(metadata["preprocessing"]),
        metadata=metadata,
        run_dir=run_dir,
    )


def run_splits(metadata: dict[str, Any], data_dir: Path | None = None) -> DatasetSplits:
    """The run's train/val split of `data_dir` (default: the data it trained on), made with
    the run's own --val-split and seed, its classes checked against the model's."""
    config = metadata.get("config", {})
    data_dir = data_dir if data_dir is not None else Path(config.get("data_dir") or ".")
    if not data_dir.is_dir():
        raise UserError(
            f"{data_dir}: the run's data folder is not there; pass --data DATA, a dataset folder "
            "with this model's classes"
        )
    splits = find_splits(data_dir, val_split=config.get("val_split"), seed=config.get("seed", 0))
    if list(splits.class_names) != list(metadata["classes"]):
        raise UserError(
            f"{data_dir}: classes {', '.join(splits.class_names)} differ from the model's "
            f"{', '.join(metadata['classes'])}; pass --data with the model's classes"
        )
    exclude = config.get("exclude")
    if exclude and Path(exclude).is_file():  # the files the run left out stay out
        exclusions = read_exclusions(
            Path(exclude), data_dir, config.get("exclude_sections") or "label_issues"
        )
        splits, _record = exclude_files(
            splits, exclusions, held_out=bool(config.get("exclude_held_out"))
        )
    return splits
