"""Export round trips with the parity check, on small real-image runs with real weights.

TorchScript and the export command's refusals need only torch; the ONNX tests need the export
extra (onnx, onnxscript, onnxruntime) and skip one by one without it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import predict_with_torch, write_dataset

from tlvision.cli import main
from tlvision.codes.runtime_choice import choices_dir
from tlvision.config import TrainConfig
from tlvision.data.images import load_rgb_image
from tlvision.data.transforms import prepare_pixels
from tlvision.errors import UserError
from tlvision.export.exporter import (
    ExportRequest,
    export_is_current,
    export_model,
    parity_failure,
    sidecar_path,
)
from tlvision.export.parity import ParityReport
from tlvision.inference.runtime import export_path, open_classifier
from tlvision.runs.reader import load_run_model
from tlvision.training.fit import fit

STRATEGIES = {
    "feature-extract": {},
    "linear-probe": {"stage": "stage2"},
    "finetune": {},
}


@pytest.fixture(scope="module")
def export_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 16 val images a class: the parity check's 32 all come from val.
    root = tmp_path_factory.mktemp("export-data")
    return write_dataset(root, per_class={"train": 6, "val": 16})


@pytest.fixture(scope="module")
def runs(export_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One run per strategy, 1 epoch, real mobilenet_v2 ImageNet weights, 64 px inputs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    made = {}
    for strategy, options in STRATEGIES.items():
        out = tmp_path_factory.mktemp("runs") / strategy
        config = TrainConfig(
            data_dir=export_data,
            out_dir=out,
            strategy=strategy,
            input_size=64,
            epochs=1,
            batch_size=8,
            num_workers=0,
            device="cpu",
            **options,  # type: ignore[arg-type]
        )
        fit(config, log=lambda _message: None)
        made[strategy] = out
    yield made
    torch.set_num_threads(threads)


def val_images(data: Path) -> list[Path]:
    return sorted((data / "val").rglob("*.jpg"))


def needs_onnx() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module, reason="the ONNX export needs tlvision[export]")


def predict_probabilities(run: Path, paths: list[Path]) -> np.ndarray:
    loaded = load_run_model(run)
    predictions = predict_with_torch(loaded, paths, top_k=len(loaded.class_names))
    return np.array([[dict(p.top)[name] for name in loaded.class_names] for p in predictions])


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_onnx_export_round_trip_matches_predict(
    strategy: str, runs: dict[str, Path], export_data: Path
) -> None:
    needs_onnx()
    import onnxruntime

    run = runs[strategy]
    document = export_model(ExportRequest(run_dir=run, format="onnx"))
    out = run / "export" / "model.onnx"
    assert out.is_file() and export_is_current(out, run)
    parity = document["parity"]
    assert parity["images"] >= 32 and parity["top1_agreement"] == 1.0
    assert parity["max_abs_logit_difference"] <= 1e-4
    assert document["input"]["layout"] == "NHWC" and document["input"]["dtype"] == "uint8"
    assert document["classes"] == ["circles", "squares"] and document["strategy"] == strategy
    assert json.loads(sidecar_path(out).read_text()) == document

    # A client of the file alone: uint8 pixels in (any batch size), probabilities as predict's.
    paths = val_images(export_data)[:5]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    crop = document["preprocessing"]["crop_size"]
    loaded = load_run_model(run)
    pixels = np.stack([prepare_pixels(load_rgb_image(p), loaded.preprocessing) for p in paths])
    assert pixels.shape == (5, crop, crop, 3)
    logits = session.run(None, {"pixels": pixels})[0]
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(probabilities, predict_probabilities(run, paths), atol=1e-5)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_runtime_logits_match_predict(
    runtime: str, runs: dict[str, Path], export_data: Path
) -> None:
    if runtime == "onnx":
        needs_onnx()
    run = runs["finetune"]
    classifier = open_classifier(run, runtime)
    assert classifier.runtime == runtime
    paths = val_images(export_data)
    pixels = np.stack([prepare_pixels(load_rgb_image(p), classifier.preprocessing) for p in paths])
    logits = classifier.logits(pixels)
    assert logits.dtype == np.float32 and logits.shape == (len(paths), 2)
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(probabilities, predict_probabilities(run, paths), atol=1e-5)


def test_auto_runtime_is_the_one_measured_faster_on_this_machine(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    needs_onnx()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no choice remembered yet
    run = runs["feature-extract"]
    first = open_classifier(run, "auto")
    assert export_path(run, "onnx").is_file()  # auto exported the run to time it
    [choice_file] = list(choices_dir().glob("*.json"))
    measured = json.loads(choice_file.read_text())
    assert measured["torch_seconds"] > 0 and measured["onnx_seconds"] > 0
    assert first.runtime == measured["chose"]
    # Later opens read the remembered timings: steered both ways, auto follows them.
    for torch_seconds, onnx_seconds, expected in ((0.001, 1.0, "torch"), (1.0, 0.001, "onnx")):
        remembered = {**measured, "torch_seconds": torch_seconds, "onnx_seconds": onnx_seconds}
        choice_file.write_text(json.dumps(remembered))
        assert open_classifier(run, "auto").runtime == expected
        assert json.loads(choice_file.read_text()) == remembered
    assert open_classifier(run, "onnx").runtime == "onnx"  # asked for: no measuring, no choice


def test_a_damaged_export_is_not_current(runs: dict[str, Path]) -> None:
    needs_onnx()
    run = runs["feature-extract"]
    assert open_classifier(run, "onnx").runtime == "onnx"
    path = export_path(run, "onnx")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    path.write_bytes(bytes(data))
    assert not export_is_current(path, run)  # open_classifier would export it again


def test_failed_parity_check_is_an_error_and_writes_nothing(runs: dict[str, Path]) -> None:
    needs_onnx()
    run = runs["feature-extract"]
    out = run / "strict" / "model.onnx"
    # fp32 ONNX Runtime differs from torch by ~1e-6: a zero tolerance must fail the check.
    with pytest.raises(UserError, match="parity check failed"):
        export_model(ExportRequest(run_dir=run, format="onnx", out=out, tolerance=0.0))
    assert list(out.parent.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_predict(runs: dict[str, Path], export_data: Path) -> None:
    run = runs["finetune"]
    document = export_model(ExportRequest(run_dir=run, format="torchscript"))
    assert document["parity"]["max_abs_logit_difference"] <= 1e-4
    assert document["parity"]["top1_agreement"] == 1.0 and document["format"] == "torchscript"
    module = torch.jit.load(str(run / "export" / "model.pt"))
    logits, ood_scores = module(torch.zeros(3, 64, 64, 3, dtype=torch.uint8))  # the run's score
    assert logits.shape == (3, 2) and ood_scores.shape == (3,)
    paths = val_images(export_data)[:5]
    loaded = load_run_model(run)
    pixels = np.stack([prepare_pixels(load_rgb_image(p), loaded.preprocessing) for p in paths])
    with torch.inference_mode():
        probabilities = torch.softmax(module(torch.from_numpy(pixels))[0], dim=1).numpy()
    np.testing.assert_allclose(probabilities, predict_probabilities(run, paths), atol=1e-5)


def test_class_maps_export_takes_any_image_size(runs: dict[str, Path]) -> None:
    needs_onnx()
    import onnxruntime

    run = runs["finetune"]
    maps = export_model(ExportRequest(run_dir=run, format="onnx", class_maps=True))
    assert maps["kind"] == "class-maps" and maps["parity"]["other_size"]["max_abs"] <= 1e-4
    session = onnxruntime.InferenceSession(
        str(run / "export" / "model-maps.onnx"), providers=["CPUExecutionProvider"]
    )
    pixels = np.random.default_rng(0).integers(0, 256, (2, 96, 160, 3), dtype=np.uint8)
    output = session.run(None, {"pixels": pixels})[0]
    assert output.shape == (2, 2, 3, 5)  # stride 32


def test_int8_export_is_smaller_and_reports_its_own_accuracy(
    runs: dict[str, Path], export_data: Path
) -> None:
    """The sidecar's int8 numbers are what the written int8 file gives on the val images."""
    needs_onnx()
    import onnxruntime

    run = runs["feature-extract"]
    document = export_model(ExportRequest(run_dir=run, format="onnx", quantize="int8"))
    measured = document["parity"]["int8"]
    out = run / "export" / "model-int8.onnx"
    assert measured["int8_bytes"] * 2.5 < measured["fp32_bytes"]
    assert out.stat().st_size == measured["int8_bytes"]

    loaded = load_run_model(run)
    paths = val_images(export_data)  # 32: all of val, and the parity check's images
    labels = np.array([loaded.class_names.index(path.parent.name) for path in paths])
    pixels = np.stack([prepare_pixels(load_rgb_image(p), loaded.preprocessing) for p in paths])
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    int8_logits, int8_scores = session.run(None, {"pixels": pixels})
    int8_predicted = int8_logits.argmax(axis=1)
    torch_predicted = predict_probabilities(run, paths).argmax(axis=1)
    assert measured["val_images"] == len(paths) == 32
    assert measured["int8_val_accuracy"] == np.mean(int8_predicted == labels)
    assert measured["fp32_val_accuracy"] == np.mean(torch_predicted == labels)
    assert document["parity"]["top1_agreement"] == np.mean(int8_predicted == torch_predicted)
    assert document["parity"]["top1_agreement"] >= 0.9  # the int8 check's own minimum

    # A client rejecting by the sidecar's rule on the int8 file's own ood_score output rejects
    # what the run promises of val (at most 5%), not what the fp32 threshold would through it.
    run_rejection = json.loads((run / "rejection.json").read_text())
    rejection = document["rejection"]
    assert rejection["score"] == "code-distance" and rejection["output"] == "ood_score"
    rejected = np.mean(int8_scores > rejection["threshold"])
    assert rejected <= run_rejection["target_val_rejected"] == 0.05
    assert rejection["val_rejected"] == rejected
    assert measured["rejection"]["run_threshold"] == run_rejection["threshold"]
    assert measured["rejection"]["run_threshold_val_rejected"] == np.mean(
        int8_scores > run_rejection["threshold"]
    )


def test_cli_export_and_bad_requests(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs["feature-extract"]
    out = tmp_path / "model.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["file"] == out.name and sidecar["format"] == "torchscript"
    assert sidecar["source"]["run_dir"] == str(run.absolute())
    assert export_is_current(out, run)
    assert main(["export", str(run), "--format", "torchscript", "--quantize", "int8"]) == 2
    assert "--quantize applies to --format onnx" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "torchscript"]) == 2
    assert "not a tlvision run directory" in capsys.readouterr().err


def test_auto_runtime_falls_back_to_torch_without_check_images(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose data is gone cannot have its export checked: auto says so and uses torch."""
    needs_onnx()
    moved = tmp_path / "moved-run"
    moved.mkdir()
    source = runs["feature-extract"]
    (moved / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    metadata = json.loads((source / "model.json").read_text())
    metadata["config"]["data_dir"] = str(tmp_path / "gone")
    (moved / "model.json").write_text(json.dumps(metadata))
    assert open_classifier(moved, "auto").runtime == "torch"
    assert "using torch" in capsys.readouterr().err
    with pytest.raises(UserError, match="pass --data"):
        open_classifier(moved, "onnx")


def test_the_parity_gate_scales_with_the_size_of_the_logits() -> None:
    """float32 rounding grows with the logits: 1.2e-4 on logits near 300 (a distance head's)
    is rounding, on logits near 1 it is a wrong graph."""
    request = ExportRequest(run_dir=Path("run"))
    small = ParityReport(images=32, max_abs_logit_difference=1.2e-4, top1_agreement=1.0)
    large = ParityReport(32, 1.2e-4, 1.0, logit_scale=300.0)
    failure = parity_failure(small, request, Path("model.onnx"))
    assert failure is not None and "need <= 0.0001" in failure
    assert parity_failure(large, request, Path("model.onnx")) is None
    disagrees = ParityReport(32, 0.0, 31 / 32, logit_scale=300.0)
    assert parity_failure(disagrees, request, Path("model.onnx")) is not None
