"""Batch prediction that streams: any number of images, flat memory, JSON lines.

Paths are listed lazily (sources.ImagePaths) and decoded a batch at a time by a few threads
while the model classifies the batch before: PIL's decoder and resampler and ONNX Runtime all
release the GIL, so threads overlap them without the memory, start-up and copying of loader
processes. At most `2 * decoders + 1` batches are in flight, whatever the number of images.
Under torchrun each rank takes every world_size-th batch; with `--jsonl FILE` rank r writes
FILE.rank<r> and rank 0 then merges the parts, in input order, into FILE. Unreadable files get
an error line in their place.

The model runs on the runtime `runtime.choose_runtime` picks: ONNX Runtime on a CPU, torch on a
GPU. Both take uint8 pixels, so a batch crosses to a GPU at a quarter of the bytes of float
tensors. Every path that classifies images comes through `classify`.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlvision.compute import distributed
from tlvision.compute.devices import resolve_device
from tlvision.data.images import BadImageError
from tlvision.data.loading import default_num_workers
from tlvision.data.preprocessing import Preprocessing
from tlvision.data.transforms import prepare_pixels
from tlvision.errors import UserError, writing
from tlvision.inference.multilabel import label_fields, output_probabilities
from tlvision.inference.ood import Rejection, rejection_of_run
from tlvision.inference.runtime import Classifier, open_classifier
from tlvision.inference.sources import ImageInput, ImagePaths, Prediction, rgb_image
from tlvision.inference.tta import TTA_VIEWS, averaged, tta_pixels
from tlvision.progress import progress_bar


@dataclass
class _Batch:
    """A batch of inputs: the decodable ones' pixels stacked in `pixels` (each input's `views`
    rows in turn), an error for the others."""

    sources: list[tuple[int, ImageInput]]  # (position in the input, the input)
    pixels: np.ndarray | None  # (n x views, H, W, 3) uint8 for the inputs without an error
    errors: list[str | None]


def _decode(
    sources: list[tuple[int, ImageInput]], preprocessing: Preprocessing, tta: bool
) -> _Batch:
    arrays: list[np.ndarray] = []
    errors: list[str | None] = []
    for index, source in sources:
        try:
            image = rgb_image(source, index)
        except BadImageError as error:
            errors.append(error.reason)
            continue
        if tta:
            arrays.append(tta_pixels(image, preprocessing))
        else:
            arrays.append(prepare_pixels(image, preprocessing)[None])
        errors.append(None)
    return _Batch(sources, np.concatenate(arrays) if arrays else None, errors)


def decoded_batches(
    sources: Iterable[ImageInput],
    preprocessing: Preprocessing,
    *,
    batch_size: int,
    decoders: int,
    tta: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[_Batch]:
    """This rank's batches (batch i belongs to rank i % world_size), decoded ahead by
    `decoders` threads (0: in the caller's thread), in input order."""
    numbered = enumerate(sources)
    chunks = iter(lambda: list(itertools.islice(numbered, batch_size)), [])
    mine = (chunk for index, chunk in enumerate(chunks) if index % world_size == rank)
    if decoders == 0:
        yield from (_decode(chunk, preprocessing, tta) for chunk in mine)
        return
    with ThreadPoolExecutor(decoders, thread_name_prefix="decode") as pool:
        pending: deque[Future[_Batch]] = deque()
        for chunk in mine:
            pending.append(pool.submit(_decode, chunk, preprocessing, tta))
            if len(pending) > 2 * decoders:  # bounded read-ahead: memory stays flat
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass(frozen=True)
class Classified:
    """One input and its class probabilities, or why it could not be read."""

    source: ImageInput
    probabilities: np.ndarray | None  # (classes,), softmax of the logits (TTA: views averaged)
    error: str | None = None
    logits: np.ndarray | None = None  # (classes,) (TTA: views averaged), for rejection
    ood_score: float | None = None  # the network's code-space score, when it computes one


def classify(
    classifier: Classifier,
    sources: Iterable[ImageInput],
    *,
    batch_size: int = 32,
    decoders: int | None = None,
    tta: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> Iterator[Classified]:
    """Every input's class probabilities as its batch is classified, in input order; an error
    for an unreadable file. `sources` (paths, PIL images or pixel arrays) may be a lazy
    iterator, walked once. `tta`: the views of tlvision.inference.tta, averaged."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if decoders is not None and decoders < 0:
        raise UserError(f"--workers {decoders}: must be 0 (decode in the main thread) or more")
    views = len(TTA_VIEWS) if tta else 1
    batches = decoded_batches(
        sources, classifier.preprocessing, batch_size=batch_size,
        decoders=default_num_workers() if decoders is None else decoders, tta=tta,
        rank=rank, world_size=world_size,
    )  # fmt: skip
    with progress_bar(desc="predict", unit="img", disable=None if progress else True) as bar:
        for batch in batches:
            rows: Iterator[np.ndarray] = iter(())
            logit_rows: Iterator[np.ndarray] = iter(())
            score_rows: Iterator[float | None] = itertools.repeat(None)
            if batch.pixels is not None:
                logits, scores = classifier.outputs(batch.pixels)
                rows = iter(averaged(output_probabilities(classifier, logits), views))
                logit_rows = iter(averaged(logits, views))
                if scores is not None:
                    score_rows = iter(averaged(scores[:, None], views)[:, 0].tolist())
            for (_, source), error in zip(batch.sources, batch.errors, strict=True):
                if error:
                    yield Classified(source, None, error)
                else:
                    logit_row = next(logit_rows)
                    yield Classified(source, next(rows), None, logit_row, next(score_rows))
            bar.update(len(batch.sources))


def top_classes(
    probabilities: np.ndarray, class_names: tuple[str, ...], top_k: int
) -> tuple[tuple[str, float], ...]:
    """The `top_k` (class name, probability) pairs, most likely first (ties: the earlier)."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return tuple((class_names[int(i)], float(probabilities[i])) for i in order)


def stream_predictions(
    classifier: Classifier,
    sources: Iterable[ImageInput],
    *,
    top_k: int = 1,
    batch_size: int = 32,
    decoders: int | None = None,
    tta: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    rejection: Rejection | None = None,
) -> Iterator[Prediction]:
    """Top-k classes per input as each batch is classified; an `error` entry for unreadable
    files (see `classify`). With a `rejection`, each gets its out-of-distribution score and
    whether it is unknown (tlvision.inference.rejection)."""
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: must be at least 1")
    top_k = min(top_k, len(classifier.class_names))
    for item in classify(
        classifier, sources, batch_size=batch_size, decoders=decoders, tta=tta, rank=rank,
        world_size=world_size, progress=progress,
    ):  # fmt: skip
        path = item.source if isinstance(item.source, Path) else None
        if item.probabilities is None:
            yield Prediction(path=path, top=(), error=item.error)
        else:
            top = top_classes(item.probabilities, classifier.class_names, top_k)
            fields = label_fields(classifier, item.probabilities)
            if rejection is None or item.logits is None:
                yield Prediction(path=path, top=top, **fields)
                continue
            network_score = None if item.ood_score is None else np.asarray([item.ood_score])
            score = rejection.scores(item.logits[None], network_score)
            unknown = bool(rejection.unknown(score)[0])
            yield Prediction(
                path=path, top=top, ood_score=float(score[0]), unknown=unknown, **fields
            )


def write_jsonl(predictions: Iterable[Prediction], jsonl: Path) -> tuple[int, int]:
    """One JSON line per prediction, flushed a batch at a time; (lines, errors)."""
    lines = errors = 0
    kept = "it holds the lines written before the disk filled"
    with writing(jsonl, then="predict again", kept=kept), jsonl.open("w", encoding="utf-8") as out:
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
    decoders: int | None = None,
    device_name: str = "auto",
    runtime: str = "auto",
    tta: bool = False,
    reject: str | None = None,
) -> tuple[int, int]:
    """`tlvision predict RUN PATHS --jsonl FILE`, in one process or on every torchrun rank;
    returns (lines, unreadable files) over all ranks."""
    paths = ImagePaths(arguments)
    rejection = rejection_of_run(run_dir, reject)
    job, device = distributed.start(resolve_device(device_name))
    try:
        if job.active and not job.is_main:
            distributed.barrier(job)  # rank 0 exports the ONNX file once; the others wait
        classifier = open_classifier(run_dir, runtime, device=device)
        if job.active and job.is_main:
            distributed.barrier(job)
        predictions = stream_predictions(
            classifier, paths, top_k=top_k, batch_size=batch_size, decoders=decoders, tta=tta,
            rank=job.rank, world_size=job.world_size, progress=job.is_main, rejection=rejection,
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
