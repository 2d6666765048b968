"""The JSON the server answers with: typed models (they also make the OpenAPI schema), in ASCII."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tlvision.runs.layout import METRICS_FILE, SUMMARY_FILE


class AsciiJSONResponse(JSONResponse):
    """JSON in pure ASCII, as tlvision writes all its JSON (tlvision.jsonio): a class
    folder whose name is not valid UTF-8 is held with lone surrogates, which strict UTF-8 JSON
    cannot encode; escaped ("\\udcff") they round-trip."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class ClassProbability(BaseModel):
    class_name: str = Field(serialization_alias="class", description="the class folder's name")
    probability: float


class ImagePrediction(BaseModel):
    file: str = Field(description="the upload's file name")
    class_name: str | None = Field(
        serialization_alias="class", description="the most likely class; null when unknown"
    )
    probability: float | None = Field(description="the class's; null when unknown")
    top: list[ClassProbability] = Field(description="the closest classes, also when unknown")
    unknown: bool | None = Field(
        default=None, description="unlike every training class (serve --reject); null: off"
    )
    ood_score: float | None = Field(
        default=None, description="higher: less like the training classes; null: off"
    )
    labels: list[str] | None = Field(
        default=None, description="multi-label models: the classes over their thresholds"
    )
    probabilities: dict[str, float] | None = Field(
        default=None, description="multi-label models: every class's probability (sigmoid)"
    )


class PredictResponse(BaseModel):
    predictions: list[ImagePrediction]
    runtime: str


class Limits(BaseModel):
    max_upload_mb: float
    max_files: int
    max_batch: int
    queue_size: int


class ModelInfo(BaseModel):
    classes: list[str]
    backbone: str
    weights: str | None
    strategy: str
    stage: str | None
    input_size: int
    runtime: str
    metrics: dict[str, Any] = Field(
        description="from the run's summary.json (best_* are the best epoch's) and the last "
        "line of metrics.jsonl (final_*)"
    )
    limits: Limits


class Health(BaseModel):
    status: str
    runtime: str
    queued: int
    batches_run: int
    images_run: int


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong with the request, and how to fix it")


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's headline numbers: the best epoch's val accuracy (the weights saved and served),
    the final epoch's, and the test split's where the run has one."""
    metrics: dict[str, Any] = {}
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        kept = ("best_val_acc", "best_epoch", "epochs", "train_images", "val_images")
        for key in (*kept, "test_acc", "test_map", "test_images"):
            if key in summary:
                metrics[key] = summary[key]
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        lines = [line for line in metrics_path.read_text().splitlines() if line.strip()]
        if lines:
            last = json.loads(lines[-1])
            metrics["final_epoch"] = last.get("epoch")
            metrics["final_val_acc"] = last.get("val_acc")
    return metrics
