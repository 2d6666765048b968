"""The Python API: same results and errors as the command line, quiet by default, typed, and
documented by README code that runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_dataset
from PIL import Image

import tlvision
from tlvision.cli import main

REPOSITORY = Path(__file__).resolve().parents[1]
SOURCE_DIR = Path(tlvision.__file__).resolve().parents[1]  # the src/ this test imports
ODD_CLASS = "squares <&>"  # a class name that must be escaped in HTML
# Non-default options, so an option the API dropped or renamed changes the numbers.
TRAIN_OPTIONS: dict[str, Any] = {
    "epochs": 3,
    "input_size": 64,
    "lr": 0.05,
    "batch_size": 4,
    "schedule": "cosine",
    "seed": 3,
    "no_cache": True,
    "workers": 0,
    "device": "cpu",
}
TIMINGS = ("seconds",)


def cli_flags(options: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def without_timings(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in TIMINGS}


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_dataset(tmp_path_factory.mktemp("api") / "data")
    for split in ("train", "val"):
        (root / split / "squares").rename(root / split / ODD_CLASS)
    return root


@pytest.fixture(scope="module")
def api_run(odd_dataset: Path) -> tlvision.Run:
    return tlvision.train(odd_dataset, out=odd_dataset.parent / "api-run", **TRAIN_OPTIONS)


@pytest.fixture(scope="module")
def cli_run_dir(odd_dataset: Path) -> Path:
    out = odd_dataset.parent / "cli-run"
    assert main(["train", str(odd_dataset), "--out", str(out), *cli_flags(TRAIN_OPTIONS)]) == 0
    return out


def test_api_and_cli_give_the_same_run_and_predictions(
    api_run: tlvision.Run, cli_run_dir: Path, odd_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_summary = json.loads((cli_run_dir / "summary.json").read_text())
    assert without_timings(api_run.summary) == without_timings(cli_summary)
    assert api_run.summary["epochs"] == 3 and api_run.classes == ["circles", ODD_CLASS]
    cli_metrics = [json.loads(line) for line in (cli_run_dir / "metrics.jsonl").open()]
    api_metrics = [without_timings(record) for record in api_run.metrics]
    assert api_metrics == [without_timings(record) for record in cli_metrics]
    assert api_run.metrics[0]["lr"] == pytest.approx(0.05)  # the lr option reached the optimizer

    val = odd_dataset / "val"
    capsys.readouterr()
    assert main(["predict", str(cli_run_dir), str(val), "--top-k", "2", "--json"]) == 0
    cli_predictions = json.loads(capsys.readouterr().out)
    api_predictions = [p.to_json() for p in api_run.predict(val, top_k=2, device="cpu")]
    assert api_predictions == cli_predictions
    assert len(api_predictions) == 8 and all(len(p["top"]) == 2 for p in api_predictions)

    assert main(["evaluate", str(cli_run_dir), str(val), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == api_run.evaluate(val, device="cpu").to_text()


def cli_error(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(arguments) == 2
    captured = capsys.readouterr().err
    assert captured.startswith("tlvision: error: ")
    return captured.removeprefix("tlvision: error: ").rstrip("\n")


def bad_inputs(
    data: Path, run_dir: Path, tmp: Path
) -> list[tuple[Callable[[], object], list[str]]]:
    """(API call, the same thing on the command line), each a mistake a user makes."""
    image = next((data / "val" / "circles").iterdir())
    (tmp / "empty").mkdir(exist_ok=True)
    return [
        (lambda: tlvision.train(tmp / "missing", out=tmp / "o1"), ["train", str(tmp / "missing")]),
        (
            lambda: tlvision.train(data, backbone="vgg99", out=tmp / "o2"),
            ["train", str(data), "--backbone", "vgg99", "--out", str(tmp / "o2")],
        ),
        (
            lambda: tlvision.train(data, epochs=0, out=tmp / "o3"),
            ["train", str(data), "--epochs", "0", "--out", str(tmp / "o3")],
        ),
        (lambda: tlvision.train(data, out=run_dir), ["train", str(data), "--out", str(run_dir)]),
        (lambda: tlvision.check(tmp / "empty"), ["check", str(tmp / "empty")]),
        (lambda: tlvision.load(tmp / "empty"), ["predict", str(tmp / "empty"), str(image)]),
        (
            lambda: tlvision.load(run_dir).predict(image, top_k=0),
            ["predict", str(run_dir), str(image), "--top-k", "0"],
        ),
        (
            lambda: tlvision.load(run_dir).predict(tmp / "nothing.jpg"),
            ["predict", str(run_dir), str(tmp / "nothing.jpg")],
        ),
        (
            lambda: tlvision.load(run_dir).evaluate(tmp / "empty"),
            ["evaluate", str(run_dir), str(tmp / "empty")],
        ),
        (lambda: tlvision.advise(data, weights="none"), ["advise", str(data), "--weights", "none"]),
    ]


def test_a_bad_input_raises_user_error_with_the_cli_message(
    odd_dataset: Path, api_run: tlvision.Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for call, arguments in bad_inputs(odd_dataset, api_run.run_dir, tmp_path):
        with pytest.raises(tlvision.UserError) as raised:
            call()
        assert str(raised.value) == cli_error(arguments, capsys), arguments


def test_nothing_is_printed_unless_asked(
    odd_dataset: Path, api_run: tlvision.Run, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # api_run first: a weights download (the first use on a machine) prints where it fetches from
    options = {**TRAIN_OPTIONS, "epochs": 1}
    capfd.readouterr()
    tlvision.train(odd_dataset, out=tmp_path / "quiet", **options)
    tlvision.check(odd_dataset)
    assert capfd.readouterr() == ("", "")

    messages: list[str] = []
    tlvision.train(odd_dataset, out=tmp_path / "logged", log=messages.append, **options)
    assert any(message.startswith("epoch") for message in messages)
    assert capfd.readouterr() == ("", "")

    tlvision.train(odd_dataset, out=tmp_path / "verbose", verbose=True, **options)
    out, err = capfd.readouterr()
    assert "epoch   1" in out and "final val acc" in out
    # verbose: the bars of the code passes, counting images, though stderr is no terminal
    assert progress_bars(err) == CODE_PASS_BARS


# A feature-extract run's bars on odd_dataset: one pass over each split's centre crops, 16
# train and 8 val images.
CODE_PASS_BARS = {"train codes (centre crop)": "16 img", "val codes (centre crop)": "8 img"}


def progress_bars(text: str) -> dict[str, str]:
    """{description: "total unit"} of the tqdm bars drawn in `text`."""
    bar = r"([^\r\n:]+): +\d+%\|[^|]*\| *\d+/(\d+) \[[^\]]*?"
    rate = r"(?:\?|[\d.]+)(?:([a-z]+)/s|s/([a-z]+))\]"  # ?img/s, 12.5img/s or 1.25s/img
    found = re.findall(bar + rate, text)
    return {name.strip(): f"{total} {unit or slow}" for name, total, unit, slow in found}


def test_the_command_line_shows_bars_only_on_a_terminal(
    odd_dataset: Path, api_run: tlvision.Run, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import fcntl
    import pty
    import struct
    import termios
    import threading

    flags = [*cli_flags({**TRAIN_OPTIONS, "epochs": 1}), "--no-report"]
    capfd.readouterr()
    assert main(["train", str(odd_dataset), "--out", str(tmp_path / "piped"), *flags]) == 0
    assert progress_bars(capfd.readouterr().err) == {}

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    drawn = bytearray()
    reader = threading.Thread(target=read_until, args=(controller, drawn, END), daemon=True)
    reader.start()
    with open(terminal, "w") as stderr, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", stderr)
        assert main(["train", str(odd_dataset), "--out", str(tmp_path / "tty"), *flags]) == 0
        stderr.write(END.decode())  # everything before it has reached the terminal
        stderr.flush()
        reader.join(timeout=120)
    os.close(controller)
    assert not reader.is_alive() and drawn.endswith(END)
    assert progress_bars(drawn.decode(errors="replace")) == CODE_PASS_BARS


END = b"<end of the run>"


def read_until(descriptor: int, into: bytearray, end: bytes) -> None:
    """What a terminal shows, up to `end`."""
    while not into.endswith(end):
        into += os.read(descriptor, 65536)


def test_predict_takes_paths_pil_images_and_arrays(
    api_run: tlvision.Run, odd_dataset: Path, tmp_path: Path
) -> None:
    path = odd_dataset / "val" / ODD_CLASS / "squares_0.jpg"
    image = Image.open(path)
    pixels = np.asarray(image.convert("RGB"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    predictions = api_run.predict(
        [str(path), image, pixels, pixels.astype(np.float32) / 255, broken], top_k=2, device="cpu"
    )
    by_path, by_image, by_array, by_floats, unreadable = predictions
    assert by_path.path == path and by_image.path is None
    assert by_image.top == by_path.top == by_array.top
    assert by_floats.top[0][0] == by_path.top[0][0]
    assert unreadable.top == () and unreadable.error is not None
    # one image, no list; a batch of one rounds the last float bits differently
    [(alone_class, alone_probability)] = api_run.predict(image, device="cpu")[0].top
    assert alone_class == by_path.top[0][0]
    assert alone_probability == pytest.approx(by_path.top[0][1], abs=1e-6)
    with pytest.raises(tlvision.UserError, match=r"image 0: pixels of shape \(3, 8, 8\)"):
        api_run.predict(np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(tlvision.UserError, match="cannot predict on a int"):
        api_run.predict([3])  # type: ignore[list-item]


def test_run_exports_and_maps_like_the_commands(
    api_run: tlvision.Run, odd_dataset: Path, tmp_path: Path
) -> None:
    """Run.export writes a checked ONNX file; Run.class_maps reads an image at its own size."""
    import onnxruntime

    check_data = write_dataset(tmp_path / "more", per_class={"train": 4, "val": 16})
    for split in ("train", "val"):  # the parity check needs 32 images of the model's classes
        (check_data / split / "squares").rename(check_data / split / ODD_CLASS)
    exported = api_run.export(out=api_run.run_dir / "api.onnx", data=check_data)
    sidecar = json.loads(exported.with_name(exported.name + ".json").read_text())
    assert exported.is_file() and sidecar["classes"] == api_run.classes
    path = odd_dataset / "val" / ODD_CLASS / "squares_0.jpg"
    pixels = np.asarray(Image.open(path).convert("RGB").resize((64, 64)))[None]
    session = onnxruntime.InferenceSession(str(exported))
    logits = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    assert api_run.classes[int(logits.argmax())] == api_run.predict(path)[0].top[0][0]
    maps = api_run.class_maps(Image.open(path).resize((96, 64)))
    assert maps.logits.shape[0] == len(api_run.classes)
    assert maps.logits.shape[1:] != (1, 1)  # a map, not one number
    with pytest.raises(tlvision.UserError, match="one image"):
        api_run.class_maps([path, path])


def test_repr_html_holds_classes_and_accuracies(
    api_run: tlvision.Run, odd_dataset: Path, tmp_path: Path
) -> None:
    escaped = "squares &lt;&amp;&gt;"
    final = api_run.metrics[-1]["val_acc"]
    run_html = api_run._repr_html_()
    assert escaped in run_html and ODD_CLASS not in run_html and "circles" in run_html
    assert f"{final:.4f}" in run_html and f"{api_run.summary['best_val_acc']:.4f}" in run_html

    evaluation = api_run.evaluate(odd_dataset / "val", device="cpu")
    evaluation_html = evaluation._repr_html_()
    assert f"accuracy {evaluation.accuracy:.4f}" in evaluation_html and escaped in evaluation_html

    check_html = tlvision.check(odd_dataset)._repr_html_()
    assert escaped in check_html and ODD_CLASS not in check_html
    assert re.search(r"<td>circles</td><td>8</td><td>4</td>", check_html)

    table = tlvision.probe(
        odd_dataset, stages=["stage3", "top"], heads=["logreg"], input_size=64, no_cache=True
    )
    probe_html = table._repr_html_()
    assert f"<td>top</td><td>{table.accuracy('top', 'logreg'):.4f}</td>" in probe_html
    assert "stage3" in probe_html

    advice = tlvision.advise(odd_dataset, cache_dir=tmp_path / "cache")
    advice_html = advice._repr_html_()
    assert advice.strategy in advice_html and "2 classes" in advice_html
    for stage, accuracy in advice.probe_accuracy.items():
        assert f"<td>{stage}</td><td>{accuracy:.4f}</td>" in advice_html


def test_train_auto_runs_the_advice_quietly(
    odd_dataset: Path, api_run: tlvision.Run, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    run = tlvision.train(odd_dataset, strategy="auto", out=tmp_path / "auto", workers=0)
    assert capfd.readouterr() == ("", "")
    advice = json.loads((tmp_path / "auto" / "advice.json").read_text())
    model = json.loads((tmp_path / "auto" / "model.json").read_text())
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert (model, summary) == (run.model_info, run.summary)
    # 16 train images: small, so the advice is a classifier on frozen codes
    assert (advice["size"], advice["strategy"]) == ("small", "linear-probe")
    advised = (advice["strategy"], advice["stage"], advice["head"], advice["input_size"])
    config = model["config"]
    recorded = (config["strategy"], config["stage"], config["head"], config["input_size"])
    assert recorded == advised
    trained = (model["strategy"], model["stage"], model["head"])
    assert trained == (summary["strategy"], summary["stage"], summary["head"]) == advised[:3]
    assert model["preprocessing"]["crop_size"] == advice["input_size"]
    assert config["epochs"] == advice["epochs"]
    # a head fitted in one step (logreg, svm) records the one fit, not the epochs setting
    one_step = summary["head"] in ("logreg", "svm")
    assert summary["epochs"] == (1 if one_step else config["epochs"])
    assert config["learning_rate"] == advice["learning_rate"]
    assert config["freeze_until"] is None and summary["views"] == 0


@pytest.mark.parametrize("module", ["tlvision", "tlvision.cli"])
def test_import_does_not_load_torch(module: str) -> None:
    """The API and the command line (`tlvision --help`, argument errors) start without torch."""
    code = f"import sys, {module}; print(sorted({{'torch', 'numpy', 'PIL'}} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(SOURCE_DIR)},
    )  # fmt: skip
    assert result.stdout.strip() == "[]"


def readme_python_blocks() -> list[str]:
    readme = (REPOSITORY / "README.md").read_text()
    assert "## From Python" in readme
    # Blocks marked `<!-- snippet: ... -->` need an exported run: tests/test_export_clients.py
    # runs those against one.
    found = re.finditer(
        r"^(<!-- snippet: [\w-]+ -->\n)?```python\n(.*?)^```$",
        readme,
        flags=re.DOTALL | re.MULTILINE,
    )
    return [match.group(2) for match in found if match.group(1) is None]


def test_every_python_block_of_the_readme_runs(tmp_path: Path) -> None:
    blocks = readme_python_blocks()
    assert len(blocks) >= 4
    script = tmp_path / "readme_blocks.py"
    # One script, blocks in order: later blocks use what earlier ones made, as a reader would.
    script.write_text("\n".join(f"# README block {n}\n{block}" for n, block in enumerate(blocks)))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(SOURCE_DIR)}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no/such/folder: no such directory" in result.stdout
    assert (tmp_path / "runs" / "demo-api" / "model.safetensors").is_file()


def test_a_typed_client_passes_mypy_strict_and_a_wrong_one_fails(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_client.py"
    wrong.write_text(
        "import tlvision\n"
        'run = tlvision.train("data", epochs="3")\n'
        'accuracy: str = run.evaluate("data/val").accuracy\n'
        'name: int = run.predict("x.jpg")[0].top[0][0]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         str(REPOSITORY / "tests" / "typed_client.py"), str(wrong)],
        cwd=REPOSITORY, capture_output=True, text=True,
        env={**os.environ, "MYPYPATH": str(SOURCE_DIR)},
    )  # fmt: skip
    # Match by file name: mypy's cache may name an unchanged file by an earlier run's path.
    errors = re.findall(r"^(\S+):(\d+): error:", result.stdout, flags=re.MULTILINE)
    assert [(Path(name).name, line) for name, line in errors] == [
        ("wrong_client.py", "2"),
        ("wrong_client.py", "3"),
        ("wrong_client.py", "4"),
    ], result.stdout


def test_the_typed_client_runs(odd_dataset: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "tests" / "typed_client.py"), str(odd_dataset),
         str(tmp_path / "client-run")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SOURCE_DIR)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "['circles', 'squares <&>']" in result.stdout
