"""Helpers for the server tests: a small real run, and a real `tlvision serve` on 127.0.0.1."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tlvision import demo_data_dir
from tlvision.config import TrainConfig
from tlvision.training.fit import fit

LISTENING = re.compile(r"on (http://127\.0\.0\.1:(\d+))/")  # from the start-up line
STARTUP_SECONDS = 120  # importing torch and loading the model on a busy 2-core machine


def train_demo_run(out_dir: Path) -> Path:
    """Feature-extract on the embedded demo set: a real 3-class model in seconds (cached codes)."""
    fit(
        TrainConfig(
            data_dir=demo_data_dir(), out_dir=out_dir, epochs=3, device="cpu", num_workers=0
        ),
        log=lambda _: None,
    )
    return out_dir


def demo_val_images() -> list[Path]:
    return sorted((demo_data_dir() / "val").rglob("*.jpg"))


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str = ""
    port: int = 0
    lines: list[str] = field(default_factory=list)  # what it printed so far

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def running_server(
    run_dir: Path, *options: str, environment: dict[str, str] | None = None
) -> Iterator[Server]:
    """`tlvision serve RUN_DIR --port 0 OPTIONS` in a subprocess (the port it got is read from
    its start-up line), stopped on exit."""
    command = [sys.executable, "-m", "tlvision.cli", "serve", str(run_dir), "--port", "0"]
    process = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(environment or {})},
    )
    server = Server(process=process)
    # Drain its output all along: a full pipe would block the server.
    reader = threading.Thread(target=_collect, args=(process, server.lines), daemon=True)
    reader.start()
    try:
        _wait_until_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=10)


def _collect(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)


def _wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            time.sleep(0.5)  # let the reader take the last lines
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.output}")
        listening = LISTENING.search(server.output)
        if listening is None:  # still loading the model
            time.sleep(0.25)
            continue
        server.url, server.port = listening.group(1), int(listening.group(2))
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not healthy after {STARTUP_SECONDS}s:\n{server.output}")


def stream_until_answered(
    port: int, path: str, headers: dict[str, str], cap_bytes: int
) -> tuple[int, bytes, int]:
    """POST a never-ending chunked multipart file until the server answers (or `cap_bytes` are
    sent); return (status, body, bytes sent). Waits for no body end, so a server that buffers
    the whole upload before answering never answers here."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Transfer-Encoding: chunked"]
    lines += ["Content-Type: multipart/form-data; boundary=xx", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    part = b'--xx\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n\r\n'
    payload = b"\xff" * (256 * 1024)
    pending = memoryview(b"%x\r\n%s\r\n" % (len(part), part))
    chunk = b"%x\r\n%s\r\n" % (len(payload), payload)
    sent = 0
    answered = False
    while sent < cap_bytes and not answered:
        readable, writable, _ = select.select([connection], [connection], [], 30)
        if readable:
            answered = True
        elif writable:
            try:
                count = connection.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += count
            pending = pending[count:] if count < len(pending) else memoryview(chunk)
    response = b""
    try:
        while block := connection.recv(65536):
            response += block
    except (ConnectionResetError, TimeoutError):
        pass
    connection.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, _dechunk(body) if b"chunked" in head.lower() else body, sent


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out
