"""Awkward file names end to end: names that are not valid UTF-8, and broken symbolic links.

Every command runs through `tlvision.cli.main` under capsys, whose stream is strict UTF-8 like
stdout in an en_US.UTF-8 locale: a name printed raw would raise UnicodeEncodeError there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import make_image

from tlvision.cli import main

FAST = ["--weights", "none", "--input-size", "48", "--epochs", "1", "--workers", "0"]
CLASS_FOLDER = b"b\xe4r"  # "bär" written in Latin-1 by an old system: not valid UTF-8


def bytes_path(folder: Path, name: bytes) -> Path:
    """The path of a file whose name is raw bytes, as Python spells it (os.fsdecode)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def write_awkward_dataset(root: Path) -> dict[str, Path]:
    """A flat dataset (so val_split.json is written) with a Latin-1 class folder, a good and a
    truncated image with non-UTF-8 names, and a dangling `x.jpg` link."""
    for class_name, folder in (("circles", b"circles"), ("stripes", CLASS_FOLDER)):
        directory = bytes_path(root, folder)
        directory.mkdir(parents=True)
        for index in range(6):
            make_image(class_name, index).save(directory / f"{class_name}_{index}.jpg")
    good = bytes_path(root / "circles", b"circle_\xff.jpg")
    make_image("circles", 99).save(good, format="JPEG")
    broken = bytes_path(bytes_path(root, CLASS_FOLDER), b"cut_\xfd.jpg")
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    link = root / "circles" / "x.jpg"
    link.symlink_to(root / "gone.jpg")
    return {"good": good, "broken": broken, "link": link}


def run_json(arguments: list[str], capsys: pytest.CaptureFixture[str], status: int = 0) -> object:
    assert main([*arguments, "--json"]) == status
    return json.loads(capsys.readouterr().out)


def test_awkward_names_through_check_train_predict_and_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    files = write_awkward_dataset(data)
    report = run_json(["check", str(data)], capsys, status=1)
    assert isinstance(report, dict)
    problems = {Path(problem["path"]): problem["kind"] for problem in report["problems"]}
    assert problems == {files["broken"]: "truncated", files["link"]: "broken-link"}

    run = tmp_path / "run"  # finetune: the route that keeps no CNN-codes index
    assert main(["train", str(data), "--strategy", "finetune", "--out", str(run), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "cut_\\udcfd.jpg: truncated image data" in printed
    assert "x.jpg: broken symbolic link" in printed
    summary = json.loads((run / "summary.json").read_text())
    assert [Path(entry["path"]) for entry in summary["skipped_files"]] == sorted(
        [files["broken"], files["link"]]
    )
    val_files = [
        Path(name) for name in json.loads((run / "val_split.json").read_text())["val_files"]
    ]
    assert val_files and all(path.is_file() for path in val_files)
    classes = json.loads((run / "model.json").read_text())["classes"]
    assert [os.fsencode(name) for name in classes] == [CLASS_FOLDER, b"circles"]

    predictions = run_json(["predict", str(run), str(data)], capsys, status=1)
    assert isinstance(predictions, list)
    by_path = {Path(entry["path"]): entry for entry in predictions}
    assert by_path[files["good"]]["class"] in classes
    assert "broken symbolic link" in by_path[files["link"]]["error"]
    assert by_path[files["broken"]]["error"] == "truncated image data"
    assert main(["predict", str(run), str(data)]) == 1
    assert "circle_\\udcff.jpg: " in capsys.readouterr().out

    evaluation = run_json(["evaluate", str(run), str(data)], capsys)
    assert isinstance(evaluation, dict)
    assert {Path(name) for name in evaluation["skipped_files"]} == {files["broken"], files["link"]}
    assert main(["evaluate", str(run), str(data)]) == 0
    assert "b\\udce4r" in capsys.readouterr().out


def test_awkward_names_through_the_codes_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    files = write_awkward_dataset(data)
    run = tmp_path / "run"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    arguments = ["train", str(data), "--strategy", "feature-extract", "--out", str(run)]
    assert main([*arguments, *cache, *FAST]) == 0
    capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    assert {Path(entry["path"]) for entry in summary["skipped_files"]} == {
        files["broken"],
        files["link"],
    }
    report = run_json(["check", str(data)], capsys, status=1)
    assert isinstance(report, dict) and report["problem_counts"] == {
        "truncated": 1,
        "broken-link": 1,
    }
    predictions = run_json(["predict", str(run), str(files["good"])], capsys)
    assert isinstance(predictions, list) and Path(predictions[0]["path"]) == files["good"]


def test_a_broken_link_is_listed_among_skipped_files_on_the_codes_route(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tiny_dataset / "train" / "squares" / "x.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    run = tmp_path / "run"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["train", str(tiny_dataset), "--out", str(run), *cache, *FAST]) == 0
    assert f"{link}: broken symbolic link" in capsys.readouterr().out
    [skipped] = json.loads((run / "summary.json").read_text())["skipped_files"]
    assert skipped == {
        "path": str(link),
        "reason": f"broken symbolic link: its target {tmp_path / 'gone.jpg'} does not exist",
    }
    assert json.loads((run / "summary.json").read_text())["train_images"] == 16
