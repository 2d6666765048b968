"""Streaming batch prediction: one JSON line per image, unreadable ones included, in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import predict_with_torch
from PIL import Image

from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.data.preprocessing import Preprocessing
from tlvision.errors import UserError
from tlvision.inference.runtime import choose_runtime
from tlvision.inference.sources import expand_image_paths
from tlvision.inference.stream import decoded_batches, merge_parts, part_file
from tlvision.runs.reader import load_run_model
from tlvision.training.fit import fit


def train_small_run(data: Path, out: Path) -> Path:
    """One epoch of fine-tuning from random weights at 32 px: a real run, in seconds."""
    fit(
        TrainConfig(
            data_dir=data, out_dir=out, strategy="finetune", weights="none",
            input_size=32, epochs=1, batch_size=8, num_workers=0,
        ),
        log=lambda _: None,
    )  # fmt: skip
    return out


@pytest.fixture
def trained_run(tiny_dataset: Path, tmp_path: Path) -> Path:
    return train_small_run(tiny_dataset, tmp_path / "run")


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


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_jsonl_probabilities_match_the_torch_model_on_each_runtime(
    dataset_factory: Callable[..., Path], tmp_path: Path, runtime: str
) -> None:
    # 36 images: the ONNX export's parity check needs 32
    data = dataset_factory(per_class={"train": 12, "val": 6})
    trained_run = train_small_run(data, tmp_path / "run")
    paths = expand_image_paths([data / "val"])
    expected = predict_with_torch(load_run_model(trained_run), paths, top_k=2)
    jsonl = tmp_path / f"{runtime}.jsonl"
    main(
        ["predict", str(trained_run), str(data / "val"), "--jsonl", str(jsonl),
         "--top-k", "2", "--batch-size", "3", "--runtime", runtime]
    )  # fmt: skip
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert (trained_run / "export" / "model.onnx").is_file() == (runtime == "onnx")
    assert len(lines) == len(expected)
    for line, prediction in zip(lines, expected, strict=True):
        assert line["path"] == str(prediction.path)
        got = {entry["class"]: entry["probability"] for entry in line["top"]}
        for name, probability in prediction.top:
            assert got[name] == pytest.approx(probability, abs=1e-4)


def test_decoding_reads_ahead_a_bounded_number_of_batches(tiny_dataset: Path) -> None:
    paths = expand_image_paths([tiny_dataset / "val"]) * 50  # 400 images, batches of 4
    pulled = 0

    def counted() -> Iterator[Path]:
        nonlocal pulled
        for path in paths:
            pulled += 1
            yield path

    batches = decoded_batches(counted(), Preprocessing(), batch_size=4, decoders=2)
    first = next(batches)
    assert first.pixels is not None and first.pixels.shape == (4, 224, 224, 3)
    # 2 * decoders batches queued behind the one handed out, and one being listed
    assert pulled <= (2 * 2 + 2) * 4
    assert sum(len(batch.sources) for batch in batches) == len(paths) - 4
    assert pulled == len(paths)


@pytest.mark.parametrize(
    ("requested", "device", "installed", "exists", "count", "chosen"),
    [
        ("auto", "cpu", True, False, None, "onnx"),  # a stream: the export pays
        ("auto", "cpu", True, False, 499, "torch"),  # a handful: the export would not pay
        ("auto", "cpu", True, False, 500, "onnx"),
        ("auto", "cpu", True, True, 1, "onnx"),  # exported already: free
        ("auto", "cpu", False, True, None, "torch"),  # onnxruntime not installed
        ("auto", "cuda", True, True, None, "torch"),  # the GPU keeps the model
        ("torch", "cpu", True, True, None, "torch"),
        ("onnx", "cpu", True, False, 1, "onnx"),
    ],
)
def test_runtime_choice(
    requested: str, device: str, installed: bool, exists: bool, count: int | None, chosen: str
) -> None:
    choice = choose_runtime(
        requested, device_type=device, preferred_installed=installed, export_exists=exists,
        image_count=count,
    )  # fmt: skip
    assert choice == chosen


def test_unknown_runtime_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown runtime 'tensorrt'"):
        choose_runtime(
            "tensorrt", device_type="cpu", preferred_installed=True, export_exists=False,
            image_count=None,
        )  # fmt: skip


def test_torchrun_shards_prediction_and_merges_it_in_input_order(
    dataset_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """2 CPU processes: rank 0 exports the ONNX model once, each rank classifies its batches,
    and FILE holds the single-process lines in the single-process order."""
    data = dataset_factory(per_class={"train": 12, "val": 7})  # 14 val: batches 3 split unevenly
    run = train_small_run(data, tmp_path / "run")
    options = ["--batch-size", "3", "--top-k", "2", "--runtime", "onnx"]
    alone = tmp_path / "alone.jsonl"
    assert main(["predict", str(run), str(data / "val"), "--jsonl", str(alone), *options]) == 0
    sharded = tmp_path / "sharded.jsonl"
    source = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "tlvision", "predict", str(run), str(data / "val"), "--jsonl", str(sharded),
         *options],
        env={**os.environ, "PYTHONPATH": source}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ours = [json.loads(line) for line in sharded.read_text().splitlines()]
    expected = [json.loads(line) for line in alone.read_text().splitlines()]
    assert [line["path"] for line in ours] == [line["path"] for line in expected]
    assert len(ours) == 14
    for line, reference in zip(ours, expected, strict=True):
        assert line["class"] == reference["class"]
        assert line["probability"] == pytest.approx(reference["probability"], abs=1e-5)
    assert not list(tmp_path.glob("sharded.jsonl.rank*"))


def test_bad_batch_size_and_workers_are_user_errors(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "one.jpg"
    Image.new("RGB", (40, 30), "red").save(image)
    for option, value, message in (
        ("--batch-size", "0", "--batch-size 0: must be at least 1"),
        ("--workers", "-1", "--workers -1: must be 0"),
    ):
        for jsonl in ([], ["--jsonl", str(tmp_path / "out.jsonl")]):
            assert main(["predict", str(trained_run), str(image), option, value, *jsonl]) == 2
            error = capsys.readouterr().err
            assert message in error and "Traceback" not in error
