"""`train --exclude FILE`: a run leaves out the files a list or an audit.json names, records them
in summary.json and its report, and leaves val alone unless asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import write_dataset

import tlvision
from tlvision.cli import main
from tlvision.data.exclusions import exclude_files, read_exclusions
from tlvision.data.layouts import find_splits
from tlvision.errors import UserError

CLASSES = ("circles", "squares", "stripes")
QUICK: dict[str, Any] = {"epochs": 1, "input_size": 64, "batch_size": 8, "device": "cpu"}


def test_a_list_leaves_train_files_out_and_val_alone(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", CLASSES, {"train": 6, "val": 3})
    listed = tmp_path / "flagged.txt"
    listed.write_text(
        "# from a review\ntrain/circles/circles_0.jpg\n"
        f"{data / 'train' / 'squares' / 'squares_1.jpg'}\n\nval/stripes/stripes_2.jpg\n"
        "train/circles/gone.jpg\n"
    )
    run = tlvision.train(data, out=tmp_path / "run", exclude=listed, **QUICK)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_images"] == 16 and summary["val_images"] == 9
    excluded = summary["excluded"]
    assert excluded["files"] == {
        "train": ["train/circles/circles_0.jpg", "train/squares/squares_1.jpg"],
        "val": [],
    }
    assert excluded["not_found"] == 1  # the one that is gone (the val file is there, left in)
    assert excluded["held_out_too"] is False
    page = run.report().read_text()
    assert 'id="excluded"' in page and "train/circles/circles_0.jpg" in page
    assert 'id="excluded-val"' not in page
    audited = tlvision.audit(data, run=tmp_path / "run").to_json()  # the run's network and size
    assert (audited["backbone"], audited["input_size"]) == ("mobilenet_v2", 64)


def test_held_out_files_only_when_asked_and_the_run_says_so(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", CLASSES, {"train": 6, "val": 3})
    listed = tmp_path / "flagged.txt"
    listed.write_text("val/stripes/stripes_2.jpg\ntrain/circles/circles_0.jpg\n")
    messages: list[str] = []
    tlvision.train(
        data, out=tmp_path / "run", exclude=listed, exclude_held_out=True, log=messages.append,
        **QUICK,
    )  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_images"] == 8 and summary["excluded"]["counts"] == {"train": 1, "val": 1}
    assert any("val accuracy is inflated" in message for message in messages)
    page = tlvision.load(tmp_path / "run").report().read_text()
    assert 'id="excluded-val"' in page


def test_an_audit_json_is_read_by_its_sections(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", CLASSES, {"train": 6, "val": 3})
    audit = {
        "label_issues": [{"file": "train/circles/circles_1.jpg", "split": "train"}],
        "duplicates": [
            {"files": ["train/squares/squares_0.jpg", "val/squares/squares_0.jpg"],
             "splits": ["train", "val"]},
            {"files": ["train/stripes/stripes_0.jpg", "train/stripes/stripes_3.jpg"],
             "splits": ["train", "train"]},
        ],
        "outliers": [{"file": "train/stripes/stripes_5.jpg", "score": 9.0},
                     {"file": "train/stripes/stripes_4.jpg", "score": 1.0}],
        "outlier_min_score": 3.0,
    }  # fmt: skip
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(audit))
    assert read_exclusions(path, data).files == {"train/circles/circles_1.jpg"}
    every = read_exclusions(path, data, "label_issues,duplicates,outliers").files
    assert every == {
        "train/circles/circles_1.jpg", "train/squares/squares_0.jpg",
        "train/stripes/stripes_3.jpg", "train/stripes/stripes_5.jpg",
    }  # fmt: skip
    splits, record = exclude_files(find_splits(data), read_exclusions(path, data, "duplicates"))
    assert len(splits.samples["train"]) == 16 and len(splits.samples["val"]) == 9
    assert record.left_out["train"] == [
        "train/squares/squares_0.jpg",
        "train/stripes/stripes_3.jpg",
    ]


def test_bad_exclusion_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_dataset(tmp_path / "data", CLASSES, {"train": 2, "val": 1})
    with pytest.raises(UserError, match="no such file"):
        read_exclusions(tmp_path / "missing.txt", data)
    broken = tmp_path / "audit.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_exclusions(broken, data)
    broken.write_text('{"label_issues": []}')
    with pytest.raises(UserError, match="choose among label_issues, duplicates, outliers"):
        read_exclusions(broken, data, "labels")
    with pytest.raises(UserError, match=r"not an audit.json \(no duplicates\)"):
        read_exclusions(broken, data, "duplicates")
    every = tmp_path / "all.txt"
    every.write_text("train/circles/circles_0.jpg\ntrain/circles/circles_1.jpg\n")
    argv = ["train", str(data), "--exclude", str(every), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "leaves no images in train/circles" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
