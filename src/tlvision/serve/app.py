"""The FastAPI application: the web page, model info, health, predictions and class maps.

Endpoints stay small: middleware checks the Host and the token (middleware.py) and limits the
body size (uploads.py) before the body is read, FastAPI parses the form (form_limits),
dependencies read the uploads (uploads.py; the token again, for the OpenAPI schema's sake), a
full queue is refused before any image is decoded, the batcher runs the model on whatever
arrived together (batching.py), and error_handlers.py answers every refusal as JSON.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated
from urllib.parse import quote

import anyio
import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from tlvision.inference.class_maps import ClassMapper
from tlvision.inference.multilabel import label_fields, output_probabilities
from tlvision.inference.ood import Rejection
from tlvision.inference.runtime import Classifier
from tlvision.serve.batching import Batcher, QueueFull
from tlvision.serve.config import ServeConfig
from tlvision.serve.error_handlers import install_error_handlers
from tlvision.serve.maps import render_class_map
from tlvision.serve.middleware import GateConfig, HeaderGate, allowed_hosts
from tlvision.serve.schemas import (
    AsciiJSONResponse,
    ClassProbability,
    ErrorBody,
    Health,
    ImagePrediction,
    Limits,
    ModelInfo,
    PredictResponse,
    run_metrics,
)
from tlvision.serve.uploads import (
    BodySizeLimit,
    Upload,
    pixels_for_prediction,
    single_uploaded_file,
    uploaded_files,
)

MAPS_IN_FLIGHT = 4  # class-map requests running or waiting; more get 503 (each is a full pass)
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:",
    "X-Content-Type-Options": "nosniff",
}


@dataclass
class Service:
    """What the endpoints share: the model, its batcher and what /v1/model reports."""

    classifier: Classifier
    mapper: ClassMapper
    config: ServeConfig
    batcher: Batcher
    info: ModelInfo
    decode_limiter: anyio.CapacityLimiter  # images decoded and resized at once, all requests
    maps_limiter: anyio.CapacityLimiter  # class maps computed at once
    rejection: Rejection | None = None  # serve --reject: unknown images get no class


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


_bearer = HTTPBearer(auto_error=False, description="the server's --token / TLVISION_TOKEN")


def require_token(
    service: Annotated[Service, Depends(get_service)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Every /v1/ call: a configured token must come as 'Authorization: Bearer TOKEN'."""
    expected = service.config.token
    if expected is None:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPException(
            401, "token required: send the header 'Authorization: Bearer TOKEN'", challenge
        )
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(401, "wrong token", challenge)


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody} for status in (400, 401, 413, 422, 503)
}
api = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_token)],
    responses=ERROR_RESPONSES,
    default_response_class=AsciiJSONResponse,
)
pages = APIRouter(default_response_class=AsciiJSONResponse)


@pages.get("/", response_class=HTMLResponse, include_in_schema=False)
def index_page() -> HTMLResponse:
    html = (resources.files("tlvision.serve") / "static" / "index.html").read_text()
    return HTMLResponse(html, headers=PAGE_SECURITY_HEADERS)


@pages.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    """The page links /static/favicon.svg; this answers what asks the conventional path."""
    icon = (resources.files("tlvision.serve") / "static" / "favicon.svg").read_bytes()
    return Response(icon, media_type="image/svg+xml")


@pages.get("/healthz")
def health(service: Annotated[Service, Depends(get_service)]) -> Health:
    return Health(
        status="ok",
        runtime=service.classifier.runtime,
        queued=service.batcher.queued,
        batches_run=service.batcher.batches_run,
        images_run=service.batcher.items_run,
    )


@api.get("/model")
def model_info(service: Annotated[Service, Depends(get_service)]) -> ModelInfo:
    return service.info


@api.post("/predict", response_model_exclude_unset=True)  # labels: multi-label only
async def predict(
    service: Annotated[Service, Depends(get_service)],
    uploads: Annotated[list[Upload], Depends(uploaded_files)],
    top_k: Annotated[int, Form(ge=1, le=1000, description="classes per image")] = 1,
) -> PredictResponse:
    preprocessing = service.classifier.preprocessing
    service.batcher.check_room(len(uploads))  # 503 before the work of decoding, not after
    pixels = [
        await anyio.to_thread.run_sync(
            pixels_for_prediction, upload, preprocessing, limiter=service.decode_limiter
        )
        for upload in uploads
    ]
    rows = await service.batcher.submit(pixels)
    names = service.classifier.class_names
    count = min(top_k, len(names))
    predictions = []
    for upload, row in zip(uploads, rows, strict=True):
        logits, network_score = row[:-1], row[-1:]  # the batcher's last column: see create_app
        # softmax, or one sigmoid per class for a multi-label model
        probabilities = output_probabilities(service.classifier, logits[None])[0]
        unknown, ood_score = None, None
        if service.rejection is not None:
            given = None if np.isnan(network_score[0]) else network_score
            ood_score = float(service.rejection.scores(logits[None], given)[0])
            unknown = bool(service.rejection.unknown(np.asarray([ood_score]))[0])
        order = np.argsort(-probabilities, kind="stable")[:count]
        top = [
            ClassProbability(class_name=names[index], probability=float(probabilities[index]))
            for index in order
        ]
        predictions.append(
            ImagePrediction(
                file=upload.name,
                class_name=None if unknown else top[0].class_name,
                probability=None if unknown else top[0].probability,
                top=top,
                unknown=unknown,
                ood_score=ood_score,
                **label_fields(service.classifier, probabilities),
            )
        )
    return PredictResponse(predictions=predictions, runtime=service.classifier.runtime)


@api.post(
    "/maps",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the class-map overlay"}},
)
async def class_map(
    service: Annotated[Service, Depends(get_service)],
    upload: Annotated[Upload, Depends(single_uploaded_file)],
    class_name: Annotated[
        str | None, Form(alias="class", description="default: the most likely class")
    ] = None,
) -> Response:
    names = service.classifier.class_names
    if class_name is not None and class_name not in names:
        raise HTTPException(
            422, f"form field 'class': unknown class {class_name!r}; one of {', '.join(names)}"
        )
    limiter = service.maps_limiter
    if limiter.statistics().tasks_waiting + limiter.borrowed_tokens >= MAPS_IN_FLIGHT:
        raise QueueFull(retry_after=2)
    png, shown = await anyio.to_thread.run_sync(
        render_class_map, service.mapper, upload, class_name, limiter=limiter
    )
    # Headers are Latin-1: the class name is percent-encoded (its bytes, if not UTF-8).
    header = quote(shown, safe="", errors="surrogateescape")
    return Response(png, media_type="image/png", headers={"X-Class": header})


def describe_model(
    classifier: Classifier, config: ServeConfig, metadata: dict[str, object]
) -> ModelInfo:
    return ModelInfo(
        classes=list(classifier.class_names),
        backbone=str(metadata.get("backbone", "")),
        weights=None if metadata.get("weights") is None else str(metadata["weights"]),
        strategy=str(metadata.get("strategy", "")),
        stage=None if metadata.get("stage") is None else str(metadata["stage"]),
        input_size=classifier.preprocessing.crop_size,
        runtime=classifier.runtime,
        metrics=run_metrics(config.run_dir),
        limits=Limits(
            max_upload_mb=config.max_upload_mb,
            max_files=config.max_files,
            max_batch=config.batching.max_batch,
            queue_size=config.batching.queue_size,
        ),
    )


def create_app(
    classifier: Classifier,
    mapper: ClassMapper,
    config: ServeConfig,
    metadata: dict[str, object],
    *,
    rejection: Rejection | None = None,
) -> FastAPI:
    """The application for one loaded classifier; the batcher runs while the app does."""

    def logits(batch: np.ndarray) -> np.ndarray:
        """(N, classes + 1): the logits, then the network's ood score (NaN: it has none)."""
        logits, scores = classifier.outputs(batch)
        last = np.full(len(logits), np.nan, np.float32) if scores is None else scores
        return np.concatenate([logits, last[:, None]], axis=1).astype(np.float32)

    service = Service(
        classifier=classifier,
        mapper=mapper,
        config=config,
        batcher=Batcher(logits, config.batching),
        info=describe_model(classifier, config, metadata),
        decode_limiter=anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1))),
        maps_limiter=anyio.CapacityLimiter(1),
        rejection=rejection,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(
        title="tlvision",
        summary=f"{', '.join(classifier.class_names)} classifier from {config.run_dir.name}",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's docs pages load their scripts from a CDN; /openapi.json
        # stays, behind the token like /v1/ (middleware.HeaderGate)
        redoc_url=None,
        form_limits={"max_files": config.max_files},
    )
    app.state.service = service
    install_error_handlers(app, config.max_files)
    app.add_middleware(BodySizeLimit, limit_mb=config.max_upload_mb)
    # Added last, so it runs first: the Host and the token, before any body is read.
    hosts = allowed_hosts(config.host, config.allowed_hosts)
    app.add_middleware(HeaderGate, gate=GateConfig(token=config.token, hosts=hosts))
    app.include_router(pages)
    app.include_router(api)
    app.mount("/static", StaticFiles(packages=[("tlvision.serve", "static")]), name="static")
    return app
