"""Batch prediction that streams: any number of image files, flat memory, JSON lines.

Paths are listed lazily (predict.ImagePaths), decoded by DataLoader workers a batch at a time
and classified as they arrive: no list of decoded images, no list of all paths. Under torchrun
each rank takes every world_size-th batch; with `--jsonl FILE` rank r writes FILE.rank<r> and
rank 0 then merges the parts, in input order, into FILE. Unreadable files get an error line in
their place.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tlvision import distributed
from tlvision.checkpoint import LoadedModel, load_run_model
from tlvision.data import build_transforms, default_num_workers
from tlvision.devices import resolve_device
from tlvision.errors import UserError
from tlvision.images import BadImageError, load_rgb_image
from tlvision.predict import ImagePaths
from tlvision.progress import progress_bar
from tlvision.results import Prediction


@dataclass
class _Batch:
    """A batch of paths: the decodable ones stacked in `images`, an error for the others."""

    paths: list[Path]
    images: torch.Tensor | None  # rows for the paths whose error is None, in order
    errors: list[str | None]


class _BatchStream(IterableDataset[_Batch]):
    """Batches of decoded images, this rank's and this worker's share, in input order.

    Batch i belongs to rank i % world_size; a rank's k-th batch to worker k % workers. The
    DataLoader takes one batch from each worker in turn, so batches come out in input order.
    """

    def __init__(
        self, paths: Iterable[Path], transform: Any, batch_size: int, rank: int, world_size: int
    ) -> None:
        self.paths, self.transform, self.batch_size = paths, transform, batch_size
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[_Batch]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        paths = iter(self.paths)
        chunks = iter(lambda: list(itertools.islice(paths, self.batch_size)), [])
        for index, chunk in enumerate(chunks):
            local, rank = divmod(index, self.world_size)
            if rank == self.rank and local % workers == worker_id:
                yield self._decode(chunk)

    def _decode(self, paths: list[Path]) -> _Batch:
        tensors: list[torch.Tensor] = []
        errors: list[str | None] = []
        for path in paths:
            try:
                tensors.append(self.transform(load_rgb_image(path)))
                errors.append(None)
            except BadImageError as error:
                errors.append(error.reason)
        return _Batch(paths, torch.stack(tensors) if tensors else None, errors)


def _keep(batch: _Batch) -> _Batch:
    """The DataLoader's collate: batches arrive made."""
    return batch


def stream_predictions(
    loaded: LoadedModel,
    paths: Iterable[Path],
    *,
    top_k: int = 1,
    batch_size: int = 32,
    device: torch.device | None = None,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> Iterator[Prediction]:
    """Top-k classes per image as each batch is classified; an `error` entry for unreadable
    files. `paths` may be a lazy iterator: it is walked once per loader worker."""
    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    top_k = min(top_k, len(loaded.class_names))
    device = device or torch.device("cpu")
    model = loaded.model.to(device).to(memory_format=torch.channels_last).eval()
    transform = build_transforms(loaded.preprocessing)["val"]
    loader = DataLoader(
        _BatchStream(paths, transform, batch_size, rank, world_size),
        batch_size=None, num_workers=num_workers, collate_fn=_keep,  # type: ignore[arg-type]
        pin_memory=device.type == "cuda", prefetch_factor=2 if num_workers else None,
    )  # fmt: skip
    bar = progress_bar(desc="predict", unit="img", disable=None if progress else True)
    with bar, torch.inference_mode():
        for batch in loader:
            yield from _classify(model, loaded.class_names, batch, top_k, device)
            bar.update(len(batch.paths))


def _classify(
    model: torch.nn.Module,
    class_names: Sequence[str],
    batch: _Batch,
    top_k: int,
    device: torch.device,
) -> Iterator[Prediction]:
    rows: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(())
    if batch.images is not None:
        images = batch.images.to(device, non_blocking=True, memory_format=torch.channels_last)
        probabilities = torch.softmax(model(images).float(), dim=1).cpu()
        values, indices = probabilities.topk(top_k, dim=1)
        rows = zip(values, indices, strict=True)
    for path, error in zip(batch.paths, batch.errors, strict=True):
        if error is not None:
            yield Prediction(path=path, top=(), error=error)
            continue
        row_values, row_indices = next(rows)
        top = tuple(
            (class_names[int(i)], float(v)) for v, i in zip(row_values, row_indices, strict=True)
        )
        yield Prediction(path=path, top=top)


def write_jsonl(predictions: Iterable[Prediction], jsonl: Path) -> tuple[int, int]:
    """One JSON line per prediction, flushed a batch at a time; (lines, errors)."""
    lines = errors = 0
    with jsonl.open("w", encoding="utf-8") as out:
        for prediction in predictions:
            # ensure_ascii: a file name that is not UTF-8 is written with \\udcXX escapes
            out.write(json.dumps(prediction.to_json()) + "\n")
            lines += 1
            errors += prediction.error is not None
    return lines, errors


def part_file(jsonl: Path, rank: int) -> Path:
    return jsonl.with_name(f"{jsonl.name}.rank{rank}")


def merge_parts(jsonl: Path, world_size: int, batch_size: int) -> None:
    """Interleave the ranks' part files batch by batch into `jsonl` (input order), then delete
    them. Each path has exactly one line, so rank r's k-th batch is its next batch_size lines."""
    parts = [part_file(jsonl, rank) for rank in range(world_size)]
    handles = [part.open(encoding="utf-8") for part in parts]
    try:
        with jsonl.open("w", encoding="utf-8") as out:
            for rank in itertools.cycle(range(world_size)):
                lines = list(itertools.islice(handles[rank], batch_size))
                out.writelines(lines)
                if len(lines) < batch_size:
                    break  # the last batch: every later rank's parts are already empty
    finally:
        for handle in handles:
            handle.close()
    for part in parts:
        part.unlink()


def predict_to_jsonl(
    run_dir: Path,
    arguments: Sequence[Path],
    jsonl: Path,
    *,
    top_k: int = 1,
    batch_size: int = 32,
    workers: int | None = None,
    device_name: str = "auto",
) -> tuple[int, int]:
    """`tlvision predict RUN PATHS --jsonl FILE`, in one process or on every torchrun rank;
    returns (lines, unreadable files) over all ranks."""
    loaded = load_run_model(run_dir)
    paths = ImagePaths(arguments)
    job, device = distributed.start(resolve_device(device_name))
    try:
        predictions = stream_predictions(
            loaded, paths, top_k=top_k, batch_size=batch_size, device=device,
            num_workers=default_num_workers() if workers is None else workers,
            rank=job.rank, world_size=job.world_size, progress=job.is_main,
        )  # fmt: skip
        target = part_file(jsonl, job.rank) if job.active else jsonl
        counts = write_jsonl(predictions, target)
        total, failed = (int(n) for n in distributed.sum_over_ranks(job, counts, device))
        distributed.barrier(job)  # every part is written
        if job.active and job.is_main:
            merge_parts(jsonl, job.world_size, batch_size)
        if job.is_main:
            print(f"{total} predictions written to {jsonl}", file=sys.stderr)
        return total, failed
    finally:
        distributed.stop(job)
