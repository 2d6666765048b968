"""The CNN-codes cache: a content-addressed store of codes on disk, shared between runs.

Codes live under `root/v1/<backbone>/<group>/`, one directory per group: everything that
determines a code except the image (backbone, weights label, a sha256 fingerprint of the body's
actual tensors, stage, preprocessing, view, the transform's full repr, the torch / torchvision /
Pillow versions and a hash of tlvision's image decoder). `group.json` there says what the group
is. Within a group an entry's key is the sha256 of the image file's bytes, so a changed image,
weights file, stage, transform or view is a different entry and a cached code is never stale.
Image hashes are remembered in a SQLite index keyed by the file's path (as bytes, so any file
name works) and (size, mtime_ns, ctime_ns, inode), so unchanged files are not read again.

A group holds immutable shard files (`codes_shards`). A corrupt shard is reported once, deleted
and its codes are recomputed, never used. `chunk-*` shards hold what an extraction finished so
far; a `list-*` shard holds exactly one requested list of images in order, which the next
identical request maps and returns without copying.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision

from tlvision.codes.shards import (
    CACHE_FULL,
    FORMAT_VERSION,
    CorruptShardError,
    Shard,
    ShardWriter,
    open_shard,
    rows_per_block,
    shard_name,
)
from tlvision.data.preprocessing import Preprocessing
from tlvision.errors import writing
from tlvision.models.stages import stage_label
from tlvision.progress import progress_bar

STALE_TEMPORARY_SECONDS = 24 * 3600

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/tlvision/features, or ~/.cache/tlvision/features."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tlvision" / "features"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    def label(self) -> str:
        """What the logs and bars call it (`name` is its cache key)."""
        return "centre crop" if self.augment is None else f"augmented view {self.augment + 1}"

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
    from tlvision.data import images

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "tlvision.data.images": hashlib.sha256(Path(images.__file__).read_bytes()).hexdigest()[:16],
    }


class CodesGroup:
    """One directory of shards: every code for one (body, stage, view, transform), or the rows
    of one named per-image computation (FeatureCache.named_group)."""

    def __init__(self, cache: FeatureCache, folder: str, description: dict[str, Any]):
        self.cache = cache
        text = json.dumps({"format_version": FORMAT_VERSION, **description}, sort_keys=True)
        self.digest = hashlib.sha256(text.encode()).digest()
        self.dir = cache.root / f"v{FORMAT_VERSION}" / folder / self.digest.hex()[:32]
        self.description = description
        self.shards: list[Shard] = []
        self.index: dict[bytes, tuple[Shard, int]] = {}

    def ensure_dir(self) -> None:
        if not (self.dir / "group.json").is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            temporary = self.dir / f".group.json.tmp-{os.getpid()}-{uuid.uuid4().hex}"
            text = json.dumps(self.description, indent=2, sort_keys=True) + "\n"
            with writing(
                self.dir / "group.json", needed=len(text), temporary=temporary, then=CACHE_FULL
            ):
                temporary.write_text(text)
            os.replace(temporary, self.dir / "group.json")

    def _open(self, path: Path) -> Shard | None:
        try:
            return open_shard(path, self.digest)
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
        path = self.dir / shard_name("list", self.digest, keys)
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

    def add(self, shard: Shard) -> None:
        self.shards.append(shard)
        for row, key in enumerate(shard.keys):
            self.index.setdefault(key, (shard, row))

    def resolve(self, needed: Iterable[bytes]) -> set[bytes]:
        """Check the rows that hold `needed` keys; return the keys with no valid row."""
        needed = list(dict.fromkeys(needed))
        while True:
            by_shard: dict[int, tuple[Shard, list[int]]] = {}
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

    def gather(self, keys: Sequence[bytes], writer: ShardWriter) -> None:
        """Copy the rows for `keys` (all in the index, already checked) into `writer`."""
        block = rows_per_block(writer.layout.dim)
        for start in range(0, len(keys), block):
            stop = min(len(keys), start + block)
            by_shard: dict[int, tuple[Shard, list[int], list[int]]] = {}
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
        self.log: Log = log or stderr_log
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
        # Paths are stored as bytes (os.fsencode): a file name need not be valid UTF-8. (An
        # older index's text paths never match a bytes key: those files are hashed once more.)
        connection.execute(
            "CREATE TABLE IF NOT EXISTS image_hashes (path BLOB PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, sha256 TEXT)"
        )
        return connection

    def _known_hashes(self, names: Sequence[str]) -> dict[str, tuple[int, int, int, int, str]]:
        known: dict[str, tuple[int, int, int, int, str]] = {}
        connection = self._connect()
        try:
            for start in range(0, len(names), 500):
                batch = [os.fsencode(name) for name in names[start : start + 500]]
                rows = connection.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, inode, sha256 FROM image_hashes "
                    f"WHERE path IN ({','.join('?' * len(batch))})",
                    batch,
                ).fetchall()
                for path, size, mtime_ns, ctime_ns, inode, digest in rows:
                    known[os.fsdecode(path)] = (size, mtime_ns, ctime_ns, inode, digest)
        finally:
            connection.close()
        return known

    def _remember_hashes(self, rows: Sequence[tuple[str, int, int, int, int, str]]) -> None:
        connection = self._connect()
        try:
            with connection:
                connection.executemany(
                    "INSERT OR REPLACE INTO image_hashes VALUES (?, ?, ?, ?, ?, ?)",
                    [(os.fsencode(name), *rest) for name, *rest in rows],
                )
        finally:
            connection.close()

    def _signatures(self, names: Sequence[str]) -> dict[str, tuple[int, int, int, int, str]]:
        """The index's entries for `names`; an unusable index is reported and bypassed."""
        try:
            return self._known_hashes(sorted(set(names)))
        except sqlite3.Error as error:
            self.report(
                f"feature cache: image hash index {self.hash_index_path} unusable ({error}); "
                "hashing every image (delete the file to rebuild it)"
            )
            return {}

    def image_hashes(self, paths: Sequence[Path]) -> list[str]:
        """sha256 of each file's bytes, read only for files new or changed since last seen.

        A file that cannot be read (gone, a dangling link) gets a hash of its name: extraction
        then reports it as unreadable; nothing about it is remembered.
        """
        names = [os.path.abspath(path) for path in paths]
        known = self._signatures(names)
        hashes: list[str] = []
        fresh: dict[str, tuple[str, int, int, int, int, str]] = {}
        progress = progress_bar(
            total=len(names), desc="hashing images", unit="img", leave=False,
            disable=None if len(names) - len(known) > 1000 else True,
        )  # fmt: skip
        with progress:
            for name in names:
                progress.update(1)
                try:
                    stat = os.stat(name)
                    signature = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
                    entry = known.get(name)
                    if entry is not None and entry[:4] == signature:
                        hashes.append(entry[4])
                    elif name in fresh:
                        hashes.append(fresh[name][5])
                    else:
                        digest = sha256_hex(Path(name).read_bytes())
                        fresh[name] = (name, *signature, digest)
                        hashes.append(digest)
                except OSError:  # extraction reports it as unreadable; remember nothing
                    hashes.append(sha256_hex(f"unreadable file {name}".encode(errors="replace")))
        if fresh:
            try:
                self._remember_hashes(list(fresh.values()))
            except sqlite3.Error as error:
                self.report(
                    f"feature cache: cannot update image hash index {self.hash_index_path} "
                    f"({error}); images will be hashed again next time"
                )
        return hashes

    def group(self, spec: CodesSpec, *, transform: str, fingerprint: str) -> CodesGroup:
        description = {
            **spec.describe(),
            "transform": transform,
            "body_fingerprint": fingerprint,
            "decoding": _decoding_identity(),
        }
        return CodesGroup(self, spec.backbone, description)

    def named_group(self, folder: str, description: dict[str, Any]) -> CodesGroup:
        """Rows of another per-image computation (not a body's codes), one group per
        `description`: the audit's thumbnails (tlvision.auditor.thumbnails)."""
        return CodesGroup(self, folder, {**description, "decoding": _decoding_identity()})
