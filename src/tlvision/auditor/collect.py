"""Every image's codes for the audit: train, val and (when there is one) test, one pass through
the codes cache (the centre view, as val is read), unreadable images left out and listed."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlvision.auditor.thumbnails import thumbnails_of
from tlvision.auditor.transforms import CALIBRATION_IMAGES, write_transformed_copies
from tlvision.codes.cache import FeatureCache, default_cache_dir
from tlvision.codes.split_codes import SplitCodes, extract_split_codes
from tlvision.compute.devices import resolve_device
from tlvision.config import DEFAULT_BACKBONE
from tlvision.data.layouts import DatasetSplits, find_splits, scan_split
from tlvision.data.loading import default_num_workers
from tlvision.errors import UserError
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights, create_model, preprocessing_for

Log = Callable[[str], None]
TEST_SPLIT = "test"


@dataclass(frozen=True)
class CodesSource:
    """Which network reads the images: a backbone, its weights and the input size."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    input_size: int | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    device: str = "auto"
    batch_size: int = 32


@dataclass(frozen=True)
class AuditCodes:
    """The images of a dataset in one list: row i of `codes` is `files[i]` of `splits[i]`,
    labelled `labels[i]` (an index into `class_names`)."""

    root: Path
    class_names: tuple[str, ...]
    files: tuple[Path, ...]
    splits: tuple[str, ...]
    labels: np.ndarray
    codes: np.ndarray
    unreadable: tuple[tuple[Path, str], ...]
    backbone: str
    weights: str
    input_size: int
    calibration: tuple[tuple[int, str], ...] = ()
    """(row of the original, transform) of each row of `calibration_codes`."""
    calibration_codes: np.ndarray | None = None
    thumbnails: np.ndarray | None = None
    """(rows, VIEWS, SIZE * SIZE) thumbnails of each image's views (tlvision.auditor.thumbnails)."""
    calibration_thumbnails: np.ndarray | None = None

    def relative(self, index: int) -> str:
        """The file's path relative to DATA, with forward slashes."""
        return self.files[index].relative_to(self.root).as_posix()

    def in_split(self, split: str) -> np.ndarray:
        return np.asarray([each == split for each in self.splits], dtype=bool)


def collect_codes(
    data_dir: Path,
    source: CodesSource,
    *,
    val_split: float | None = None,
    seed: int = 0,
    log: Log,
) -> AuditCodes:
    """The codes of every readable image of DATA's train, val and test splits."""
    splits = find_splits(data_dir, val_split=val_split, seed=seed)
    if splits.multi_label:
        raise UserError(
            f"{data_dir}: multi-label labels (CSV tables); the audit ranks label issues for one "
            "class per image and does not audit multi-label data. `tlvision check` still lists "
            "unreadable files and bad rows"
        )
    test = _test_samples(data_dir, splits)
    backbone = get_backbone(source.backbone)
    weights = choose_weights(backbone, source.weights)
    preprocessing = preprocessing_for(backbone, weights, input_size=source.input_size)
    cache = _cache(source, log)
    with tempfile.TemporaryDirectory(prefix="tlvision-audit-") as scratch:
        copies = write_transformed_copies(
            [path for path, _label in splits.samples["train"]], Path(scratch),
            count=CALIBRATION_IMAGES, seed=seed,
        )  # fmt: skip
        labelled_copies = [(copy, 0) for copy, _original, _name in copies]
        # every image in one pass (one ONNX export, one set of loader workers): train, val,
        # test and the calibration copies all take the centre view, as val does
        merged = DatasetSplits(
            root=splits.root, class_names=splits.class_names,
            samples={"train": [*splits.samples["train"], *splits.samples["val"], *test,
                               *labelled_copies], "val": []},
        )  # fmt: skip
        codes = extract_split_codes(
            create_model(backbone, len(splits.class_names), weights), backbone, merged,
            weights=weights.label, preprocessing=preprocessing, cache=cache,
            batch_size=source.batch_size, num_workers=default_num_workers(),
            device=resolve_device(source.device), log=log, phase_names=("audit", "val"),
        )[None]  # fmt: skip
        log("audit: thumbnails for the pixel duplicate signal")
        return _assembled(splits, codes, test, copies, backbone.name, weights.label,
                          preprocessing.crop_size, cache)  # fmt: skip


def _split_of(splits: DatasetSplits, test: list[tuple[Path, int]]) -> dict[Path, str]:
    return {
        path: split
        for split, samples in (("train", splits.samples["train"]),
                               ("val", splits.samples["val"]), (TEST_SPLIT, test))
        for path, _label in samples
    }  # fmt: skip


def _assembled(
    splits: DatasetSplits,
    codes: SplitCodes,
    test: list[tuple[Path, int]],
    copies: list[tuple[Path, Path, str]],
    backbone: str,
    weights: str,
    input_size: int,
    cache: FeatureCache | None,
) -> AuditCodes:
    """The dataset's rows in one list (train, val, test), the calibration copies' rows apart,
    with their thumbnails (the copies must still be there; thumbnails cached beside the codes)."""
    split_of = _split_of(splits, test)
    copy_of = {copy: (original, name) for copy, original, name in copies}
    every = np.asarray(codes.train_views[0])
    is_copy = np.asarray([path in copy_of for path, _label in codes.train_samples], dtype=bool)
    samples = [sample for sample in codes.train_samples if sample[0] not in copy_of]
    row_of = {path: row for row, (path, _label) in enumerate(samples)}
    copied = [path for path, _label in codes.train_samples if path in copy_of]
    keep_copy = np.asarray([copy_of[path][0] in row_of for path in copied], dtype=bool)
    kept_copies = [path for path, keep in zip(copied, keep_copy.tolist(), strict=True) if keep]
    return AuditCodes(
        root=splits.root,
        class_names=splits.class_names,
        files=tuple(path for path, _label in samples),
        splits=tuple(split_of[path] for path, _label in samples),
        labels=np.asarray([label for _path, label in samples], dtype=np.int64),
        codes=every[~is_copy],
        unreadable=tuple(item for item in codes.skipped if item[0] not in copy_of),
        backbone=backbone,
        weights=weights,
        input_size=input_size,
        calibration=tuple((row_of[copy_of[path][0]], copy_of[path][1]) for path in kept_copies),
        calibration_codes=every[is_copy][keep_copy],
        thumbnails=thumbnails_of([path for path, _label in samples], cache),
        calibration_thumbnails=thumbnails_of(kept_copies, cache),
    )


def _cache(source: CodesSource, log: Log) -> FeatureCache | None:
    if not source.use_cache:
        return None
    return FeatureCache(source.cache_dir or default_cache_dir(), log=log)


def _test_samples(data_dir: Path, splits: DatasetSplits) -> list[tuple[Path, int]]:
    """DATA/test's images under train's class names (classes it lacks are left out)."""
    test_dir = data_dir / TEST_SPLIT
    if splits.layout != "split" or not test_dir.is_dir():
        return []
    present = [name for name in splits.class_names if (test_dir / name).is_dir()]
    samples, _broken = scan_split(test_dir, present)
    index_of = {name: splits.class_names.index(name) for name in present}
    return [(path, index_of[present[label]]) for path, label in samples]


def file_digests(files: Sequence[Path]) -> list[str]:
    """SHA-256 of each file's bytes (read, never written)."""
    digests = []
    for path in files:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digests.append(digest.hexdigest())
    return digests
