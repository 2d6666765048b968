"""Extraction runs: a frozen body over a list of images, once, into the codes cache.

`extract_codes` runs an extractor (a `stages.StageCodes`, or any module mapping an image batch to
codes) over the images whose codes are not validly cached, writes `chunk-*` shards every
`chunk_size` images (an interrupted run keeps what it finished), then one `list-*` shard holding
exactly the requested images in order. Images are decoded from the very bytes that were hashed.
Undecodable images get no code and are reported together (UnreadableImagesError) after every
other image's codes are stored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlvision.codes.cache import (
    CodesGroup,
    CodesSpec,
    FeatureCache,
    Log,
    View,
    sha256_hex,
    stderr_log,
)
from tlvision.codes.onnx_forward import Forward, fastest_forward
from tlvision.codes.shards import ShardWriter, shard_name
from tlvision.data.images import BadImageError, decode_image_rgb
from tlvision.data.transforms import build_pixel_transforms
from tlvision.errors import UserError
from tlvision.models.pixels import PixelNormalize
from tlvision.models.stages import model_fingerprint
from tlvision.progress import progress_bar

DEFAULT_CHUNK_SIZE = 4096  # images per chunk shard: what an interrupted extraction keeps

Transform = Callable[[Image.Image], torch.Tensor]


class UnreadableImagesError(UserError):
    """Images that cannot be decoded; the codes of every other image were computed and cached.

    `images` is [(path, reason)]. `extract_split_codes` drops these images and reports them;
    lower-level callers can do the same and call again (everything else is then a cache hit).
    """

    def __init__(self, images: Sequence[tuple[Path, str]]) -> None:
        self.images = list(images)
        listed = "; ".join(f"{path}: {reason}" for path, reason in self.images[:5])
        more = f" and {len(self.images) - 5} more" if len(self.images) > 5 else ""
        super().__init__(
            f"{len(self.images)} unreadable image(s): {listed}{more}; fix or remove them "
            "(`tlvision check` lists every problem)"
        )


_OK, _CHANGED, _UNREADABLE = 0, 1, 2

_Item = tuple[torch.Tensor | None, int, int, str]


class _ViewImages(Dataset[_Item]):
    """Images decoded from their bytes (as training decodes them), each checked against the hash
    its codes will be filed under; an undecodable file comes back as a status, not an error."""

    def __init__(
        self, paths: Sequence[Path], hashes: Sequence[str] | None, transform: Transform, view: View
    ) -> None:
        self.paths = list(paths)
        self.hashes = list(hashes) if hashes is not None else None
        self.transform = transform
        self.view = view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        path = Path(self.paths[index])
        try:
            data = path.read_bytes()
        except OSError as error:
            return None, index, _UNREADABLE, f"cannot read file ({error.strerror or error})"
        content_hash = sha256_hex(data)
        if self.hashes is not None and content_hash != self.hashes[index]:
            return None, index, _CHANGED, ""
        try:
            rgb, _notes = decode_image_rgb(data, path)
        except BadImageError as error:
            return None, index, _UNREADABLE, error.reason
        if self.view.augment is None:
            return self.transform(rgb), index, _OK, ""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.view.image_seed(content_hash))
            return self.transform(rgb), index, _OK, ""


def _collate(batch: Sequence[_Item]) -> tuple[torch.Tensor | None, torch.Tensor, list[_Item]]:
    """(stacked decodable images, their indices, the items that were not decodable)."""
    good = [item for item in batch if item[2] == _OK]
    bad: list[_Item] = [
        (None, index, status, reason) for _, index, status, reason in batch if status
    ]
    if not good:
        return None, torch.empty(0, dtype=torch.long), bad
    images = torch.stack([item[0] for item in good if item[0] is not None])
    return images, torch.tensor([item[1] for item in good], dtype=torch.long), bad


def _paths_of(samples: Sequence[Path] | Sequence[tuple[Path, int]]) -> list[Path]:
    return [Path(sample[0]) if isinstance(sample, tuple) else Path(sample) for sample in samples]


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _fingerprint_of(extractor: nn.Module) -> str:
    fingerprint = getattr(extractor, "fingerprint", None)
    if callable(fingerprint):
        return str(fingerprint())
    return model_fingerprint(extractor)


def _describe_transform(transform: Transform) -> str:
    return f"{type(transform).__module__}.{type(transform).__qualname__}: {transform!r}"


def extract_codes(
    extractor: nn.Module,
    samples: Sequence[Path] | Sequence[tuple[Path, int]],
    *,
    specs: Sequence[CodesSpec],
    cache: FeatureCache | None,
    transform: Transform | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    channels_last: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    description: str = "codes",
    log: Log | None = None,
    runtime: str = "auto",
) -> dict[str | None, np.ndarray]:
    """Codes (N, C) for every spec's stage, from one pass of `extractor` over the images.

    All specs must share backbone, weights, preprocessing and view; they differ by stage.
    `extractor` returns a tensor (one spec) or {stage: tensor} (a `stages.StageCodes`; any other
    module has its whole state dict fingerprinted). Only images with no valid cached code are
    run; with a cache the result is a read-only np.memmap per stage, without one an array.
    `transform` defaults to the preprocessing's transform for the view's phase, as uint8 pixels
    that the pass normalises a batch at a time inside the model. runtime "auto"
    runs a CPU pass over enough images in ONNX Runtime (onnx_forward.fastest_forward), "torch"
    keeps torch.
    """
    stages = _check_specs(specs)
    log = log or (cache.log if cache is not None else stderr_log)
    view = specs[0].view
    normalize = None
    if transform is None:
        transform = build_pixel_transforms(specs[0].preprocessing)[view.phase]
        normalize = PixelNormalize(specs[0].preprocessing)
    paths = _paths_of(samples)
    if not paths:
        return {stage: np.zeros((0, 0), dtype=np.float32) for stage in stages}
    run = _Run(
        paths=paths, stages=stages, transform=transform, view=view, batch_size=batch_size,
        num_workers=num_workers, device=torch.device(device), chunk_size=max(1, chunk_size),
        channels_last=torch.device(device).type == "cpu" if channels_last is None
        else channels_last, description=description, runtime=runtime, normalize=normalize,
    )  # fmt: skip
    if cache is None:
        run.execute(extractor, list(range(len(paths))), writers=None)
        return run.memory
    plan = _plan(cache, extractor, specs, paths, _describe_transform(transform))
    if plan.compute:
        log(plan.message(description, cache.root))
        # only the stages with codes still missing: the others are served by exact shards
        run.stages, run.hashes, run.keys = list(plan.groups), plan.hashes, plan.keys
        writers = _ChunkWriters(plan.groups, plan.missing, plan.keys, plan.compute, chunk_size)
        run.execute(extractor, plan.compute, writers=writers)
    elif plan.reused:
        log(plan.message(description, cache.root))
    for stage, group in plan.groups.items():
        plan.results[stage] = _assemble(group, plan.keys)
    return {stage: plan.results[stage] for stage in stages}


def _check_specs(specs: Sequence[CodesSpec]) -> list[str | None]:
    if not specs:
        raise ValueError("pass at least one CodesSpec")
    first = specs[0]
    shared = (first.backbone, first.weights, first.preprocessing, first.view)
    if any((s.backbone, s.weights, s.preprocessing, s.view) != shared for s in specs):
        raise ValueError("specs of one extraction pass may differ only by stage")
    stages = [spec.stage for spec in specs]
    if len(set(stages)) != len(stages):
        raise ValueError("each stage once, please")
    return stages


@dataclass
class _Plan:
    """What the cache already holds for one request, and which images must still run."""

    hashes: list[str]
    keys: list[bytes]
    results: dict[str | None, np.ndarray]  # stages served whole by an exact list shard
    groups: dict[str | None, CodesGroup]  # the other stages' groups, index loaded
    missing: dict[str | None, set[bytes]]  # per such stage, the keys with no valid code
    compute: list[int]  # positions of the images to run (each distinct content once)
    reused: int  # codes served from the cache

    def message(self, description: str, root: Path) -> str:
        if not self.reused:
            return f"{description}: computing codes for {len(self.compute)} images into {root}"
        computing = f"; computing {len(self.compute)} images" if self.compute else ""
        return f"{description}: reused {self.reused} cached codes from {root}{computing}"


def _plan(
    cache: FeatureCache,
    extractor: nn.Module,
    specs: Sequence[CodesSpec],
    paths: list[Path],
    transform_text: str,
) -> _Plan:
    hashes = cache.image_hashes(paths)
    keys = [bytes.fromhex(digest) for digest in hashes]
    fingerprint = _fingerprint_of(extractor)
    results: dict[str | None, np.ndarray] = {}
    groups: dict[str | None, CodesGroup] = {}
    for spec in specs:
        group = cache.group(spec, transform=transform_text, fingerprint=fingerprint)
        exact = group.exact(keys)
        if exact is not None:
            results[spec.stage] = exact
        else:
            group.load_index()
            groups[spec.stage] = group
    missing = {stage: group.resolve(keys) for stage, group in groups.items()}
    all_missing = set().union(*missing.values())
    compute, seen = [], set()
    for position, key in enumerate(keys):
        if key in all_missing and key not in seen:
            seen.add(key)
            compute.append(position)
    reused = len(keys) * len(results) + sum(
        sum(1 for key in keys if key not in missing[stage]) for stage in groups
    )
    return _Plan(hashes, keys, results, groups, missing, compute, reused)


def _assemble(group: CodesGroup, keys: list[bytes]) -> np.ndarray:
    """The codes for `keys` in order: an existing exact shard, or a new `list-*` shard."""
    name = shard_name("list", group.digest, keys)
    for shard in group.shards:
        if shard.path.name == name and shard.keys == keys:
            return shard.codes  # written by this extraction, already checked
    still_missing = group.resolve(keys)
    if still_missing:  # a shard vanished or went bad under us: nothing sensible left to do
        raise UserError(
            f"feature cache: {len(still_missing)} codes disappeared from {group.dir} while "
            "extracting (another run deleting the cache?); run again"
        )
    dim = group.index[keys[0]][0].dim
    writer = ShardWriter(group.dir, group.digest, keys, dim)
    try:
        group.gather(keys, writer)
        shard = writer.commit(name)
    except BaseException:
        writer.abort()
        raise
    group.add(shard)
    group.remove_redundant_chunks(set(keys))
    return shard.codes


class _ChunkWriters:
    """Codes computed in image order, written as one `chunk-*` shard per stage per `chunk_size`
    images of `compute`; a stage's shard holds only the images that stage was missing."""

    def __init__(
        self,
        groups: dict[str | None, CodesGroup],
        missing: dict[str | None, set[bytes]],
        keys: list[bytes],
        compute: list[int],
        chunk_size: int,
    ) -> None:
        self.groups, self.missing, self.keys = groups, missing, keys
        self.compute, self.chunk_size = compute, chunk_size
        self.writers: dict[tuple[str | None, int], ShardWriter] = {}
        # each chunk image's row in the stage's shard (-1: the stage already has its code)
        self.rows: dict[tuple[str | None, int], np.ndarray] = {}
        self.next_chunk = 0  # the first chunk whose shards are not committed yet
        for group in groups.values():
            group.ensure_dir()

    def _open(self, stage: str | None, chunk: int, dim: int) -> None:
        positions = self.compute[chunk * self.chunk_size : (chunk + 1) * self.chunk_size]
        rows = np.full(len(positions), -1, dtype=np.int64)
        chunk_keys: list[bytes] = []
        for offset, position in enumerate(positions):
            if self.keys[position] in self.missing[stage]:
                rows[offset] = len(chunk_keys)
                chunk_keys.append(self.keys[position])
        self.rows[(stage, chunk)] = rows
        if chunk_keys:
            group = self.groups[stage]
            self.writers[(stage, chunk)] = ShardWriter(group.dir, group.digest, chunk_keys, dim)

    def store(self, stage: str | None, order: np.ndarray, values: np.ndarray) -> None:
        """Codes `values` of the images at `order` (indices into `compute`) for `stage`."""
        chunks = order // self.chunk_size
        for chunk in np.unique(chunks).tolist():
            if (stage, chunk) not in self.rows:
                self._open(stage, chunk, values.shape[1])
            mask = chunks == chunk
            rows = self.rows[(stage, chunk)][order[mask] - chunk * self.chunk_size]
            needed = rows >= 0
            if needed.any():
                self.writers[(stage, chunk)].set_rows(rows[needed], values[mask][needed])

    def commit_finished(self, done: int) -> None:
        """Publish every chunk whose images, the first `done` of `compute`, are all run."""
        total = len(self.compute)
        finished = -(-done // self.chunk_size) if done == total else done // self.chunk_size
        while self.next_chunk < finished:
            for stage, group in self.groups.items():
                writer = self.writers.pop((stage, self.next_chunk), None)
                writer = writer.without_unfilled_rows() if writer is not None else None
                if writer is None:
                    continue  # nothing missing here, or every image of the chunk unreadable
                exact = writer.keys == self.keys
                name = shard_name("list" if exact else "chunk", group.digest, writer.keys)
                group.add(writer.commit(name))
            self.next_chunk += 1

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


class _FromPixels(nn.Module):
    """uint8 (N, H, W, 3) pixels -> the extractor's codes: normalised here, a batch at a time
    in the extractor's threads (or inside the ONNX Runtime graph), and handed on channels-last
    when the extractor is."""

    def __init__(self, normalize: nn.Module, extractor: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.normalize, self.extractor, self.channels_last = normalize, extractor, channels_last

    def forward(self, pixels: torch.Tensor) -> Any:
        images = self.normalize(pixels)
        if self.channels_last and not torch.onnx.is_in_onnx_export():
            images = images.contiguous(memory_format=torch.channels_last)
        return self.extractor(images)


@dataclass
class _Run:
    """One pass of an extractor over some of `paths`; codes go to chunk shards or `memory`."""

    paths: list[Path]
    stages: list[str | None]
    transform: Transform
    view: View
    batch_size: int
    num_workers: int
    device: torch.device
    chunk_size: int
    channels_last: bool
    description: str
    runtime: str = "auto"  # "auto" or "torch"
    normalize: nn.Module | None = None  # the transform gives uint8 pixels: normalised in the pass
    hashes: list[str] | None = None
    keys: list[bytes] = field(default_factory=list)
    memory: dict[str | None, np.ndarray] = field(default_factory=dict)

    def execute(
        self, extractor: nn.Module, compute: list[int], writers: _ChunkWriters | None
    ) -> None:
        """Run the body over the images at `compute`. Unreadable images get no code; once every
        other image's codes are stored they are raised as one UnreadableImagesError."""
        work = self._working_copy(extractor)
        modes = {module: module.training for module in work.modules()}
        work.eval()
        unreadable: list[tuple[Path, str]] = []
        progress = progress_bar(total=len(compute), desc=self.description, unit="img", leave=False)
        forward: Forward | None = None  # torch or ONNX Runtime, chosen at the first batch
        try:
            with torch.inference_mode():
                for images, indices, bad in self._loader(compute):
                    progress.update(len(indices) + len(bad))
                    unreadable += self._unreadable(bad, compute)
                    if images is not None:
                        forward = forward or self._forward(work, images, len(compute))
                        self._store(
                            forward(self._to_device(images)), indices.numpy(), compute, writers
                        )
                    if writers is not None:
                        # The loader keeps order: every image up to this batch's last is done.
                        writers.commit_finished(1 + max([*indices.tolist(), *(b[1] for b in bad)]))
        finally:
            progress.close()
            if writers is not None:
                writers.abort()
            for module, mode in modes.items():
                module.train(mode)
        if unreadable:
            raise UnreadableImagesError(unreadable)

    def _working_copy(self, extractor: nn.Module) -> nn.Module:
        work = extractor
        if self.channels_last or _module_device(extractor) != self.device:
            # A private copy: the caller's model keeps its device and memory format
            # (safetensors refuses channels-last tensors).
            work = copy.deepcopy(extractor).to(self.device)
            work = work.to(memory_format=torch.channels_last) if self.channels_last else work
        if self.normalize is None:
            return work
        return _FromPixels(self.normalize.to(self.device), work, self.channels_last)

    def _forward(self, work: nn.Module, images: torch.Tensor, count: int) -> Forward:
        """ONNX Runtime for a CPU pass over enough images to pay for the export, else torch."""
        if self.runtime == "torch":
            return work
        forward = fastest_forward(work, self._to_device(images), count, self.device)
        if forward is not work:
            self.channels_last = False  # ONNX Runtime takes plain NCHW arrays
        return forward

    def _loader(self, compute: list[int]) -> DataLoader[_Item]:
        dataset = _ViewImages(
            [self.paths[i] for i in compute],
            [self.hashes[i] for i in compute] if self.hashes is not None else None,
            self.transform,
            self.view,
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # workers' base seed: leave the global RNG alone
            collate_fn=_collate,
        )

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.to(self.device, non_blocking=True)
        if self.normalize is not None:
            return batch  # (N, H, W, 3) pixels: _FromPixels sets the memory format
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def _unreadable(self, bad: list[_Item], compute: list[int]) -> list[tuple[Path, str]]:
        found = []
        for _image, index, status, reason in bad:
            path = self.paths[compute[index]]
            if status == _CHANGED:
                raise UserError(
                    f"{path}: the file changed while its codes were being computed; run again "
                    "once the dataset is no longer being written to"
                )
            found.append((path, reason))
        return found

    def _store(
        self,
        outputs: torch.Tensor | dict[str | None, torch.Tensor],
        order: np.ndarray,
        compute: list[int],
        writers: _ChunkWriters | None,
    ) -> None:
        if isinstance(outputs, torch.Tensor):
            if len(self.stages) != 1:
                raise TypeError("the extractor returns one tensor; pass one spec")
            outputs = {self.stages[0]: outputs}
        for stage in self.stages:
            values = outputs[stage].detach().float().cpu().numpy()
            if values.ndim != 2 or values.shape[0] != len(order):
                raise ValueError(f"codes must be (N, C), got {values.shape}")
            if writers is not None:
                writers.store(stage, order, values)
                continue
            if stage not in self.memory:
                self.memory[stage] = np.empty((len(self.paths), values.shape[1]), np.float32)
            self.memory[stage][np.asarray([compute[i] for i in order])] = values
