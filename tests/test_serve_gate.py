"""What `tlvision serve` refuses before doing the work: the Host and the token before the body is
read (a real slow client on loopback), the OpenAPI schema behind the token, a full queue before
any upload is decoded, a second image where one is taken."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving import Server, demo_val_images, running_server, train_demo_run
from test_serve import held_model_server, image_files, wait_for

from tlvision.serve.batching import BatchingConfig
from tlvision.serve.config import ServeConfig
from tlvision.serve.middleware import allowed_hosts, host_name

TOKEN = "gate-token-5d1e"
ALLOWED = "tlvision.example"
MEGABYTE = 1024 * 1024


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo_run(tmp_path_factory.mktemp("gate") / "run")


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[Server]:
    """A token, the default 20 MB limit, and one extra Host name."""
    options = ["--runtime", "torch", "--allowed-host", ALLOWED]
    with running_server(run_dir, *options, environment={"TLVISION_TOKEN": TOKEN}) as running:
        yield running


def slow_upload(port: int, headers: dict[str, str], size: int, rate: int) -> tuple[int, float, int]:
    """POST a `size`-byte multipart body to /v1/predict at `rate` bytes/s, reading the answer as
    soon as there is one: (status, seconds until it came, bytes sent by then)."""
    boundary = "slowboundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    closing = f"\r\n--{boundary}--\r\n".encode()
    body_length = size
    head = [
        "POST /v1/predict HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {body_length}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    payload = part + b"\xff" * (body_length - len(part) - len(closing)) + closing
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    started = time.monotonic()
    connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sent, chunk = 0, rate // 16
    response = b""
    try:
        while sent < len(payload):
            if select.select([connection], [], [], 0)[0]:
                break  # an answer: stop sending, read it
            connection.sendall(payload[sent : sent + chunk])
            sent += chunk
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))
        while b"\r\n" not in response and (block := connection.recv(65536)):
            response += block
    except (BrokenPipeError, ConnectionResetError):
        pass
    elapsed = time.monotonic() - started
    connection.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
    return status, elapsed, sent


def test_unauthenticated_slow_upload_is_refused_before_the_body(server: Server) -> None:
    """20 MB (within the limit) at 1 MB/s: a server that read the body first would answer
    after 20 s; the token is checked on the headers."""
    status, seconds, sent = slow_upload(server.port, {}, 20 * MEGABYTE, MEGABYTE)
    assert status == 401
    assert seconds < 2.0, seconds
    assert sent < 3 * MEGABYTE
    wrong, seconds, _ = slow_upload(
        server.port, {"Authorization": "Bearer wrong"}, 20 * MEGABYTE, MEGABYTE
    )
    assert wrong == 401 and seconds < 2.0, seconds


def test_openapi_schema_needs_the_token(server: Server) -> None:
    refused = httpx.get(f"{server.url}/openapi.json")
    assert refused.status_code == 401 and "token" in refused.json()["detail"]
    schema = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert schema.status_code == 200 and "/v1/predict" in schema.json()["paths"]
    for page in ("/docs", "/redoc"):  # off: they would load scripts from a CDN
        assert httpx.get(f"{server.url}{page}").status_code in (401, 404)


def test_host_header_must_name_this_server(server: Server) -> None:
    """DNS rebinding: a page at evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    good = {"Authorization": f"Bearer {TOKEN}"}
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.2", ""):
        response = httpx.get(f"{server.url}/v1/model", headers={**good, "Host": host})
        assert response.status_code == 400, host
        assert "--allowed-host" in response.json()["detail"]
    assert httpx.get(f"{server.url}/", headers={"Host": "evil.example"}).status_code == 400
    for host in ("localhost", f"127.0.0.1:{server.port}", f"[::1]:{server.port}", ALLOWED):
        response = httpx.get(f"{server.url}/v1/model", headers={**good, "Host": host})
        assert response.status_code == 200, host


def test_allowed_hosts_follow_the_bound_address() -> None:
    assert allowed_hosts("0.0.0.0", ()) is None  # reached under names it cannot know
    assert allowed_hosts("0.0.0.0", ["Photos.LAN"]) == {
        "localhost",
        "127.0.0.1",
        "::1",
        "photos.lan",
    }
    assert "192.168.1.5" in (allowed_hosts("192.168.1.5", ()) or ())
    assert "::1" in (allowed_hosts("[::1]", ()) or ())
    assert [host_name(h) for h in ("a.b:80", "[::1]:8000", "::1", "LOCALHOST")] == [
        "a.b", "::1", "::1", "localhost",
    ]  # fmt: skip


def test_maps_refuses_a_second_file(server: Server) -> None:
    images = demo_val_images()[:2]
    response = httpx.post(
        f"{server.url}/v1/maps",
        files=image_files(images, field="file"),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert response.status_code == 400
    assert "one image" in response.json()["detail"]


def test_full_queue_is_refused_before_decoding(run_dir: Path) -> None:
    """With the queue full, a request whose upload is not an image gets 503 (the queue is
    checked first), not the 422 that decoding it would give."""
    config = ServeConfig(
        run_dir=run_dir, max_files=2,
        batching=BatchingConfig(max_batch=1, max_wait_seconds=0.0, queue_size=2),
    )  # fmt: skip
    images = demo_val_images()
    with held_model_server(run_dir, config) as held, ThreadPoolExecutor(2) as pool:

        def post(files: list[tuple[str, tuple[str, bytes]]]) -> httpx.Response:
            return httpx.post(f"{held.url}/v1/predict", files=files, timeout=120)

        def queued() -> int:
            return int(httpx.get(f"{held.url}/healthz", timeout=120).json()["queued"])

        first = pool.submit(post, image_files(images[:1]))
        wait_for(lambda: held.calls == [1], "the first image in the model")
        waiting = pool.submit(post, image_files(images[1:3]))
        wait_for(lambda: queued() == 2, "two images in the queue")
        busy = post([("files", ("notes.txt", b"not an image at all"))])
        assert busy.status_code == 503, busy.text
        assert json.loads(busy.text)["detail"].startswith("server busy")
        held.release.set()
        assert first.result(timeout=120).status_code == 200
        assert waiting.result(timeout=120).status_code == 200
        # with room again, the same upload is decoded and refused for what it is
        assert post([("files", ("notes.txt", b"not an image at all"))]).status_code == 422
