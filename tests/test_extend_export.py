"""A new export format is one registration, from outside tlvision: torch.export's .pt2,
declared here, is written and parity-checked by `tlvision export`, and serves as a runtime for
predict and evaluate from the command line and the API, with no tlvision file touched."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tlvision
from tlvision.cli import main
from tlvision.export.format import EXPORT_FORMATS, ExportFormat

NAME = "pt2"


def write(network: nn.Module, example: torch.Tensor, path: Path, spatial: bool) -> None:
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if spatial:
        dims |= {1: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC}
    program = torch.export.export(network.eval(), (example,), dynamic_shapes=(dims,))
    torch.export.save(program, str(path))


def open_file(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    module = torch.export.load(str(path)).module()

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(pixels)).float().numpy()

    return run


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    EXPORT_FORMATS.register(
        NAME,
        ExportFormat(
            name=NAME, suffix=".pt2", needs=(), install="", exporter="torch.export",
            write=write, open=open_file, serves=True,
        ),
    )  # fmt: skip
    yield
    EXPORT_FORMATS.unregister(NAME)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_dataset

    base = tmp_path_factory.mktemp("export-format")
    data = write_dataset(base / "data", per_class={"train": 8, "val": 16})
    tlvision.train(data, epochs=2, out=base / "run", cache_dir=base / "cache", workers=0)
    return base / "run"


def test_the_cli_exports_it_checked_and_predicts_with_it(
    registered: None, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", NAME, "--json"]) == 0
    sidecar = json.loads(capsys.readouterr().out)
    assert sidecar["file"] == "model.pt2" and sidecar["exporter"] == "torch.export"
    assert sidecar["parity"]["top1_agreement"] == 1.0
    assert sidecar["parity"]["max_abs_logit_difference"] <= 1e-4
    images = sorted((Path(sidecar["source"]["run_dir"]).parent / "data" / "val").rglob("*.jpg"))
    assert main(["predict", str(run_dir), *map(str, images[:4]), "--runtime", NAME, "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    expected = tlvision.load(run_dir).predict(images[:4], runtime="torch")
    assert [row["class"] for row in predicted] == [p.top[0][0] for p in expected]
    for row, reference in zip(predicted, expected, strict=True):
        assert row["probability"] == pytest.approx(reference.top[0][1], abs=1e-5)


def test_the_api_exports_it_and_evaluates_on_it(registered: None, run_dir: Path) -> None:
    run = tlvision.load(run_dir)
    path = run.export(NAME, out=run_dir / "elsewhere" / "tiny.pt2")
    assert path.is_file() and path.with_name("tiny.pt2.json").is_file()
    val = run_dir.parent / "data" / "val"
    on_pt2 = run.evaluate(val, device="cpu", runtime=NAME)
    on_torch = run.evaluate(val, device="cpu", runtime="torch")
    assert on_pt2.total == 32 and np.array_equal(on_pt2.confusion, on_torch.confusion)


def test_an_unknown_format_names_the_registered_ones(
    registered: None, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "tflite"]) == 2
    assert f"choose one of onnx, torchscript, {NAME}" in capsys.readouterr().err.replace("'", "")
