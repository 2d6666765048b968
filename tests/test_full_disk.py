"""A full disk (issue 26), on a real small filesystem (tmpfs; needs root, skipped otherwise):
each write says in one line where, how much and what to do, keeps the file it would have
replaced, and a training run stopped by it resumes once space is freed."""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_dataset

from tlvision.cli import main
from tlvision.runs.layout import TRAINING_CHECKPOINT
from tlvision.training.checkpoint import load_training_checkpoint

FAST = [
    "--weights", "none", "--input-size", "32", "--batch-size", "4", "--workers", "0",
    "--device", "cpu", "--no-report",
]  # fmt: skip
FINETUNE = ["--strategy", "finetune", "--no-cache", *FAST]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount_point)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def resize(mount_point: Path, size: int) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(mount_point)], check=True, capture_output=True
    )


def fill(mount_point: Path) -> None:
    """Take every byte the filesystem has left."""
    with (mount_point / "filler").open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
            handle.truncate(handle.tell())


def one_line_about_space(error: str, directory: Path, name: str, *, sized: bool = True) -> str:
    lines = [line for line in error.strip().splitlines() if line.startswith("tlvision: error:")]
    assert len(lines) == 1 and "Traceback" not in error, error
    assert lines[0].startswith(f"tlvision: error: {directory}: no space left on the device to "
                               f"write {name}"), lines[0]  # fmt: skip
    assert ("needs about" in lines[0]) is sized and "free)" in lines[0]
    return lines[0]


def test_a_full_disk_stops_the_run_in_one_line_and_resume_continues_it(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data")
    measured = tmp_path / "measured"
    assert main(["train", str(data), "--out", str(measured), *FINETUNE, "--epochs", "1"]) == 0
    checkpoint_size = (measured / TRAINING_CHECKPOINT).stat().st_size
    # room for epoch 1's checkpoint, not for epoch 2's written beside it before the swap
    resize(small_disk, int(1.5 * checkpoint_size))
    run = small_disk / "run"
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(run), *FINETUNE, "--epochs", "3"]) == 2
    line = one_line_about_space(capsys.readouterr().err, run, TRAINING_CHECKPOINT)
    assert line.endswith(f"then continue the run with `tlvision train --resume {run}`")
    assert load_training_checkpoint(run).epoch == 1  # the last good one, whole
    assert sorted(path.name for path in run.iterdir() if path.name.startswith(".")) == []

    resize(small_disk, 8 * checkpoint_size)  # space freed
    assert main(["train", "--resume", str(run)]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in metrics] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["resumed_from_epoch"] == 1


def test_a_run_stopped_while_saving_its_model_resumes_by_saving_it(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data")
    measured = tmp_path / "measured"
    assert main(["train", str(data), "--out", str(measured), *FINETUNE, "--epochs", "1"]) == 0
    checkpoint_size = (measured / TRAINING_CHECKPOINT).stat().st_size
    model_size = (measured / "model.safetensors").stat().st_size
    resize(small_disk, checkpoint_size + model_size // 2)  # the checkpoint fits, not the model
    run = small_disk / "run"
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(run), *FINETUNE, "--epochs", "1"]) == 2
    one_line_about_space(capsys.readouterr().err, run, "model.safetensors")
    assert load_training_checkpoint(run).epoch == 1 and not (run / "summary.json").exists()

    resize(small_disk, 4 * checkpoint_size)
    assert main(["train", "--resume", str(run)]) == 0
    assert "its 1 epoch(s) are done; saving its model" in capsys.readouterr().out
    assert (run / "model.safetensors").is_file() and (run / "summary.json").is_file()


def test_report_export_predict_and_the_codes_cache_on_a_full_disk(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data", per_class={"train": 12, "val": 6})  # 36: parity
    resize(small_disk, 64 << 20)
    run = small_disk / "run"
    assert main(["train", str(data), "--out", str(run), *FAST, "--no-cache", "--epochs", "2"]) == 0
    (run / "report.html").write_text("the previous report")
    fill(small_disk)
    capsys.readouterr()

    assert main(["report", str(run)]) == 2
    line = one_line_about_space(capsys.readouterr().err, run, "report.html")
    assert line.endswith(f"write it with `tlvision report {run}`")
    assert (run / "report.html").read_text() == "the previous report"

    assert main(["export", str(run)]) == 2
    error = capsys.readouterr().err
    one_line_about_space(error, run / "export", "model.onnx")
    assert "--format" not in error
    assert not any((run / "export").iterdir())

    image = next((data / "val" / "circles").iterdir())
    assert main(["predict", str(run), str(image), "--jsonl", str(small_disk / "p.jsonl")]) == 2
    # a stream: its size is not known before it is written
    line = one_line_about_space(capsys.readouterr().err, small_disk, "p.jsonl", sized=False)
    assert "it holds the lines written before the disk filled" in line

    cache = small_disk / "cache"
    out = tmp_path / "cached-run"
    assert main(["train", str(data), "--out", str(out), *FAST, "--cache-dir", str(cache)]) == 2
    line = capsys.readouterr().err.strip()
    assert "no space left on the device" in line and str(cache) in line
    assert "--no-cache" in line and len(line.splitlines()) == 1


def test_a_kept_shortcut_on_a_full_disk_is_skipped_and_computed_again(small_disk: Path) -> None:
    """The values kept only to save time (the audit's C, label-next's typicality, the runtime
    choice) all go through jsonio.keep: a full disk there is no error, leaves no file behind,
    and the value is kept once space is freed."""
    from tlvision.jsonio import keep, read_kept

    path = small_disk / "kept" / "choice.json"
    fill(small_disk)
    keep(path, {"values": list(range(5000))})
    assert read_kept(path, lambda document: document["values"]) is None
    assert [p.name for p in path.parent.iterdir()] == []  # no half-written temporary left
    (small_disk / "filler").unlink()
    keep(path, {"values": list(range(5000))})
    assert read_kept(path, lambda document: len(document["values"])) == 5000
    path.write_text('{"values": ')  # damaged: read as absent
    assert read_kept(path, lambda document: document["values"]) is None
    path.write_text('{"other": 1}')  # not what the reader expects: absent too
    assert read_kept(path, lambda document: document["values"]) is None
