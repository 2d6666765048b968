"""`tlvision serve`: a real run behind a real uvicorn server on 127.0.0.1, called over HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
from conftest import predict_with_torch
from PIL import Image
from serving import (
    Server,
    demo_data_dir,
    demo_val_images,
    running_server,
    stream_until_answered,
    train_demo_run,
)

from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.errors import UserError
from tlvision.runs.reader import load_run_model
from tlvision.serve.batching import Batcher, BatchingConfig, QueueFull, retry_after_seconds
from tlvision.serve.config import ServeConfig, is_loopback, startup_lines, validate_config
from tlvision.training.fit import fit

TOKEN = "test-token-4f9c2a"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[Server]:
    with running_server(run_dir, "--runtime", "torch") as running:
        yield running


@pytest.fixture(scope="module")
def guarded_server(run_dir: Path) -> Iterator[Server]:
    """Token from TLVISION_TOKEN, and small limits: 1 MB, 2 files, a 2-image queue."""
    options = ["--runtime", "torch", "--max-upload-mb", "1", "--max-files", "2"]
    options += ["--queue-size", "2", "--max-batch", "1", "--batch-wait-ms", "0"]
    with running_server(run_dir, *options, environment={"TLVISION_TOKEN": TOKEN}) as running:
        yield running


def image_files(paths: list[Path], field: str = "files") -> list[tuple[str, tuple[str, bytes]]]:
    return [(field, (path.name, path.read_bytes())) for path in paths]


def test_health_and_model_info(server: Server, run_dir: Path) -> None:
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok" and health["runtime"] == "torch"
    info = httpx.get(f"{server.url}/v1/model").json()
    summary = json.loads((run_dir / "summary.json").read_text())
    last_epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert info["classes"] == ["fish", "monument", "tool"]
    assert (info["backbone"], info["strategy"]) == ("mobilenet_v2", "feature-extract")
    assert info["metrics"]["best_val_acc"] == summary["best_val_acc"]
    assert info["metrics"]["final_val_acc"] == last_epoch["val_acc"]
    assert info["limits"]["max_upload_mb"] == 20
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/predict", "/v1/maps", "/v1/model", "/healthz"} <= set(schema["paths"])


def test_predict_matches_the_predict_command(server: Server, run_dir: Path) -> None:
    paths = demo_val_images()[::4]  # 7 images over the three classes
    expected = predict_with_torch(load_run_model(run_dir), paths, top_k=2)
    response = httpx.post(
        f"{server.url}/v1/predict", files=image_files(paths), data={"top_k": "2"}, timeout=60
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["file"] for p in predictions] == [path.name for path in paths]
    for served, offline in zip(predictions, expected, strict=True):
        assert [entry["class"] for entry in served["top"]] == [name for name, _ in offline.top]
        assert served["class"] == offline.top[0][0]
        served_probabilities = [entry["probability"] for entry in served["top"]]
        assert served_probabilities == pytest.approx([p for _, p in offline.top], abs=1e-4)
    single = httpx.post(f"{server.url}/v1/predict", files=image_files(paths[:1]), timeout=60)
    assert [entry["class"] for entry in single.json()["predictions"][0]["top"]] == [
        expected[0].top[0][0]
    ]


def test_maps_answers_a_png_overlay(server: Server, run_dir: Path) -> None:
    path = demo_val_images()[0]
    predicted = predict_with_torch(load_run_model(run_dir), [path])[0].top[0][0]
    response = httpx.post(f"{server.url}/v1/maps", files=image_files([path], "file"), timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-class"] == predicted
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.format == "PNG" and overlay.size == Image.open(path).size
    other = httpx.post(
        f"{server.url}/v1/maps",
        files=image_files([path], "file"),
        data={"class": "tool"},
        timeout=60,
    )
    assert other.status_code == 200 and other.headers["x-class"] == "tool"
    assert other.content != response.content


def test_class_names_neither_ascii_nor_utf8(tmp_path: Path) -> None:
    """Folder names are class names: 'poisson café' and Latin-1 bytes 't\\xffol' (not UTF-8)
    come back as JSON escapes and a percent-encoded header, never as a 500."""
    data = tmp_path / "data"
    shutil.copytree(demo_data_dir(), data)
    odd_names = {"fish": "poisson café", "tool": os.fsdecode(b"t\xffol")}
    try:
        for split in ("train", "val"):
            for old, new in odd_names.items():
                (data / split / old).rename(data / split / new)
    except OSError as error:  # e.g. a file system that only takes UTF-8 names
        pytest.skip(f"cannot make a non-UTF-8 folder name here: {error}")
    run = tmp_path / "run"
    fit(TrainConfig(data_dir=data, out_dir=run, epochs=2, num_workers=0), log=lambda _: None)
    hammer = data / "val" / odd_names["tool"] / "hammer1.jpg"
    with running_server(run, "--runtime", "torch") as odd:
        classes = httpx.get(f"{odd.url}/v1/model").json()["classes"]
        assert classes == sorted(["monument", *odd_names.values()])
        response = httpx.post(f"{odd.url}/v1/predict", files=image_files([hammer]), timeout=60)
        assert response.status_code == 200 and response.content.isascii()
        assert response.json()["predictions"][0]["class"] in classes
        overlay = httpx.post(f"{odd.url}/v1/maps", files=image_files([hammer], "file"), timeout=60)
        assert overlay.status_code == 200
        assert unquote(overlay.headers["x-class"], errors="surrogateescape") in classes


def bomb_png() -> bytes:
    """A valid PNG header declaring 30000 x 30000 pixels: refused before any decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def thin_png() -> bytes:
    """1 x 50,000 pixels in a few hundred bytes: scaled to a short side of 256 it is ~10 GB."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 50_000), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    return demo_val_images()[0].read_bytes()[:3000]


BAD_REQUESTS = {
    # name: (path, files, form data, raw content and content type, what the answer must say)
    "zero-byte": ("/v1/predict", [("files", ("empty.jpg", b""))], {}, None, "zero-byte"),
    "text": ("/v1/predict", [("files", ("notes.jpg", b"hello"))], {}, None, "not an image"),
    "truncated": ("/v1/predict", [("files", ("cut.jpg", truncated_jpeg()))], {}, None, "trunc"),
    "bomb": ("/v1/predict", [("files", ("bomb.png", bomb_png()))], {}, None, "bomb"),
    "elongated": ("/v1/predict", [("files", ("thin.png", thin_png()))], {}, None, "elongated"),
    "wrong-field": ("/v1/predict", [("image", ("a.jpg", b"x"))], {}, None, "'files'"),
    "text-not-file": ("/v1/predict", [], {"files": "hello"}, None, "not a file"),
    "bad-top-k": ("/v1/predict", "good", {"top_k": "many"}, None, "top_k"),
    "zero-top-k": ("/v1/predict", "good", {"top_k": "0"}, None, "top_k"),
    "json-body": ("/v1/predict", [], {}, (b'{"files": 1}', "application/json"), "'files'"),
    "bad-multipart": (
        "/v1/predict",
        [],
        {},
        (b"garbage", "multipart/form-data; boundary=zz"),
        "multipart",
    ),
    "no-boundary": ("/v1/predict", [], {}, (b"garbage", "multipart/form-data"), "boundary"),
    "maps-text": ("/v1/maps", [("file", ("x.png", b"not a png"))], {}, None, "not an image"),
    "maps-wrong-field": ("/v1/maps", "good", {}, None, "'file'"),
    "maps-unknown-class": ("/v1/maps", "good-file", {"class": "cat"}, None, "unknown class"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_4xx_json_naming_the_problem(server: Server, case: str) -> None:
    path, files, data, raw, expected = BAD_REQUESTS[case]
    good = demo_val_images()[0]
    if files in ("good", "good-file"):
        files = image_files([good], "file" if files == "good-file" else "files")
    if raw is not None:
        content, content_type = raw
        response = httpx.post(
            f"{server.url}{path}", content=content, headers={"content-type": content_type}
        )
    else:
        response = httpx.post(f"{server.url}{path}", files=files or None, data=data, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert expected in response.json()["detail"]
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # still serving


def test_default_upload_limit_refuses_a_declared_21_mb_body(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/v1/predict", files=[("files", ("big.jpg", b"\xff" * (21 << 20)))]
    )
    assert response.status_code == 413
    assert "20 MB" in response.json()["detail"] and "--max-upload-mb" in response.json()["detail"]


def test_streamed_upload_is_refused_while_reading(guarded_server: Server) -> None:
    status, body, sent = stream_until_answered(
        guarded_server.port,
        "/v1/predict",
        {"Authorization": f"Bearer {TOKEN}"},
        cap_bytes=64 << 20,
    )
    assert status == 413
    assert "1 MB" in json.loads(body)["detail"]
    assert sent < 64 << 20  # answered long before the (endless) body was done


def test_too_many_files(guarded_server: Server) -> None:
    response = httpx.post(
        f"{guarded_server.url}/v1/predict",
        files=image_files(demo_val_images()[:3]),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 400
    assert "at most 2 images" in response.json()["detail"]


def test_token_checked_on_every_api_call(guarded_server: Server) -> None:
    url = guarded_server.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = httpx.get(f"{url}/v1/model", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "token" in response.json()["detail"]
    refused = httpx.post(f"{url}/v1/predict", files=image_files(demo_val_images()[:1]))
    assert refused.status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{url}/v1/model", headers=good).status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200  # health checks need no token
    assert httpx.get(f"{url}/").status_code == 200  # the page asks for the token itself


@dataclass
class HeldModel:
    """The model of a server in this process, held at the start of every call until released."""

    url: str = ""
    release: threading.Event = field(default_factory=threading.Event)
    calls: list[int] = field(default_factory=list)  # images per model call, as each starts


@contextmanager
def held_model_server(run_dir: Path, config: ServeConfig) -> Iterator[HeldModel]:
    """The app of `tlvision serve` for `run_dir` behind uvicorn in a thread (as run_server
    makes it), its real torch model held at each call until `release` is set."""
    import uvicorn

    from tlvision.inference.class_maps import open_class_mapper
    from tlvision.inference.runtime import open_classifier
    from tlvision.runs.reader import read_model_json
    from tlvision.serve.app import create_app
    from tlvision.serve.server import bind_listening_socket

    held = HeldModel()
    classifier = open_classifier(run_dir, "torch")
    model_outputs = classifier.outputs  # what serve's batcher calls: logits and ood scores

    def held_outputs(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        held.calls.append(len(pixels))
        held.release.wait(timeout=DEADLINE)
        return model_outputs(pixels)

    classifier.outputs = held_outputs  # type: ignore[method-assign]
    app = create_app(classifier, open_class_mapper(run_dir), config, read_model_json(run_dir))
    listener = bind_listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    held.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, "the server to start")
        yield held
    finally:
        held.release.set()
        server.should_exit = True
        thread.join(timeout=DEADLINE)
        listener.close()


DEADLINE = 120.0  # seconds: what a busy 2-core machine may need; nothing waits this long here


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"waited {DEADLINE:.0f}s for {what}"
        time.sleep(0.02)


def test_full_queue_answers_503_with_retry_after(run_dir: Path) -> None:
    """A 2-image queue, 1-image batches, the model busy with a first image: a request for 2
    more fills the queue, so the next one is refused at once with 503 and Retry-After; the
    queued ones are answered when the model goes on."""
    config = ServeConfig(
        run_dir=run_dir, token=TOKEN, max_files=2,
        batching=BatchingConfig(max_batch=1, max_wait_seconds=0.0, queue_size=2),
    )  # fmt: skip
    images = demo_val_images()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with held_model_server(run_dir, config) as held, ThreadPoolExecutor(2) as pool:

        def post(paths: list[Path]) -> httpx.Response:
            return httpx.post(
                f"{held.url}/v1/predict", files=image_files(paths), headers=headers,
                timeout=DEADLINE,
            )  # fmt: skip

        def health() -> dict[str, int]:
            return dict(httpx.get(f"{held.url}/healthz", timeout=DEADLINE).json())

        first = pool.submit(post, images[:1])
        wait_for(lambda: held.calls == [1], "the first image in the model")
        queued = pool.submit(post, images[1:3])
        wait_for(lambda: health()["queued"] == 2, "two images in the queue")
        busy = post(images[3:4])
        assert busy.status_code == 503, busy.text
        # Retry-After: the 2 queued batches and the running one, at the first guess of 0.1 s
        # each (no batch has finished to time it), rounded up to a whole second
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["detail"] == "server busy: the queue is full; retry after 1 s"
        assert (health()["queued"], health()["images_run"], held.calls) == (2, 0, [1])

        held.release.set()
        answered = [first.result(timeout=DEADLINE), queued.result(timeout=DEADLINE)]
        assert [response.status_code for response in answered] == [200, 200]
        offline = predict_with_torch(load_run_model(run_dir), images[:3], top_k=1)
        served = [p["class"] for response in answered for p in response.json()["predictions"]]
        assert served == [prediction.top[0][0] for prediction in offline]
        assert held.calls == [1, 1, 1]  # the refused image never reached the model
        assert (health()["queued"], health()["images_run"]) == (0, 3)


def test_start_up_says_who_may_call(guarded_server: Server, server: Server) -> None:
    assert "token required on every /v1/ call" in guarded_server.output
    assert "1 MB, 2 images per request" in guarded_server.output
    assert "no token: only this machine can connect" in server.output


def test_non_loopback_host_needs_a_token(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 2  # refused before binding
    error = capsys.readouterr().err
    assert "--token" in error and "TLVISION_TOKEN" in error and "--insecure-no-token" in error
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert not is_loopback("example.com")
    validate_config(ServeConfig(run_dir=run_dir, host="0.0.0.0", token="secret"))
    insecure = ServeConfig(run_dir=run_dir, host="0.0.0.0", insecure_no_token=True)
    validate_config(insecure)
    assert "WARNING" in startup_lines(insecure, "torch", 8000)[1]
    with pytest.raises(UserError, match="queue-size"):
        validate_config(
            ServeConfig(run_dir=run_dir, max_files=8, batching=BatchingConfig(queue_size=4))
        )


def test_busy_port_is_a_one_line_error(
    server: Server, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(run_dir), "--port", str(server.port)]) == 2  # before loading
    assert f"cannot listen on 127.0.0.1:{server.port}" in capsys.readouterr().err


def test_batcher_batches_concurrent_items_and_refuses_past_its_queue() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def doubled(batch: np.ndarray) -> np.ndarray:
        started.set()
        release.wait(timeout=30)
        calls.append(len(batch))
        return batch * 2

    async def scenario() -> None:
        batcher = Batcher(doubled, BatchingConfig(max_batch=4, max_wait_seconds=0.0, queue_size=5))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([np.array([1.0])]))
        while not started.is_set():  # the worker has taken the first item and blocks
            await asyncio.sleep(0.001)
        waiting = [asyncio.ensure_future(batcher.submit([np.array([float(i)])])) for i in range(5)]
        await asyncio.sleep(0.01)
        assert batcher.queued == 5
        with pytest.raises(QueueFull) as refused:
            await batcher.submit([np.array([9.0])])
        assert refused.value.retry_after >= 1
        release.set()
        assert float((await first)[0][0]) == 2.0
        results = await asyncio.gather(*waiting)
        assert [float(rows[0][0]) for rows in results] == [0.0, 2.0, 4.0, 6.0, 8.0]
        await batcher.stop()

    asyncio.run(scenario())
    assert calls == [1, 4, 1]  # the five waiting items went through in two calls


def test_retry_after_grows_with_the_queue() -> None:
    assert retry_after_seconds(0, 16, 0.2) == 1
    assert retry_after_seconds(64, 16, 0.5) == 3  # 4 batches ahead + the running one
    assert retry_after_seconds(64, 16, 2.0) > retry_after_seconds(16, 16, 2.0)
