"""CNN codes: a frozen body's features, computed once per image and view, and kept on disk.

The classic fixed-feature-extractor loop runs the frozen body on every image every epoch. Here the
body runs once per image per view; the codes go to a content-addressed cache on disk, and heads
train on them in seconds.

Extraction
    `stage_feature_extractor` and `multi_stage_extractor` wrap a model so that a forward pass
    returns pooled codes (N, C): for a named stage, the stage's output feature map, global average
    pooled; for `None` ("top"), exactly the input of the final classifier layer (`backbone.head`),
    so `head(codes)` equals the full model's logits. Forward hooks capture the outputs and the pass
    stops as soon as the deepest one is captured, so later stages are never computed.

The cache
    Codes live under `root/v1/<backbone>/<group>/`, one directory per group: everything that
    determines a code except the image (backbone, weights label, a sha256 fingerprint of the
    body's actual tensors, stage, preprocessing, view, the transform's full repr, the torch /
    torchvision / Pillow versions and a hash of tlvision's image decoder). `group.json` there
    says what the group is. Within a group an entry's key is the sha256 of the image file's
    bytes, so a changed image, weights file, stage, transform or view is a different entry and a
    cached code is never stale; images are decoded from the very bytes that were hashed. Image
    hashes are remembered in a SQLite index keyed by (path, size, mtime_ns, ctime_ns, inode), so
    unchanged files are not read again to be hashed.

    A group holds immutable shard files (format below), each written to a temporary name and
    renamed into place, so a reader never sees half a shard and two runs sharing the cache need
    no lock (the worst case is both computing the same codes). Codes are read through np.memmap,
    so codes for more images than fit in memory work. Each shard has a checksummed header, keys
    and per-row CRC32s; a truncated or corrupt shard is reported once, deleted and its codes are
    recomputed, never used. Extraction writes `chunk-*` shards every `chunk_size` images (an
    interrupted run keeps what it finished), then one `list-*` shard holding exactly the requested
    images in order, which the next identical request maps and returns without copying (chunks
    it covers are then deleted). Undecodable images get no code and are reported together
    (UnreadableImagesError) after every other image's codes are stored.

Shard format (little endian)
    header, 128 bytes: magic b"TLVCODES", format version u32, dtype code u32 (1: float32),
        code size u32, reserved u32, count u64, group digest 32 bytes, CRC32 of the keys u32,
        CRC32 of the row checksums u32, CRC32 of the preceding header bytes u32, zero padding
    keys: count x 32 bytes, the sha256 of each image's bytes
    row checksums: count x u32, CRC32 of each row's float32 bytes
    zero padding to a multiple of 64 bytes, then codes: count x code size float32, row major
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import sqlite3
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tlvision.backbones import BackboneSpec
from tlvision.data import DatasetSplits, Preprocessing, build_transforms
from tlvision.errors import UserError
from tlvision.images import BadImageError, decode_image_rgb

FORMAT_VERSION = 1
TOP_LABEL = "top"  # how the top codes (stage None) are named in files, logs and tables
DEFAULT_CHUNK_SIZE = 4096  # images per chunk shard: what an interrupted extraction keeps
STALE_TEMPORARY_SECONDS = 24 * 3600

Log = Callable[[str], None]
Transform = Callable[[Image.Image], torch.Tensor]
Extract = Callable[[list[tuple[Path, int]]], dict[str | None, np.ndarray]]


def stage_label(stage: str | None) -> str:
    return TOP_LABEL if stage is None else stage


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/tlvision/features, or ~/.cache/tlvision/features."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tlvision" / "features"


# --------------------------------------------------------------------------------------------
# Extractors: images -> pooled codes, stopping after the deepest requested output
# --------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by a hook once every requested output is captured: the rest of the net is skipped."""


def _pool(output: Any) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"a stage output must be a tensor, got {type(output).__name__}")
    if output.ndim > 2:
        output = output.flatten(2).mean(dim=2)  # global average pool over the spatial dims
    return output.float()


def _stage_targets(
    model: nn.Module, backbone: BackboneSpec, stages: Sequence[str | None]
) -> tuple[tuple[str | None, str], ...]:
    """(stage, dotted module path) per requested stage; None means the head's input."""
    unique = tuple(dict.fromkeys(stages))
    if not unique:
        raise ValueError("ask for at least one stage (None for the top codes)")
    targets = []
    for stage in unique:
        path = backbone.head if stage is None else backbone.stage(stage).output
        model.get_submodule(path)  # fails early, naming the path, if the model does not fit
        targets.append((stage, path))
    return tuple(targets)


def run_to_stages(
    model: nn.Module, targets: Sequence[tuple[str | None, str]], images: torch.Tensor
) -> dict[str | None, torch.Tensor]:
    """Run `model` on `images` only as far as needed; return pooled codes per target stage.

    A stage's code is its output module's output, global average pooled; the top code (stage
    None) is the input of the head module, exactly as the head sees it.
    """
    captured: dict[str | None, torch.Tensor] = {}
    wanted = len(targets)
    handles = []

    def capture(stage: str | None, value: torch.Tensor) -> None:
        if stage not in captured:  # a module called twice: its first call is the stage's output
            captured[stage] = value
            if len(captured) == wanted:
                raise _StopForward

    try:
        for stage, path in targets:
            module = model.get_submodule(path)
            if stage is None:

                def pre_hook(_module: nn.Module, args: Any, stage: str | None = stage) -> None:
                    capture(stage, args[0].float())

                handles.append(module.register_forward_pre_hook(pre_hook))
            else:

                def hook(
                    _module: nn.Module, _args: Any, output: Any, stage: str | None = stage
                ) -> None:
                    capture(stage, _pool(output))

                handles.append(module.register_forward_hook(hook))
        with contextlib.suppress(_StopForward):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    missing = [stage_label(stage) for stage, _path in targets if stage not in captured]
    if missing:
        raise RuntimeError(f"the forward pass never reached stage(s) {', '.join(missing)}")
    return {stage: captured[stage] for stage, _path in targets}  # in the order asked for


def stage_feature_size(backbone: BackboneSpec, stage: str | None) -> int:
    """The size C of a stage's codes, found by a forward on the meta device (no compute)."""
    if stage is None:
        return backbone.feature_size
    with torch.device("meta"):
        meta = backbone.build()
    targets = ((stage, backbone.stage(stage).output),)
    codes = run_to_stages(meta.eval(), targets, torch.empty(1, 3, 64, 64, device="meta"))
    return int(codes[stage].shape[1])


def model_fingerprint(module: nn.Module, *, exclude: Sequence[str] = ()) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes, bytes) but `exclude`d
    module paths: the same weights give the same fingerprint in any process or memory format."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        if any(key == prefix or key.startswith(prefix + ".") for prefix in exclude):
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


class _CodesModule(nn.Module):
    def __init__(
        self, model: nn.Module, backbone: BackboneSpec, stages: Sequence[str | None]
    ) -> None:
        super().__init__()
        self.model = model
        self.backbone_name = backbone.name
        self.head_path = backbone.head
        self.targets = _stage_targets(model, backbone, stages)

    @property
    def stages(self) -> tuple[str | None, ...]:
        return tuple(stage for stage, _path in self.targets)

    def fingerprint(self) -> str:
        """The body's fingerprint: the head never changes a code, so it is left out."""
        return model_fingerprint(self.model, exclude=(self.head_path,))


class MultiStageExtractor(_CodesModule):
    """images -> {stage: (N, C) codes} for several stages in one forward pass."""

    def forward(self, images: torch.Tensor) -> dict[str | None, torch.Tensor]:
        return run_to_stages(self.model, self.targets, images)


class StageFeatureExtractor(_CodesModule):
    """images -> (N, C) codes of one stage (None: the top codes, the head's input)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return run_to_stages(self.model, self.targets, images)[self.targets[0][0]]


def stage_feature_extractor(
    model: nn.Module, backbone: BackboneSpec, stage_name: str | None
) -> StageFeatureExtractor:
    """A module mapping images to the pooled codes of `stage_name` (None: the head's input).

    It shares `model` (no copy); put the model in eval mode for codes (extract_codes does).
    """
    return StageFeatureExtractor(model, backbone, (stage_name,))


def multi_stage_extractor(
    model: nn.Module, backbone: BackboneSpec, stage_names: Sequence[str | None]
) -> MultiStageExtractor:
    """A module mapping images to {stage: pooled codes} for every named stage, in one pass."""
    return MultiStageExtractor(model, backbone, stage_names)


# --------------------------------------------------------------------------------------------
# Views and what a group of codes is
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """How an image becomes the tensor the body sees.

    `augment=None` is the val transform (resize, centre crop). `augment=k` is the k-th augmented
    train view: the train transform with torch's RNG seeded from (seed, k, the image's content
    hash), so the same image always gets the same crop and flip for that view, in any order,
    process or run; that is what makes augmented views cacheable.
    """

    augment: int | None = None
    seed: int = 0

    @property
    def name(self) -> str:
        return "val" if self.augment is None else f"train-aug-{self.augment}-seed-{self.seed}"

    @property
    def phase(self) -> str:
        return "val" if self.augment is None else "train"

    def image_seed(self, content_hash: str) -> int:
        digest = hashlib.sha256(f"{self.seed}:{self.augment}:{content_hash}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


VAL_VIEW = View()


def train_views(count: int, seed: int) -> tuple[View, ...]:
    """`count` augmented train views, reproducible from `seed`."""
    return tuple(View(augment=index, seed=seed) for index in range(count))


@dataclass(frozen=True)
class CodesSpec:
    """Everything that names a set of codes except the image and the body's exact tensors."""

    backbone: str
    weights: str  # the weights label (WeightsChoice.label)
    preprocessing: Preprocessing
    stage: str | None = None  # None: the top codes
    view: View = VAL_VIEW

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "weights": self.weights,
            "stage": stage_label(self.stage),
            "preprocessing": self.preprocessing.to_json(),
            "view": self.view.name,
        }


@functools.cache
def _decoding_identity() -> dict[str, str]:
    """What turns image bytes into the tensor the body sees, beyond the transform itself: the
    library versions, and tlvision's own decoder (EXIF orientation, alpha on white, ...)."""
    from tlvision import images

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "tlvision.images": hashlib.sha256(Path(images.__file__).read_bytes()).hexdigest()[:16],
    }


# --------------------------------------------------------------------------------------------
# Shards: immutable, checksummed, memory-mapped files of codes
# --------------------------------------------------------------------------------------------

_MAGIC = b"TLVCODES"
_DTYPE_FLOAT32 = 1
_HEADER = struct.Struct("<8sIIIIQ32sII")
_HEADER_SIZE = 128
_KEY_SIZE = 32
_ALIGN = 64


class CorruptShardError(Exception):
    """A shard file that fails a check: wrong size, magic, version, group or checksum."""


@dataclass(frozen=True)
class _Layout:
    count: int
    dim: int

    @property
    def keys_offset(self) -> int:
        return _HEADER_SIZE

    @property
    def sums_offset(self) -> int:
        return _HEADER_SIZE + self.count * _KEY_SIZE

    @property
    def codes_offset(self) -> int:
        end = self.sums_offset + self.count * 4
        return (end + _ALIGN - 1) // _ALIGN * _ALIGN

    @property
    def total(self) -> int:
        return self.codes_offset + self.count * self.dim * 4


def rows_per_block(dim: int, itemsize: int = 4, budget: int = 4 << 20) -> int:
    """How many rows of `dim` values fit a block of `budget` bytes: work on memory-mapped codes
    in blocks this size and memory use stays flat however many rows there are."""
    return max(1, budget // max(1, dim * itemsize))


def _keys_name(prefix: str, group_digest: bytes, keys: Sequence[bytes]) -> str:
    digest = hashlib.sha256(group_digest)
    for key in keys:
        digest.update(key)
    return f"{prefix}-{digest.hexdigest()[:40]}.codes"


@dataclass(eq=False)
class _Shard:
    """A shard that passed its header, size and key checks; rows are checked when first used."""

    path: Path
    keys: list[bytes]
    sums: np.ndarray  # uint32, one per row
    codes: np.ndarray  # (count, dim) float32, memory-mapped read-only
    checked: np.ndarray = field(init=False)  # bool per row: its CRC32 matched

    def __post_init__(self) -> None:
        self.checked = np.zeros(len(self.keys), dtype=bool)

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    def first_bad_row(self, rows: Iterable[int]) -> int | None:
        for row in rows:
            if self.checked[row]:
                continue
            if zlib.crc32(self.codes[row]) != int(self.sums[row]):
                return int(row)
            self.checked[row] = True
        return None


def _open_shard(path: Path, group_digest: bytes) -> _Shard:
    """Open and check a shard; FileNotFoundError if it vanished, CorruptShardError if bad."""
    with path.open("rb") as handle:
        header = handle.read(_HEADER_SIZE)
        if len(header) < _HEADER_SIZE:
            raise CorruptShardError(f"truncated header ({len(header)} of {_HEADER_SIZE} bytes)")
        magic, version, dtype, dim, _reserved, count, group, keys_crc, sums_crc = _HEADER.unpack(
            header[: _HEADER.size]
        )
        (header_crc,) = struct.unpack_from("<I", header, _HEADER.size)
        if magic != _MAGIC:
            raise CorruptShardError("not a tlvision codes file (bad magic)")
        if zlib.crc32(header[: _HEADER.size]) != header_crc:
            raise CorruptShardError("header checksum mismatch")
        if version != FORMAT_VERSION or dtype != _DTYPE_FLOAT32:
            raise CorruptShardError(f"format version {version}, dtype {dtype} not understood")
        if group != group_digest:
            raise CorruptShardError("belongs to another group of codes")
        if count < 1 or dim < 1:
            raise CorruptShardError(f"empty shape ({count} x {dim})")
        layout = _Layout(count, dim)
        size = os.fstat(handle.fileno()).st_size
        if size != layout.total:
            raise CorruptShardError(
                f"{size} bytes where its header promises {layout.total} (truncated or overwritten)"
            )
        keys_block = handle.read(count * _KEY_SIZE)
        sums_block = handle.read(count * 4)
        if zlib.crc32(keys_block) != keys_crc or zlib.crc32(sums_block) != sums_crc:
            raise CorruptShardError("key or row-checksum table checksum mismatch")
        codes = np.memmap(
            handle, dtype=np.float32, mode="r", offset=layout.codes_offset, shape=(count, dim)
        )
    keys = [keys_block[i : i + _KEY_SIZE] for i in range(0, len(keys_block), _KEY_SIZE)]
    sums = np.frombuffer(sums_block, dtype="<u4")
    return _Shard(path=path, keys=keys, sums=sums, codes=codes)


class _ShardWriter:
    """Fill a new shard row by row through a memory map; `commit` renames it into place."""

    def __init__(self, group_dir: Path, group_digest: bytes, keys: Sequence[bytes], dim: int):
        self.group_dir = group_dir
        self.group_digest = group_digest
        self.keys = list(keys)
        self.layout = _Layout(len(self.keys), dim)
        self.sums = np.zeros(len(self.keys), dtype="<u4")
        self.filled = np.zeros(len(self.keys), dtype=bool)
        self.temporary = group_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}.codes"
        group_dir.mkdir(parents=True, exist_ok=True)
        with self.temporary.open("wb") as handle:
            handle.truncate(self.layout.total)
        self.codes: np.memmap | None = np.memmap(
            self.temporary,
            dtype=np.float32,
            mode="r+",
            offset=self.layout.codes_offset,
            shape=(self.layout.count, dim),
        )

    def set_rows(self, rows: np.ndarray, values: np.ndarray) -> None:
        assert self.codes is not None
        values = np.ascontiguousarray(values, dtype=np.float32)
        self.codes[rows] = values
        for row, value in zip(rows.tolist(), values, strict=True):
            self.sums[row] = zlib.crc32(value)
        self.filled[rows] = True

    def without_unfilled_rows(self) -> _ShardWriter | None:
        """This writer if every row is filled; else a new one with just the filled rows (None
        if there are none), this one discarded."""
        if bool(self.filled.all()):
            return self
        assert self.codes is not None
        filled = np.flatnonzero(self.filled)
        replacement = None
        if len(filled):
            replacement = _ShardWriter(
                self.group_dir, self.group_digest, [self.keys[i] for i in filled], self.layout.dim
            )
            block = rows_per_block(self.layout.dim)
            for start in range(0, len(filled), block):
                rows = filled[start : start + block]
                replacement.set_rows(np.arange(start, start + len(rows)), self.codes[rows])
        self.abort()
        return replacement

    def commit(self, name: str) -> _Shard:
        assert self.codes is not None and bool(self.filled.all())
        self.codes.flush()
        self.codes = None  # drop our writable map before publishing
        keys_block = b"".join(self.keys)
        sums_block = self.sums.tobytes()
        header = _HEADER.pack(
            _MAGIC,
            FORMAT_VERSION,
            _DTYPE_FLOAT32,
            self.layout.dim,
            0,
            self.layout.count,
            self.group_digest,
            zlib.crc32(keys_block),
            zlib.crc32(sums_block),
        )
        header += struct.pack("<I", zlib.crc32(header))
        with self.temporary.open("r+b") as handle:
            handle.write(header.ljust(_HEADER_SIZE, b"\0"))
            handle.write(keys_block)
            handle.write(sums_block)
            handle.flush()
            os.fsync(handle.fileno())
        # Map the finished file before the rename: the map stays valid whatever another run does
        # to the name afterwards (replace it with an equal shard, or delete it as redundant).
        shard = _open_shard(self.temporary, self.group_digest)
        shard.checked[:] = True  # we computed these rows' checksums ourselves
        final = self.group_dir / name
        os.replace(self.temporary, final)
        shard.path = final
        return shard

    def abort(self) -> None:
        self.codes = None
        self.temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


class _Group:
    """One directory of shards: every code for one (body, stage, view, transform)."""

    def __init__(self, cache: FeatureCache, spec: CodesSpec, description: dict[str, Any]):
        self.cache = cache
        self.spec = spec
        text = json.dumps({"format_version": FORMAT_VERSION, **description}, sort_keys=True)
        self.digest = hashlib.sha256(text.encode()).digest()
        self.dir = cache.root / f"v{FORMAT_VERSION}" / spec.backbone / self.digest.hex()[:32]
        self.description = description
        self.shards: list[_Shard] = []
        self.index: dict[bytes, tuple[_Shard, int]] = {}

    def ensure_dir(self) -> None:
        if not (self.dir / "group.json").is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            temporary = self.dir / f".group.json.tmp-{os.getpid()}-{uuid.uuid4().hex}"
            temporary.write_text(json.dumps(self.description, indent=2, sort_keys=True) + "\n")
            os.replace(temporary, self.dir / "group.json")

    def _open(self, path: Path) -> _Shard | None:
        try:
            return _open_shard(path, self.digest)
        except FileNotFoundError:
            return None  # another run removed it between listing and opening
        except (CorruptShardError, OSError, ValueError) as error:
            self.discard(path, str(error))
            return None

    def discard(self, path: Path, reason: str) -> None:
        self.cache.report(f"feature cache: {path} is corrupt ({reason}); recomputing its codes")
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        self.shards = [shard for shard in self.shards if shard.path != path]
        self.index = {key: entry for key, entry in self.index.items() if entry[0].path != path}

    def exact(self, keys: Sequence[bytes]) -> np.ndarray | None:
        """The `list-*` shard holding exactly `keys` in order, fully checked, if there is one."""
        path = self.dir / _keys_name("list", self.digest, keys)
        if not path.is_file():
            return None
        shard = self._open(path)
        if shard is None:
            return None
        if shard.keys != list(keys):
            self.discard(path, "its keys are not the ones its name promises")
            return None
        bad = shard.first_bad_row(range(len(keys)))
        if bad is not None:
            self.discard(path, f"row {bad} fails its checksum")
            return None
        return shard.codes

    def load_index(self) -> None:
        self.shards, self.index = [], {}
        if not self.dir.is_dir():
            return
        now = time.time()
        for path in sorted(self.dir.iterdir()):
            if path.name.startswith(".tmp-"):
                try:  # left by a killed run; live writers touch theirs far more recently
                    if now - path.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                        path.unlink()
                except OSError:
                    pass
                continue
            if path.suffix != ".codes":
                continue
            shard = self._open(path)
            if shard is not None:
                self.add(shard)

    def add(self, shard: _Shard) -> None:
        self.shards.append(shard)
        for row, key in enumerate(shard.keys):
            self.index.setdefault(key, (shard, row))

    def resolve(self, needed: Iterable[bytes]) -> set[bytes]:
        """Check the rows that hold `needed` keys; return the keys with no valid row."""
        needed = list(dict.fromkeys(needed))
        while True:
            by_shard: dict[int, tuple[_Shard, list[int]]] = {}
            for key in needed:
                entry = self.index.get(key)
                if entry is not None:
                    by_shard.setdefault(id(entry[0]), (entry[0], []))[1].append(entry[1])
            for shard, rows in by_shard.values():
                bad = shard.first_bad_row(rows)
                if bad is not None:
                    self.discard(shard.path, f"row {bad} fails its checksum")
                    break
            else:
                return {key for key in needed if key not in self.index}
            # a shard was dropped: look the keys up again (another shard may hold them)
            kept = list(self.shards)
            self.shards, self.index = [], {}
            for shard in kept:
                self.add(shard)

    def gather(self, keys: Sequence[bytes], writer: _ShardWriter) -> None:
        """Copy the rows for `keys` (all in the index, already checked) into `writer`."""
        block = rows_per_block(writer.layout.dim)
        for start in range(0, len(keys), block):
            stop = min(len(keys), start + block)
            by_shard: dict[int, tuple[_Shard, list[int], list[int]]] = {}
            for position in range(start, stop):
                shard, row = self.index[keys[position]]
                entry = by_shard.setdefault(id(shard), (shard, [], []))
                entry[1].append(position)
                entry[2].append(row)
            for shard, positions, rows in by_shard.values():
                writer.set_rows(np.asarray(positions), shard.codes[np.asarray(rows)])

    def remove_redundant_chunks(self, covered: set[bytes]) -> None:
        """Delete chunk shards whose every key is in a list shard just written."""
        for shard in list(self.shards):
            if shard.path.name.startswith("chunk-") and covered.issuperset(shard.keys):
                # in use elsewhere (Windows) or read-only: harmless to keep
                with contextlib.suppress(OSError):
                    shard.path.unlink(missing_ok=True)


class FeatureCache:
    """The on-disk store of CNN codes (see the module docstring for the layout and format)."""

    def __init__(self, root: Path | str | None = None, *, log: Log | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.log: Log = log or _stderr_log
        self._reported: set[str] = set()

    def report(self, message: str) -> None:
        """Log a problem once per process, however often it is met."""
        if message not in self._reported:
            self._reported.add(message)
            self.log(message)

    @property
    def hash_index_path(self) -> Path:
        return self.root / "image-hashes.sqlite3"

    def _connect(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.hash_index_path, timeout=60)
        connection.execute(
            "CREATE TABLE IF NOT EXISTS image_hashes (path TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, sha256 TEXT)"
        )
        return connection

    def _known_hashes(self, paths: Sequence[str]) -> dict[str, tuple[int, int, int, int, str]]:
        known: dict[str, tuple[int, int, int, int, str]] = {}
        connection = self._connect()
        try:
            for start in range(0, len(paths), 500):
                batch = paths[start : start + 500]
                rows = connection.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, inode, sha256 FROM image_hashes "
                    f"WHERE path IN ({','.join('?' * len(batch))})",
                    batch,
                ).fetchall()
                for path, size, mtime_ns, ctime_ns, inode, digest in rows:
                    known[path] = (size, mtime_ns, ctime_ns, inode, digest)
        finally:
            connection.close()
        return known

    def _remember_hashes(self, rows: Sequence[tuple[str, int, int, int, int, str]]) -> None:
        connection = self._connect()
        try:
            with connection:
                connection.executemany(
                    "INSERT OR REPLACE INTO image_hashes VALUES (?, ?, ?, ?, ?, ?)", rows
                )
        finally:
            connection.close()

    def image_hashes(self, paths: Sequence[Path]) -> list[str]:
        """sha256 of each file's bytes, read only for files new or changed since last seen."""
        names = [os.path.abspath(path) for path in paths]
        stats = [os.stat(name) for name in names]
        try:
            known = self._known_hashes(sorted(set(names)))
        except sqlite3.Error as error:
            self.report(
                f"feature cache: image hash index {self.hash_index_path} unusable ({error}); "
                "hashing every image (delete the file to rebuild it)"
            )
            known = {}
        hashes: list[str] = []
        fresh: dict[str, tuple[str, int, int, int, int, str]] = {}
        todo = sum(
            1
            for name, stat in zip(names, stats, strict=True)
            if known.get(name, (None,))[:4]
            != (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        )
        progress = tqdm(
            total=todo,
            desc="hashing images",
            unit="img",
            leave=False,
            disable=None if todo > 1000 else True,
            file=sys.stderr,
        )
        with progress:
            for name, stat in zip(names, stats, strict=True):
                signature = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
                entry = known.get(name)
                if entry is not None and entry[:4] == signature:
                    hashes.append(entry[4])
                    continue
                if name in fresh:
                    hashes.append(fresh[name][5])
                    continue
                progress.update(1)
                try:
                    digest = _sha256_of(Path(name).read_bytes())
                except OSError:  # extraction reports it as unreadable; remember nothing
                    hashes.append(_sha256_of(f"unreadable file {name}".encode()))
                    continue
                fresh[name] = (name, *signature, digest)
                hashes.append(digest)
        if fresh:
            try:
                self._remember_hashes(list(fresh.values()))
            except sqlite3.Error as error:
                self.report(
                    f"feature cache: cannot update image hash index {self.hash_index_path} "
                    f"({error}); images will be hashed again next time"
                )
        return hashes

    def group(self, spec: CodesSpec, *, transform: str, fingerprint: str) -> _Group:
        description = {
            **spec.describe(),
            "transform": transform,
            "body_fingerprint": fingerprint,
            "decoding": _decoding_identity(),
        }
        return _Group(self, spec, description)


def _sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


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
        content_hash = _sha256_of(data)
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


def extract_codes_multi(
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
) -> dict[str | None, np.ndarray]:
    """Codes (N, C) for every spec's stage, from one pass of `extractor` over the images.

    All specs must share backbone, weights, preprocessing and view; they differ by stage.
    `extractor` returns a tensor (one spec) or {stage: tensor}. Only images with no valid cached
    code are run; with a cache the result is a read-only np.memmap, without one an array.
    """
    if not specs:
        raise ValueError("pass at least one CodesSpec")
    first = specs[0]
    if any((s.backbone, s.weights, s.preprocessing, s.view) != (
        first.backbone, first.weights, first.preprocessing, first.view
    ) for s in specs):  # fmt: skip
        raise ValueError("specs of one extraction pass may differ only by stage")
    stages = [spec.stage for spec in specs]
    if len(set(stages)) != len(stages):
        raise ValueError("each stage once, please")
    log = log or (cache.log if cache is not None else _stderr_log)
    view = first.view
    if transform is None:
        transform = build_transforms(first.preprocessing)[view.phase]
    paths = _paths_of(samples)
    count = len(paths)
    if count == 0:
        return {stage: np.zeros((0, 0), dtype=np.float32) for stage in stages}

    results: dict[str | None, np.ndarray] = {}
    groups: dict[str | None, _Group] = {}
    hashes: list[str] | None = None
    keys: list[bytes] = []
    if cache is not None:
        hashes = cache.image_hashes(paths)
        keys = [bytes.fromhex(digest) for digest in hashes]
        fingerprint = _fingerprint_of(extractor)
        transform_text = _describe_transform(transform)
        for spec in specs:
            group = cache.group(spec, transform=transform_text, fingerprint=fingerprint)
            groups[spec.stage] = group
            exact = group.exact(keys)
            if exact is not None:
                results[spec.stage] = exact
        if len(results) == len(specs):
            log(f"{description}: reused {count * len(specs)} cached codes from {cache.root}")
            return results

    # Which images must run: any image whose code is missing for some stage still to do.
    pending = [stage for stage in stages if stage not in results]
    missing: dict[str | None, set[bytes]] = {}
    if cache is not None:
        for stage in pending:
            groups[stage].load_index()
            missing[stage] = groups[stage].resolve(keys)
        all_missing = set().union(*missing.values())
        seen: set[bytes] = set()
        compute = []
        for position, key in enumerate(keys):
            if key in all_missing and key not in seen:
                seen.add(key)
                compute.append(position)
        reused = sum(count - sum(1 for key in keys if key in missing[s]) for s in pending)
        reused += count * (len(stages) - len(pending))
        if reused:
            log(
                f"{description}: reused {reused} cached codes from {cache.root}"
                + (f"; computing {len(compute)} images" if compute else "")
            )
        if compute and not reused:
            log(f"{description}: computing codes for {len(compute)} images into {cache.root}")
    else:
        compute = list(range(count))

    memory: dict[str | None, np.ndarray] = {}
    if compute:
        _run_extraction(
            extractor,
            paths,
            hashes,
            compute,
            keys=keys,
            groups={stage: groups[stage] for stage in pending} if cache is not None else None,
            missing=missing,
            memory=memory,
            transform=transform,
            view=view,
            batch_size=batch_size,
            num_workers=num_workers,
            device=torch.device(device),
            channels_last=channels_last,
            chunk_size=chunk_size,
            description=description,
            stages=pending,
        )
    if cache is None:
        return memory
    for stage in pending:
        results[stage] = _assemble(groups[stage], keys)
    return {stage: results[stage] for stage in stages}


def _assemble(group: _Group, keys: list[bytes]) -> np.ndarray:
    """The codes for `keys` in order: an existing exact shard, or a new `list-*` shard."""
    name = _keys_name("list", group.digest, keys)
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
    writer = _ShardWriter(group.dir, group.digest, keys, dim)
    try:
        group.gather(keys, writer)
        shard = writer.commit(name)
    except BaseException:
        writer.abort()
        raise
    group.add(shard)
    group.remove_redundant_chunks(set(keys))
    return shard.codes


def _run_extraction(
    extractor: nn.Module,
    paths: list[Path],
    hashes: list[str] | None,
    compute: list[int],
    *,
    keys: list[bytes],
    groups: dict[str | None, _Group] | None,
    missing: dict[str | None, set[bytes]],
    memory: dict[str | None, np.ndarray],
    transform: Transform,
    view: View,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    channels_last: bool | None,
    chunk_size: int,
    description: str,
    stages: list[str | None],
) -> None:
    """Run the body over the images at `compute`; write codes to chunk shards or to `memory`.

    Unreadable images get no code; once every other image's codes are written, they are
    raised as one UnreadableImagesError.
    """
    if channels_last is None:
        channels_last = device.type == "cpu"
    work = extractor
    if channels_last or _module_device(extractor) != device:
        # A private copy: the caller's model keeps its device and memory format (safetensors
        # refuses channels-last tensors).
        work = copy.deepcopy(extractor).to(device)
        if channels_last:
            work = work.to(memory_format=torch.channels_last)
    modes = {module: module.training for module in work.modules()}
    work.eval()

    dataset = _ViewImages(
        [paths[i] for i in compute],
        [hashes[i] for i in compute] if hashes is not None else None,
        transform,
        view,
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # workers' base seed: leave the global RNG alone
        collate_fn=_collate,
    )
    chunk_size = max(1, chunk_size)
    # Per (stage, chunk): the chunk's shard writer, and each chunk image's row in it (-1: that
    # stage already has the image's code).
    writers: dict[tuple[str | None, int], _ShardWriter] = {}
    rows_in_chunk: dict[tuple[str | None, int], np.ndarray] = {}
    unreadable: list[tuple[Path, str]] = []

    def chunk_plan(stage: str | None, chunk: int) -> tuple[np.ndarray, list[bytes]]:
        positions = compute[chunk * chunk_size : (chunk + 1) * chunk_size]
        rows = np.full(len(positions), -1, dtype=np.int64)
        chunk_keys: list[bytes] = []
        for offset, position in enumerate(positions):
            if keys[position] in missing[stage]:
                rows[offset] = len(chunk_keys)
                chunk_keys.append(keys[position])
        return rows, chunk_keys

    def store(stage: str | None, order: np.ndarray, values: np.ndarray) -> None:
        """Codes `values` of the images at `order` (indices into `compute`) for `stage`."""
        if groups is None:
            if stage not in memory:
                memory[stage] = np.empty((len(paths), values.shape[1]), np.float32)
            memory[stage][np.asarray([compute[i] for i in order])] = values
            return
        chunks = order // chunk_size
        for chunk in np.unique(chunks).tolist():
            mask = chunks == chunk
            plan_key = (stage, chunk)
            if plan_key not in rows_in_chunk:
                rows_in_chunk[plan_key], chunk_keys = chunk_plan(stage, chunk)
                if chunk_keys:
                    group = groups[stage]
                    writers[plan_key] = _ShardWriter(
                        group.dir, group.digest, chunk_keys, values.shape[1]
                    )
            rows = rows_in_chunk[plan_key][order[mask] - chunk * chunk_size]
            needed = rows >= 0
            if needed.any():
                writers[plan_key].set_rows(rows[needed], values[mask][needed])

    def commit_chunk(chunk: int) -> None:
        assert groups is not None
        for stage in stages:
            writer = writers.pop((stage, chunk), None)
            if writer is None:
                continue
            group = groups[stage]
            writer = writer.without_unfilled_rows()
            if writer is None:
                continue  # every image of the chunk was unreadable
            exact = writer.keys == keys
            name = _keys_name("list" if exact else "chunk", group.digest, writer.keys)
            group.add(writer.commit(name))

    next_chunk = 0  # the first chunk whose shards are not committed yet
    if groups is not None:
        for group in groups.values():
            group.ensure_dir()
    progress = tqdm(
        total=len(compute), desc=description, unit="img", leave=False, disable=None,
        file=sys.stderr,
    )  # fmt: skip
    try:
        with torch.inference_mode():
            for images, indices, bad in loader:
                progress.update(len(indices) + len(bad))
                for _image, index, status, reason in bad:
                    if status == _CHANGED:
                        raise UserError(
                            f"{paths[compute[index]]}: the file changed while its codes were "
                            "being computed; run again once the dataset is no longer being "
                            "written to"
                        )
                    unreadable.append((paths[compute[index]], reason))
                if images is not None:
                    batch = images.to(device, non_blocking=True)
                    if channels_last:
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    outputs = work(batch)
                    if isinstance(outputs, torch.Tensor):
                        if len(stages) != 1:
                            raise TypeError("the extractor returns one tensor; pass one spec")
                        outputs = {stages[0]: outputs}
                    order = indices.numpy()
                    for stage in stages:
                        values = outputs[stage].detach().float().cpu().numpy()
                        if values.ndim != 2 or values.shape[0] != len(order):
                            raise ValueError(f"codes must be (N, C), got {values.shape}")
                        store(stage, order, values)
                if groups is not None:
                    # The loader keeps order: every image up to this batch's last is done.
                    done = 1 + max([*indices.tolist(), *(item[1] for item in bad)])
                    finished = (
                        -(-done // chunk_size) if done == len(compute) else done // chunk_size
                    )
                    while next_chunk < finished:
                        commit_chunk(next_chunk)
                        next_chunk += 1
    finally:
        progress.close()
        for writer in writers.values():
            writer.abort()
        for module, mode in modes.items():
            module.train(mode)
    if unreadable:
        raise UnreadableImagesError(unreadable)


def extract_codes(
    extractor: nn.Module,
    samples: Sequence[Path] | Sequence[tuple[Path, int]],
    *,
    spec: CodesSpec,
    cache: FeatureCache | None,
    transform: Transform | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    channels_last: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    description: str = "codes",
    log: Log | None = None,
) -> np.ndarray:
    """Codes (N, C) of `samples` under `spec`, computing only those not validly cached.

    `extractor` maps an image batch to (N, C) codes (a `stage_feature_extractor`, or any module:
    its whole state dict is then fingerprinted). `transform` defaults to the preprocessing's
    transform for the view's phase. With a cache the result is a read-only np.memmap.
    """
    return extract_codes_multi(
        extractor,
        samples,
        specs=[spec],
        cache=cache,
        transform=transform,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        channels_last=channels_last,
        chunk_size=chunk_size,
        description=description,
        log=log,
    )[spec.stage]


def extract_stage_codes(
    model: nn.Module,
    backbone: BackboneSpec,
    stages: Sequence[str | None],
    samples: Sequence[Path] | Sequence[tuple[Path, int]],
    *,
    weights: str,
    preprocessing: Preprocessing,
    cache: FeatureCache | None,
    view: View = VAL_VIEW,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    channels_last: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    description: str = "codes",
    log: Log | None = None,
) -> dict[str | None, np.ndarray]:
    """{stage: (N, C) codes} for several stages of `model` from one pass over the images."""
    stages = list(dict.fromkeys(stages))
    extractor = multi_stage_extractor(model, backbone, stages)
    specs = [
        CodesSpec(backbone.name, weights, preprocessing, stage=stage, view=view) for stage in stages
    ]
    return extract_codes_multi(
        extractor,
        samples,
        specs=specs,
        cache=cache,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        channels_last=channels_last,
        chunk_size=chunk_size,
        description=description,
        log=log,
    )


@dataclass(frozen=True)
class SplitCodes:
    """One stage's codes for a dataset: train views and val, with their labels.

    `train_views[i]` is (N_train, C), row j the code of `train_samples[j]` under view i: the
    val transform first (when asked for), then the augmented views. Heads pick one view per
    image per epoch (`train_linear_head`) or stack them (`stacked_train`). Unreadable images
    are left out of `train_samples` / `val_samples` and listed in `skipped` as (path, reason).
    """

    stage: str | None
    train_views: tuple[np.ndarray, ...]
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    train_samples: tuple[tuple[Path, int], ...] = ()
    val_samples: tuple[tuple[Path, int], ...] = ()
    skipped: tuple[tuple[Path, str], ...] = ()

    def stacked_train(self) -> tuple[np.ndarray, np.ndarray]:
        """Every train view as rows of one array (in memory), with repeated labels."""
        codes = np.concatenate([np.asarray(view) for view in self.train_views])
        return codes, np.tile(self.train_labels, len(self.train_views))


def _readable_codes(
    samples: list[tuple[Path, int]],
    skipped: list[tuple[Path, str]],
    extract: Extract,
) -> tuple[list[tuple[Path, int]], dict[str | None, np.ndarray]]:
    """Codes of `samples`; unreadable ones are dropped (into `skipped`) and the rest, all
    computed and cached by the first call, read back."""
    try:
        return samples, extract(samples)
    except UnreadableImagesError as error:
        skipped.extend(error.images)
        bad = {path for path, _reason in error.images}
        samples = [sample for sample in samples if sample[0] not in bad]
        if not samples:
            raise
        return samples, extract(samples)


def extract_split_codes(
    model: nn.Module,
    backbone: BackboneSpec,
    splits: DatasetSplits,
    *,
    weights: str,
    preprocessing: Preprocessing,
    cache: FeatureCache | None,
    stages: Sequence[str | None] = (None,),
    augmented_views: int = 0,
    center_view: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    channels_last: bool | None = None,
    log: Log | None = None,
) -> dict[str | None, SplitCodes]:
    """Train and val codes for each stage: one pass per view (train: centre + augmented).

    Unreadable images are skipped, logged once and listed in each SplitCodes' `skipped`.
    """
    if augmented_views < 0 or (augmented_views == 0 and not center_view):
        raise UserError(
            "give the training set at least one view (--views 0 means centre crop only)"
        )
    log = log or (cache.log if cache is not None else _stderr_log)
    views = ([VAL_VIEW] if center_view else []) + list(train_views(augmented_views, seed))
    stages = list(dict.fromkeys(stages))
    common: dict[str, Any] = {
        "weights": weights,
        "preprocessing": preprocessing,
        "cache": cache,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "device": device,
        "channels_last": channels_last,
        "log": log,
    }

    def codes_for(view: View, phase: str) -> Extract:
        def extract(samples: list[tuple[Path, int]]) -> dict[str | None, np.ndarray]:
            description = f"{phase} codes ({view.name})"
            return extract_stage_codes(
                model, backbone, stages, samples, view=view, description=description, **common
            )

        return extract

    skipped: list[tuple[Path, str]] = []
    train_samples = list(splits.samples["train"])
    per_view = []
    for view in views:
        train_samples, codes = _readable_codes(train_samples, skipped, codes_for(view, "train"))
        per_view.append(codes)
    if any(len(codes[stages[0]]) != len(train_samples) for codes in per_view):
        # a file became unreadable between views: read every view again for the final list
        per_view = [codes_for(view, "train")(train_samples) for view in views]
    val_samples, val = _readable_codes(
        list(splits.samples["val"]), skipped, codes_for(VAL_VIEW, "val")
    )
    if skipped:
        log(
            f"skipped {len(skipped)} unreadable image(s): "
            + "; ".join(f"{path}: {reason}" for path, reason in skipped[:5])
            + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        )
    train_labels = np.asarray([label for _path, label in train_samples], dtype=np.int64)
    val_labels = np.asarray([label for _path, label in val_samples], dtype=np.int64)
    return {
        stage: SplitCodes(
            stage=stage,
            train_views=tuple(codes[stage] for codes in per_view),
            train_labels=train_labels,
            val=val[stage],
            val_labels=val_labels,
            train_samples=tuple(train_samples),
            val_samples=tuple(val_samples),
            skipped=tuple(skipped),
        )
        for stage in stages
    }
