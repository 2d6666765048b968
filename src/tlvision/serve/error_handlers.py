"""Every refusal as JSON ``{"detail": "one line naming the problem"}`` with a 4xx status.

FastAPI already answers HTTPException as ``{"detail": ...}``; these handlers keep that shape for
the rest: validation errors (a missing or misnamed form field) become one readable line (the
structured list stays under "errors"), an undecodable image names the file, too many files names
the limit, and a full queue is a 503 with Retry-After.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from tlvision.data.images import BadImageError
from tlvision.serve.batching import QueueFull
from tlvision.serve.schemas import AsciiJSONResponse

FIELD_HINTS = {
    "files": "send one or more images as multipart/form-data field 'files'",
    "file": "send one image as multipart/form-data field 'file'",
}


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """One line from pydantic's error list, naming each field and what was wrong with it."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        where = location[0] if location else "request"
        name = location[1] if len(location) > 1 else where
        if where == "body":
            subject = f"form field '{name}'"
        elif where in ("query", "header", "path"):
            subject = f"{where} parameter '{name}'"
        else:
            subject = name
        message = str(error.get("msg", "invalid"))
        if name in FIELD_HINTS and error.get("type") == "missing":
            message = f"missing; {FIELD_HINTS[name]}"
        elif name in FIELD_HINTS and "UploadFile" in message:
            message = f"got a text value, not a file; {FIELD_HINTS[name]}"
        parts.append(f"{subject}: {message}")
    return "; ".join(parts) or "invalid request"


def _plain_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The raw errors may hold the offending input (an UploadFile, bytes): keep what is JSON.
    return [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        for error in errors
    ]


def install_error_handlers(app: FastAPI, max_files: int) -> None:
    async def on_validation_error(request: Request, error: Exception) -> AsciiJSONResponse:
        assert isinstance(error, RequestValidationError)
        errors = list(error.errors())
        return AsciiJSONResponse(
            {"detail": describe_validation_errors(errors), "errors": _plain_errors(errors)},
            status_code=422,
        )

    async def on_http_error(request: Request, error: Exception) -> AsciiJSONResponse:
        assert isinstance(error, HTTPException)
        detail = str(error.detail)
        if error.status_code == 400 and detail.startswith("Too many files"):
            detail = (
                f"too many files: at most {max_files} images per request (server option "
                "--max-files); split them over several requests"
            )
        return AsciiJSONResponse(
            {"detail": detail}, status_code=error.status_code, headers=error.headers
        )

    async def on_bad_image(request: Request, error: Exception) -> AsciiJSONResponse:
        assert isinstance(error, BadImageError)
        return AsciiJSONResponse(
            {"detail": f"{error.path}: {error.reason}", "kind": error.kind}, status_code=422
        )

    async def on_queue_full(request: Request, error: Exception) -> AsciiJSONResponse:
        assert isinstance(error, QueueFull)
        return AsciiJSONResponse(
            {"detail": f"server busy: the queue is full; retry after {error.retry_after} s"},
            status_code=503,
            headers={"Retry-After": str(error.retry_after)},
        )

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(BadImageError, on_bad_image)
    app.add_exception_handler(QueueFull, on_queue_full)
