"""Streaming batch prediction: one JSON line per image, unreadable ones included, in order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.predict import expand_image_paths
from tlvision.streaming import merge_parts, part_file
from tlvision.training import fit


@pytest.fixture
def trained_run(tiny_dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    fit(
        TrainConfig(
            data_dir=tiny_dataset, out_dir=out, strategy="finetune", weights="none",
            input_size=32, epochs=1, batch_size=8, num_workers=0,
        ),
        log=lambda _: None,
    )  # fmt: skip
    return out


def test_jsonl_has_one_line_per_image_in_order_with_errors(
    trained_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    folder = tiny_dataset / "val"
    (folder / "circles" / "empty.jpg").write_bytes(b"")
    (folder / "squares" / "text.png").write_text("not a picture")
    os.symlink(tmp_path / "gone.jpg", folder / "squares" / "dangling.jpg")
    expected = [str(path) for path in expand_image_paths([folder])]
    assert len(expected) == 8 + 3

    jsonl = tmp_path / "predictions.jsonl"
    status = main(
        ["predict", str(trained_run), str(folder), "--jsonl", str(jsonl), "--batch-size", "3",
         "--workers", "2"]
    )  # fmt: skip
    assert status == 1  # some files could not be read
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["path"] for line in lines] == expected
    errors = {Path(line["path"]).name for line in lines if "error" in line}
    assert errors == {"empty.jpg", "text.png", "dangling.jpg"}
    for line in lines:
        if "error" not in line:
            assert line["class"] in {"circles", "squares"} and 0 < line["probability"] <= 1


def test_rank_parts_merge_back_into_input_order(tmp_path: Path) -> None:
    """What rank 0 does under torchrun: batch k of the input came from rank k % world_size."""
    jsonl, batch, world = tmp_path / "out.jsonl", 2, 3
    lines = [f'{{"n": {n}}}\n' for n in range(11)]
    for rank in range(world):
        mine = [line for n, line in enumerate(lines) if (n // batch) % world == rank]
        part_file(jsonl, rank).write_text("".join(mine))
    merge_parts(jsonl, world, batch)
    assert jsonl.read_text() == "".join(lines)
    assert not list(tmp_path.glob("out.jsonl.rank*"))
