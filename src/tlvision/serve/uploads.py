"""Uploaded files to decoded images: FastAPI dependencies around the package's safe loader.

The request body's total size and the number of files are limited by FastAPI itself, while the
body is read (``max_body_size`` and ``form_limits`` in app.py), so an oversized upload is refused
before it is buffered. What arrives here is decoded by tlvision.images.decode_image_rgb, the
same loader training uses: zero-byte, truncated, non-image files and decompression bombs raise
BadImageError, which the error handlers turn into a 422 naming the file. Decoding runs on worker
threads, at most a few at a time, so a burst of large images cannot take all the memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, File, Request, UploadFile
from PIL import Image

from tlvision.images import decode_image_rgb


@dataclass(frozen=True)
class DecodedUpload:
    name: str  # the client's file name, or "upload N" when it sent none
    image: Image.Image  # 8-bit RGB, EXIF orientation applied


def decode_limiter(request: Request) -> anyio.CapacityLimiter:
    limiter: anyio.CapacityLimiter = request.app.state.decode_limiter
    return limiter


async def _decode(upload: UploadFile, position: int, limiter: anyio.CapacityLimiter) -> DecodedUpload:
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
