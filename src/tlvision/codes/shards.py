"""Shards: immutable, checksummed, memory-mapped files of CNN codes.

A shard is written to a temporary name and renamed into place, so a reader never sees half a
shard and two runs sharing a cache need no lock. Codes are read through np.memmap, so codes for
more images than fit in memory work. Each shard has a checksummed header, keys and per-row
CRC32s; a reader checks the header, sizes and key table on opening and each row before first
use, so a truncated or corrupt shard is detected, never used.

Format (little endian)
    header, 128 bytes: magic b"TLVCODES", format version u32, dtype code u32 (1: float32),
        code size u32, reserved u32, count u64, group digest 32 bytes, CRC32 of the keys u32,
        CRC32 of the row checksums u32, CRC32 of the preceding header bytes u32, zero padding
    keys: count x 32 bytes, the sha256 of each image's bytes
    row checksums: count x u32, CRC32 of each row's float32 bytes
    zero padding to a multiple of 64 bytes, then codes: count x code size float32, row major
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlvision.errors import writing

CACHE_FULL = (
    "run again with --cache-dir on a disk with space, or with --no-cache (codes in memory only)"
)

FORMAT_VERSION = 1

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


def shard_name(prefix: str, group_digest: bytes, keys: Sequence[bytes]) -> str:
    digest = hashlib.sha256(group_digest)
    for key in keys:
        digest.update(key)
    return f"{prefix}-{digest.hexdigest()[:40]}.codes"


@dataclass(eq=False)
class Shard:
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


def open_shard(path: Path, group_digest: bytes) -> Shard:
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
    return Shard(path=path, keys=keys, sums=sums, codes=codes)


class ShardWriter:
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
        with (
            writing(group_dir / "codes shard", needed=self.layout.total,
                    temporary=self.temporary, then=CACHE_FULL),
            self.temporary.open("wb") as handle,
        ):  # fmt: skip
            handle.truncate(self.layout.total)
            # the blocks reserved now: a full disk is an error here, not a crash (SIGBUS) when
            # the memory map writes into a sparse file's hole
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, self.layout.total)
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

    def without_unfilled_rows(self) -> ShardWriter | None:
        """This writer if every row is filled; else a new one with just the filled rows (None
        if there are none), this one discarded."""
        if bool(self.filled.all()):
            return self
        assert self.codes is not None
        filled = np.flatnonzero(self.filled)
        replacement = None
        if len(filled):
            replacement = ShardWriter(
                self.group_dir, self.group_digest, [self.keys[i] for i in filled], self.layout.dim
            )
            block = rows_per_block(self.layout.dim)
            for start in range(0, len(filled), block):
                rows = filled[start : start + block]
                replacement.set_rows(np.arange(start, start + len(rows)), self.codes[rows])
        self.abort()
        return replacement

    def commit(self, name: str) -> Shard:
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
        shard = open_shard(self.temporary, self.group_digest)
        shard.checked[:] = True  # we computed these rows' checksums ourselves
        final = self.group_dir / name
        os.replace(self.temporary, final)
        shard.path = final
        return shard

    def abort(self) -> None:
        self.codes = None
        self.temporary.unlink(missing_ok=True)
