"""Micro-batching of concurrent requests into one model call, with a bounded queue.

A network runs a batch of 16 images in much less than 16 times the time of one, so requests
that arrive together are answered together: the first item waits a few milliseconds for
company, then everything queued (up to ``max_batch``) goes through the model in one call on a
dedicated thread, which keeps the event loop free to accept and decode uploads meanwhile.

The queue is bounded: when it is full, ``submit`` raises QueueFull at once, with an estimate of
when to retry, instead of letting waiting work (and memory) grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

BatchFunction = Callable[[np.ndarray], np.ndarray]
"""Takes a stacked batch (N, ...) and returns one result row per item (N, ...)."""


class QueueFull(Exception):
    """The queue cannot take the items now; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = 16  # items per model call
    max_wait_seconds: float = 0.005  # how long the first item waits for company
    queue_size: int = 64  # items waiting (not yet in a model call) before QueueFull

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue_size < 1 or self.max_wait_seconds < 0:
            raise ValueError(f"invalid batching settings: {self}")


def retry_after_seconds(queued: int, max_batch: int, seconds_per_batch: float) -> int:
    """Whole seconds until the items queued now have been run: what Retry-After says."""
    batches_ahead = math.ceil(queued / max_batch) + 1
    return max(1, math.ceil(batches_ahead * seconds_per_batch))


@dataclass
class _Item:
    array: np.ndarray
    future: asyncio.Future[np.ndarray]


class Batcher:
    """Runs ``function`` on batches of submitted arrays; start() and stop() in the event loop."""

    def __init__(self, function: BatchFunction, config: BatchingConfig) -> None:
        self.function = function
        self.config = config
        self._pending: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlvision-model")
        self._worker: asyncio.Task[None] | None = None
        self._seconds_per_batch = 0.1  # updated from every batch run
        self.batches_run = 0
        self.items_run = 0

    @property
    def queued(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run_forever())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for item in self._pending:
            item.future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True)

    def check_room(self, count: int) -> None:
        """QueueFull now if `count` more items would not fit: callers ask before the work of
        preparing them (decoding uploads), and submit asks again."""
        if len(self._pending) + count > self.config.queue_size:
            raise QueueFull(
                retry_after_seconds(
                    len(self._pending), self.config.max_batch, self._seconds_per_batch
                )
            )

    async def submit(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One result row per array, in order. All are queued or none is (QueueFull)."""
        self.check_room(len(arrays))
        loop = asyncio.get_running_loop()
        items = [_Item(array, loop.create_future()) for array in arrays]
        self._pending.extend(items)
        self._wake.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if len(self._pending) < self.config.max_batch and self.config.max_wait_seconds > 0:
                await asyncio.sleep(self.config.max_wait_seconds)
            count = min(len(self._pending), self.config.max_batch)
            batch = [self._pending.popleft() for _ in range(count)]
            if not self._pending:
                self._wake.clear()
            batch = [item for item in batch if not item.future.done()]  # cancelled callers
            if batch:
                await self._run_batch(loop, batch)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            stacked = np.stack([item.array for item in batch])
            results = await loop.run_in_executor(self._executor, self.function, stacked)
        except Exception as error:  # the callers get the error; the worker keeps serving
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        self._seconds_per_batch = time.perf_counter() - started
        self.batches_run += 1
        self.items_run += len(batch)
        for item, row in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(row)
