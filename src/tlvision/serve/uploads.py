"""Uploaded files: the body-size limit, FastAPI dependencies for the files, safe decoding.

BodySizeLimit refuses an oversized request while its body is read: at once when Content-Length
declares too much, otherwise as soon as the bytes received pass the limit, so nothing larger is
ever buffered. (FastAPI's own max_body_size does the same but answers plain text; this answers
JSON like every other refusal.) The number of files is FastAPI's form_limits. Files are decoded
by tlvision.data.images.decode_image_rgb, the loader training uses: zero-byte, truncated, non-image
files and decompression bombs raise BadImageError, which the error handlers turn into a 422
naming the file. Decoding runs on worker threads, a few at a time (the app's limiters), each
image resized as soon as it is decoded, so a burst of large images cannot take all the memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import File, HTTPException, UploadFile
from PIL import Image
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tlvision.data.images import decode_image_rgb
from tlvision.data.preprocessing import Preprocessing
from tlvision.data.transforms import prepare_pixels
from tlvision.serve.schemas import AsciiJSONResponse


@dataclass(frozen=True)
class Upload:
    name: str  # the client's file name, or "upload N" when it sent none
    data: bytes


async def _read(upload: UploadFile, position: int) -> Upload:
    return Upload(name=upload.filename or f"upload {position + 1}", data=await upload.read())


async def uploaded_files(
    files: Annotated[
        list[UploadFile],
        File(description="one or more images (JPEG, PNG, WebP, ...), multipart field 'files'"),
    ],
) -> list[Upload]:
    return [await _read(upload, position) for position, upload in enumerate(files)]


async def single_uploaded_file(
    file: Annotated[list[UploadFile], File(description="one image, multipart field 'file'")],
) -> Upload:
    """The one image of field 'file'; a second one is refused, not silently dropped."""
    if len(file) != 1:
        raise HTTPException(
            400,
            f"multipart field 'file' takes one image, got {len(file)}; send one per request "
            "(/v1/predict takes several in the field 'files')",
        )
    return await _read(file[0], 0)


def decode_upload(upload: Upload) -> Image.Image:
    """8-bit RGB, EXIF orientation applied; BadImageError naming the upload otherwise."""
    image, _notes = decode_image_rgb(upload.data, upload.name)
    return image


def pixels_for_prediction(upload: Upload, preprocessing: Preprocessing) -> np.ndarray:
    """Decode, check, resize and centre-crop (runtime.prepare_pixels) in one call on a worker
    thread: the full-size image (up to 268 MB for the largest the loader takes) lives only
    while this runs, one per thread, never one per file of every request waiting."""
    return prepare_pixels(decode_upload(upload), preprocessing)


DRAIN_FACTOR = 4  # a declared body up to this many times the limit is read and dropped


def body_too_large_message(limit_mb: float) -> str:
    return (
        f"upload too large: the request body is limited to {limit_mb:g} MB (server option "
        "--max-upload-mb); send fewer or smaller images"
    )


class BodySizeLimit:
    """Pure ASGI middleware: a request body over ``limit_mb`` gets a 413, read or declared.
    Written by hand because it must act while the body is read, before FastAPI parses it."""

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
