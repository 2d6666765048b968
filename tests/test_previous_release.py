"""Run directories written by the previous release (b77e5e8) keep working.

tests/fixtures/previous_release/<run>/ holds the small files that release's `tlvision train`
wrote on the embedded demo set (see the README there), with its absolute paths replaced by
{DATA}, {RUN} and {CACHE}. The weights are not kept: each test run directory gets a
model.safetensors built here, with the tensor names, dtypes and shapes the old release saved
(model_tensors.json, read from its files) and seeded random values. Everything is then
checked through the public interfaces only (tlvision.load, Run, tlvision.cli.main), so the
test holds whatever the package looks like inside.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import save_file

import tlvision
from tlvision.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "previous_release"
OLD_RUNS = ("feature-extract", "linear-probe-stage3", "finetune")
RUN_FILES = ("model.json", "summary.json", "metrics.jsonl", "config.toml", "run_config.json")
CLASSES = ["fish", "monument", "tool"]
VAL_IMAGES = 27  # the demo set's val/: 9 per class (train/ has 51)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# mobilenet_v2's stage3 (b77e5e8 backbones.py): features.7 to features.13, 96 channels.
STAGE3_LAST_BLOCK = 13
STAGE3_CHANNELS = 96


def fill(text: str, placeholders: dict[str, Path]) -> str:
    """The fixture text with each {NAME} replaced by its path, escaped as a JSON string (TOML
    basic strings escape the same way)."""
    for name, path in placeholders.items():
        text = text.replace("{" + name + "}", json.dumps(str(path))[1:-1])
    return text


def copy_fixture(name: str, destination: Path, placeholders: dict[str, Path]) -> None:
    destination.mkdir(parents=True)
    for file_name in RUN_FILES:
        source = FIXTURES / name / file_name
        if source.is_file():
            (destination / file_name).write_text(fill(source.read_text(), placeholders))


def old_state_dict(model_json: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors b77e5e8's checkpoint.build_architecture network holds, seeded random values:
    a torchvision model with its classifier.1 replaced, or (a linear probe on a stage) the
    StageClassifier: `body.` + the full model's names up to the stage, and `head`."""
    assert model_json["backbone"] == "mobilenet_v2"
    classes = len(model_json["classes"])
    model = torchvision.models.mobilenet_v2(weights=None)
    model.classifier[1] = torch.nn.Linear(model.last_channel, classes)
    state = model.state_dict()
    if model_json.get("stage"):
        assert model_json["stage"] == "stage3"
        state = {
            f"body.{key}": tensor
            for key, tensor in state.items()
            if key.startswith("features.") and int(key.split(".")[1]) <= STAGE3_LAST_BLOCK
        }
        state["head.weight"] = torch.empty(classes, STAGE3_CHANNELS)
        state["head.bias"] = torch.empty(classes)
    # He (fan-in) normal weights and BatchNorm at the identity keep the activations near unit
    # scale through the network, so the logits differ between images and classes (torchvision's
    # own initialisation shrinks them to ~1e-8 in eval mode).
    generator = torch.Generator().manual_seed(0)
    values: dict[str, torch.Tensor] = {}
    for key in sorted(state):
        tensor = state[key]
        if not tensor.is_floating_point():
            values[key] = torch.zeros_like(tensor)  # num_batches_tracked
        elif tensor.ndim >= 2:
            fan_in = tensor[0].numel()
            values[key] = torch.randn(tensor.shape, generator=generator) * math.sqrt(2 / fan_in)
        elif key.endswith("running_var"):
            values[key] = torch.ones_like(tensor)
        elif key.endswith("running_mean"):
            values[key] = torch.zeros_like(tensor)
        elif key.endswith(".weight"):
            values[key] = 1 + 0.1 * torch.randn(tensor.shape, generator=generator)
        else:
            values[key] = 0.1 * torch.randn(tensor.shape, generator=generator)
    return values


def tensor_layout(path: Path) -> dict[str, str]:
    """{name: "F32[3,1280]"} of a safetensors file, as model_tensors.json records them."""
    with safe_open(str(path), "pt") as weights:
        layout = {}
        for key in sorted(weights.keys()):
            tensor = weights.get_slice(key)
            layout[key] = f"{tensor.get_dtype()}[{','.join(map(str, tensor.get_shape()))}]"
        return layout


def demo_val_images() -> list[Path]:
    val = tlvision.demo_data_dir() / "val"
    return sorted(path for path in val.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)


@pytest.fixture(scope="module", params=OLD_RUNS)
def old_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as the previous release left it: its files, and weights of its layout."""
    name = request.param
    root = tmp_path_factory.mktemp(f"previous-{name}")
    run_dir = root / "run"
    placeholders = {"DATA": tlvision.demo_data_dir(), "RUN": run_dir, "CACHE": root / "cache"}
    copy_fixture(name, run_dir, placeholders)
    model_json = json.loads((run_dir / "model.json").read_text())
    save_file(old_state_dict(model_json), str(run_dir / "model.safetensors"))
    layouts = json.loads((FIXTURES / "model_tensors.json").read_text())
    assert tensor_layout(run_dir / "model.safetensors") == layouts[name]
    return run_dir


def test_fixtures_hold_no_machine_paths() -> None:
    for name in OLD_RUNS:
        assert (FIXTURES / name / "model.json").is_file()
        for file_name in RUN_FILES:
            path = FIXTURES / name / file_name
            text = path.read_text() if path.is_file() else ""
            # Every path in a fixture is a placeholder ("{DATA}/train"), never an absolute one.
            assert re.findall(r'"(/[^"]*)"', text) == [], path


def test_load_gives_classes_and_summary(old_run: Path) -> None:
    run = tlvision.load(old_run)
    assert run.classes == CLASSES
    assert run.summary["classes"] == CLASSES
    assert run.summary["backbone"] == "mobilenet_v2"
    assert run.summary["strategy"] == run.model_info["strategy"]
    assert run.summary["val_images"] == VAL_IMAGES
    assert run.metrics and run.metrics[-1]["epoch"] == len(run.metrics)
    assert run.final_val_acc == run.metrics[-1]["val_acc"]
    assert 0.0 <= run.summary["best_val_acc"] <= 1.0


def test_predict_gives_one_of_the_classes(old_run: Path) -> None:
    image = demo_val_images()[0]
    [prediction] = tlvision.load(old_run).predict(image, top_k=3)
    assert prediction.error is None
    assert prediction.top[0][0] in CLASSES
    assert sorted(name for name, _ in prediction.top) == CLASSES
    assert math.isclose(sum(probability for _, probability in prediction.top), 1.0, rel_tol=1e-4)


def test_evaluate_counts_every_val_image(old_run: Path) -> None:
    assert len(demo_val_images()) == VAL_IMAGES
    report = tlvision.load(old_run).evaluate(tlvision.demo_data_dir() / "val")
    assert report.total == VAL_IMAGES
    assert not report.skipped_files
    assert 0.0 <= report.accuracy <= 1.0
    assert list(report.class_names) == CLASSES


def test_cli_predict_prints_json(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = demo_val_images()[0]
    capsys.readouterr()
    assert main(["predict", str(old_run), str(image), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    [record] = printed if isinstance(printed, list) else [printed]
    assert record["class"] in CLASSES
    assert Path(record["path"]).name == image.name


def test_cli_report_names_the_classes(old_run: Path) -> None:
    assert main(["report", str(old_run)]) == 0
    page = (old_run / "report.html").read_text()
    for name in CLASSES:
        assert name in page


def test_cli_export_onnx_passes_its_parity_check(
    old_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["export", str(old_run), "--format", "onnx", "--json"]) == 0
    sidecar = json.loads(capsys.readouterr().out)
    assert (old_run / "export" / sidecar["file"]).is_file()
    assert sidecar["classes"] == CLASSES
    assert sidecar["parity"]["images"] >= VAL_IMAGES
    assert sidecar["parity"]["top1_agreement"] == 1.0
    assert sidecar["parity"]["max_abs_logit_difference"] <= sidecar["parity"]["tolerance"]
    # The exported file answers as the torch model does.
    image = demo_val_images()[-1]
    [by_torch] = tlvision.load(old_run).predict(image, runtime="torch")
    [by_onnx] = tlvision.load(old_run).predict(image, runtime="onnx")
    assert by_onnx.top[0][0] == by_torch.top[0][0]
    assert math.isclose(by_onnx.top[0][1], by_torch.top[0][1], abs_tol=1e-4)


def test_old_config_trains_again(tmp_path: Path) -> None:
    """The previous release's config.toml (finetune) is read by `train --config`."""
    out = tmp_path / "trained"
    placeholders = {
        "DATA": tlvision.demo_data_dir(),
        "RUN": tmp_path / "not-written",  # --out wins over the config's out_dir
        "CACHE": tmp_path / "cache",
    }
    config = tmp_path / "config.toml"
    config.write_text(fill((FIXTURES / "finetune" / "config.toml").read_text(), placeholders))
    arguments = ["train", "--config", str(config), "--epochs", "1", "--out", str(out)]
    assert main([*arguments, "--no-report"]) == 0  # report: test_cli_report_names_the_classes
    assert not placeholders["RUN"].exists()
    run = tlvision.load(out)
    assert run.classes == CLASSES
    assert run.summary["strategy"] == "finetune"
    assert run.summary["train_images"] == 51 and run.summary["val_images"] == VAL_IMAGES
    assert len(run.metrics) == 1
    assert 0.0 <= run.final_val_acc <= 1.0
    trained_with = run.model_info["config"]
    assert Path(trained_with["data_dir"]) == tlvision.demo_data_dir()
    for key in ("freeze_until", "views", "batchnorm", "backbone_lr_mult", "seed"):
        old_value = json.loads((FIXTURES / "finetune" / "model.json").read_text())["config"][key]
        assert trained_with[key] == old_value, key
    assert (out / "model.safetensors").is_file()


def test_reject_names_the_fix_then_calibrate_and_label_next_work(
    old_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(old_run, run)
    image = str(demo_val_images()[0])
    capsys.readouterr()
    assert main(["predict", str(run), image, "--json", "--reject", "auto"]) == 2
    assert f"run `tlvision calibrate {run}`" in capsys.readouterr().err
    assert main(["calibrate", str(run)]) == 0
    assert "rejection.json" in capsys.readouterr().out
    assert main(["predict", str(run), image, "--json", "--reject", "auto"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert isinstance(row["unknown"], bool) and math.isfinite(row["ood_score"])
    pool = str(tlvision.demo_data_dir() / "val")
    assert main(["label-next", str(run), pool, "-n", "3", "--json", "--out", str(tmp_path)]) == 0
    # (the seeded random weights here make every code nearly the same: few distinct picks)
    picks = json.loads(capsys.readouterr().out)["picks"]
    assert len(picks) <= 3 and all(pick["predicted"] in CLASSES for pick in picks)
