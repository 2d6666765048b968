"""`tlvision label-next RUN POOL -n K`: the pool's images a person should label next."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlvision.errors import UserError
from tlvision.inference.multilabel import is_multi_label
from tlvision.inference.sources import expand_image_paths
from tlvision.jsonio import keep, read_kept
from tlvision.labelling.outputs import (
    Suggestion,
    ranked_classes,
    write_contact_sheet,
    write_csv,
)
from tlvision.labelling.pool import cache_root, coding_parts, pool_codes
from tlvision.labelling.selection import (
    TYPICAL_NEIGHBOURS,
    TYPICAL_SAMPLE,
    Neighbourhood,
    neighbourhood,
    normalised,
    select,
)
from tlvision.runs.reader import load_run_model, run_splits

LABEL_NEXT_DIR = "label-next"  # under the run directory, unless --out says otherwise
NEIGHBOURHOOD_DIR = "label-next-neighbourhood"  # under the codes cache: each pool's, by its codes
TOP_CLASSES = 3


@dataclass(frozen=True)
class LabelNext:
    suggestions: tuple[Suggestion, ...]  # most useful first
    unreadable: tuple[tuple[Path, str], ...]  # pool files that could not be decoded, skipped
    pool_images: int  # readable pool images ranked
    csv: Path
    sheet: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "picks": [item.to_json() for item in self.suggestions],
            "unreadable": [{"file": str(path), "reason": why} for path, why in self.unreadable],
            "pool_images": self.pool_images,
            "csv": str(self.csv),
            "contact_sheet": str(self.sheet),
        }


def pool_neighbourhood(codes: np.ndarray, remember_in: Path | None) -> Neighbourhood:
    """selection.neighbourhood of the pool's codes, kept in `remember_in` under what decides it
    (the codes, the neighbour count and sample size, the function's bytecode), so label-next
    over the same pool again reads it back instead of comparing every pool image with 4,096
    others (0.93 s of a 5.9 s warm label-next over 10,000 images; benchmarks/RESULTS.md)."""
    pool = normalised(codes)
    if remember_in is None:
        return neighbourhood(pool)
    digest = hashlib.sha256(np.ascontiguousarray(pool, dtype=np.float32).tobytes())
    digest.update(repr(pool.shape).encode())
    code = neighbourhood.__code__  # its bytecode and constants: always there, unlike its source
    context = [
        TYPICAL_NEIGHBOURS, TYPICAL_SAMPLE, code.co_code.hex(), repr(code.co_consts),
        np.__version__,  # its seeded sample of a large pool is numpy's generator's
    ]  # fmt: skip
    digest.update(json.dumps(context).encode())
    path = remember_in / f"{digest.hexdigest()[:32]}.json"
    kept = read_kept(
        path,
        lambda document: Neighbourhood(
            np.asarray(document["typicality"], np.float64),
            np.asarray(document["nearest"], np.int64).reshape(len(pool), -1),
        ),
    )
    if kept is not None and _fits(kept, len(pool)):
        return kept
    found = neighbourhood(pool)
    flat = found.nearest.ravel().tolist()  # one flat list: read back in 30 ms, not 60-90 ms
    keep(path, {"typicality": found.typicality.tolist(), "nearest": flat})
    return found


def _fits(kept: Neighbourhood, images: int) -> bool:
    """A kept neighbourhood that can stand for this pool's (a damaged file may not)."""
    nearest = kept.nearest
    in_range = nearest.size == 0 or (nearest.min() >= 0 and nearest.max() < images)
    return kept.typicality.shape == (images,) and bool(in_range)


def label_next(
    run_dir: Path,
    pool: Sequence[Path],
    count: int,
    *,
    out_dir: Path | None = None,
    data_dir: Path | None = None,
    device: torch.device | None = None,
) -> LabelNext:
    """Rank the pool (files and folders, read recursively) and write the CSV and contact sheet
    into `out_dir` (default RUN/label-next/)."""
    if count < 1:
        raise UserError(f"-n {count}: ask for at least 1 image")
    device = device or torch.device("cpu")
    paths = expand_image_paths(pool)
    if not paths:
        raise UserError("the pool holds no images; pass image files or folders of them")
    loaded = load_run_model(run_dir)
    if is_multi_label(loaded.metadata):
        raise UserError(
            f"{run_dir}: a multi-label model; label-next ranks by one class per image and does "
            "not rank for multi-label models. Pass a single-label run"
        )
    parts = coding_parts(loaded)  # once for the pool's codes and the train codes
    found = pool_codes(loaded, paths, device=device, progress="pool codes", parts=parts)
    if not found.paths:
        raise UserError(f"none of the {len(paths)} pool files can be read; see `tlvision check`")
    if count > len(found.paths):
        raise UserError(
            f"-n {count}: the pool has only {len(found.paths)} readable images; pass -n "
            f"{len(found.paths)} or fewer"
        )
    splits = run_splits(loaded.metadata, data_dir)
    train = [path for path, _label in splits.samples["train"]]
    labelled = pool_codes(loaded, train, device=device, progress="train codes", parts=parts)
    root = cache_root(loaded)
    around = pool_neighbourhood(found.codes, None if root is None else root / NEIGHBOURHOOD_DIR)
    picks = select(found.codes, found.probabilities, labelled.codes, count, around=around)
    suggestions = tuple(
        Suggestion(
            file=found.paths[pick.index],
            score=pick.score,
            top=ranked_classes(found.probabilities[pick.index], loaded.class_names, TOP_CLASSES),
        )
        for pick in picks
    )
    out_dir = out_dir or run_dir / LABEL_NEXT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, sheet = out_dir / "label-next.csv", out_dir / "label-next.html"
    write_csv(suggestions, csv_path)
    write_contact_sheet(suggestions, sheet, csv_path)
    return LabelNext(suggestions, found.unreadable, len(found.paths), csv_path, sheet)
