"""Uploaded files to decoded images: FastAPI dependencies around the package's safe loader.

BodySizeLimit refuses an oversized request while its body is read: at once when Content-Length
declares too much, otherwise as soon as the bytes received pass the limit, so nothing larger is
ever buffered. (FastAPI's own max_body_size does the same but answers plain text; this answers
JSON like every other refusal.) The number of files is FastAPI's form_limits. What arrives here
is decoded by tlvision.images.decode_image_rgb, the
same loader training uses: zero-byte, truncated, non-image files and decompression bombs raise
BadImageError, which the error handlers turn into a 422 naming the file. Decoding runs on worker
threads, at most a few at a time, so a burst of large images cannot take all the memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, File, HTTPException, Request, UploadFile
from PIL import Image
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tlvision.images import BadImageError, decode_image_rgb
from tlvision.serve.schemas import AsciiJSONResponse


@dataclass(frozen=True)
class DecodedUpload:
    name: str  # the client's file name, or "upload N" when it sent none
    image: Image.Image  # 8-bit RGB, EXIF orientation applied


def decode_limiter(request: Request) -> anyio.CapacityLimiter:
    limiter: anyio.CapacityLimiter = request.app.state.decode_limiter
    return limiter


async def _decode(
    upload: UploadFile, position: int, limiter: anyio.CapacityLimiter
) -> DecodedUpload:
    name = upload.filename or f"upload {position + 1}"
    data = await upload.read()
    image, _notes = await anyio.to_thread.run_sync(decode_image_rgb, data, name, limiter=limiter)
    return DecodedUpload(name=name, image=image)


async def uploaded_images(
    files: Annotated[
        list[UploadFile],
        File(description="one or more images (JPEG, PNG, WebP, ...), multipart field 'files'"),
    ],
    limiter: Annotated[anyio.CapacityLimiter, Depends(decode_limiter)],
) -> list[DecodedUpload]:
    return [await _decode(upload, position, limiter) for position, upload in enumerate(files)]


async def uploaded_image(
    file: Annotated[UploadFile, File(description="one image, multipart field 'file'")],
    limiter: Annotated[anyio.CapacityLimiter, Depends(decode_limiter)],
) -> DecodedUpload:
    return await _decode(file, 0, limiter)


MAX_ASPECT_RATIO = 64  # long side / short side that prediction resizes; see refuse_elongated


def refuse_elongated(upload: DecodedUpload, resize_size: int) -> None:
    """Refuse an image the prediction resize would blow up (a 1 x 50,000 pixel PNG is a few
    hundred bytes; scaled to a short side of 256 it would take about 10 GB). The class-map
    path caps the long side instead and needs no such limit."""
    width, height = upload.image.size
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT_RATIO:
        long_side = round(resize_size * ratio)
        raise BadImageError(
            upload.name,
            f"too elongated to classify ({width}x{height}: scaling its short side to "
            f"{resize_size} would make it {long_side:,} pixels long; the limit is "
            f"{MAX_ASPECT_RATIO}:1); crop it first",
            "decompression-bomb",
        )


DRAIN_FACTOR = 4  # a declared body up to this many times the limit is read and dropped


def body_too_large_message(limit_mb: float) -> str:
    return (
        f"upload too large: the request body is limited to {limit_mb:g} MB (server option "
        "--max-upload-mb); send fewer or smaller images"
    )


class BodySizeLimit:
    """Pure ASGI middleware: a request body over ``limit_mb`` gets a 413, read or declared."""

    def __init__(self, app: ASGIApp, limit_mb: float) -> None:
        self.app = app
        self.limit_mb = limit_mb
        self.limit_bytes = int(limit_mb * 1024 * 1024)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit_bytes:
            # Refused before a byte of the body is read. Most clients send the whole body
            # before reading the answer, so uvicorn reads the rest and drops it (nothing is
            # kept) and they get this JSON rather than a reset connection; a declared size far
            # beyond the limit is not worth reading: the connection is closed instead.
            close = int(declared) > DRAIN_FACTOR * self.limit_bytes
            response = AsciiJSONResponse(
                {"detail": body_too_large_message(self.limit_mb)},
                status_code=413,
                headers={"Connection": "close"} if close else None,
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit_bytes:
                    # FastAPI passes an HTTPException raised while reading the body on to the
                    # exception handlers, which answer JSON. A body of undeclared size may be
                    # endless: the connection is closed after the answer.
                    raise HTTPException(
                        413, body_too_large_message(self.limit_mb), {"Connection": "close"}
                    )
            return message

        await self.app(scope, counting_receive, send)
