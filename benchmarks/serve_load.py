"""Load on `tlvision serve`: throughput against `predict`'s offline batch rate, in one run.

    python benchmarks/serve_load.py [--run RUN_DIR] [--seconds 60] [--clients 16]

Trains a feature-extract run on the embedded demo set unless --run is given and measures, on
the demo val images, the offline rate of `tlvision predict` on torch (`Run.predict`,
batches of 32, decoding included) and of the server's runtime alone (decode, prepare_pixels,
Classifier.logits in batches of 32; with auto, ONNX Runtime exports the run first). Then it
starts `tlvision serve` on 127.0.0.1 (default runtime: auto) and runs a bounded load: --clients
concurrent clients, each posting one image per request for --seconds, plus --malformed bad
uploads (zero-byte, text, truncated, decompression bomb, wrong field, too many files,
oversized) spread over the same time. Prints the throughput ratios (goal >= 0.9x), p50/p99
latency, the count of 5xx answers (goal 0), the answers the malformed uploads got, and the
server's resident memory (goal: growth <= 100 MB over the timed load, measured after a warm-up
of the same load, up to 10 s). Stops the server and itself when done; nothing but 127.0.0.1 is
contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

import tlvision
from tlvision import demo_data_dir
from tlvision.config import TrainConfig
from tlvision.data.images import load_rgb_image
from tlvision.data.transforms import prepare_pixels
from tlvision.inference.runtime import open_classifier
from tlvision.training.fit import fit

OFFLINE_IMAGES = 256  # images timed through predict on torch (the val set, repeated)
WARM_UP_SECONDS = 10  # of the same load, before the timed part
CONNECTION_ERROR = 0  # the status counted when a request got no HTTP answer at all


def offline_rate(run_dir: Path, images: list[Path]) -> float:
    run = tlvision.load(run_dir)
    paths = [images[index % len(images)] for index in range(OFFLINE_IMAGES)]
    run.predict(paths[:32], runtime="torch", workers=0)  # warm-up: first calls allocate
    started = time.perf_counter()
    run.predict(paths, batch_size=32, runtime="torch", workers=0)
    return len(paths) / (time.perf_counter() - started)


def offline_runtime_rate(run_dir: Path, images: list[Path], runtime: str) -> tuple[str, float]:
    """The server's own engine offline: decode, prepare_pixels, logits in batches of 32."""
    classifier = open_classifier(run_dir, runtime)
    paths = [images[index % len(images)] for index in range(OFFLINE_IMAGES)]

    def run(batch_paths: list[Path]) -> None:
        for start in range(0, len(batch_paths), 32):
            pixels = [
                prepare_pixels(load_rgb_image(path), classifier.preprocessing)
                for path in batch_paths[start : start + 32]
            ]
            classifier.logits(np.stack(pixels))

    run(paths[:32])
    started = time.perf_counter()
    run(paths)
    return classifier.runtime, len(paths) / (time.perf_counter() - started)


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def malformed_uploads(good: bytes) -> list[tuple[str, dict[str, object]]]:
    """(kind, httpx.post keyword arguments) for each kind of bad upload."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 900 megapixels declared
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + b"IHDR" + header
    bomb += struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    return [
        ("zero-byte", {"files": [("files", ("a.jpg", b""))]}),
        ("text", {"files": [("files", ("a.jpg", b"just some text"))]}),
        ("truncated", {"files": [("files", ("a.jpg", good[: len(good) // 3]))]}),
        ("bomb", {"files": [("files", ("a.png", bomb))]}),
        ("wrong-field", {"files": [("image", ("a.jpg", good))]}),
        ("too-many-files", {"files": [("files", ("a.jpg", good))] * 17}),
        ("oversized", {"files": [("files", ("a.jpg", b"\xff" * (21 << 20)))]}),
    ]


async def client_loop(
    client: httpx.AsyncClient, url: str, bodies: list[bytes], deadline: float, start: int
) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    index = start
    while time.monotonic() < deadline:
        body = bodies[index % len(bodies)]
        index += 1
        sent = time.perf_counter()
        try:
            response = await client.post(url, files=[("files", ("image.jpg", body))])
        except httpx.TransportError:
            statuses[CONNECTION_ERROR] += 1
            continue
        statuses[response.status_code] += 1
        if response.status_code == 200:
            latencies.append(time.perf_counter() - sent)
    return latencies, statuses


async def malformed_loop(
    client: httpx.AsyncClient, url: str, good: bytes, count: int, seconds: float
) -> Counter[tuple[str, int]]:
    answers: Counter[tuple[str, int]] = Counter()
    kinds = malformed_uploads(good)
    started = time.monotonic()
    for number in range(count):
        # Oversized bodies are 21 MB each: one in 50 keeps the load about the model.
        kind, arguments = kinds[number % (len(kinds) - 1)]
        if number % 50 == 49:
            kind, arguments = kinds[-1]
        try:
            response = await client.post(url, **arguments)  # type: ignore[arg-type]
            answers[(kind, response.status_code)] += 1
        except httpx.TransportError:
            answers[(kind, CONNECTION_ERROR)] += 1
        await asyncio.sleep(max(0.0, started + (number + 1) * seconds / count - time.monotonic()))
    return answers


async def run_load(
    url: str, bodies: list[bytes], clients: int, seconds: float, malformed: int, pid: int
) -> tuple[list[float], Counter[int], Counter[tuple[str, int]], float, float]:
    """The timed load, after a warm-up at the same concurrency; also the server's RSS after
    the warm-up (allocators and batch buffers of every size are in place by then)."""
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        warm_up_end = time.monotonic() + min(WARM_UP_SECONDS, seconds / 4)
        await asyncio.gather(
            *(client_loop(client, url, bodies, warm_up_end, index) for index in range(clients))
        )
        rss_warm = resident_mb(pid)
        deadline = time.monotonic() + seconds
        started = time.perf_counter()
        results = await asyncio.gather(
            *(client_loop(client, url, bodies, deadline, index) for index in range(clients)),
            malformed_loop(client, url, bodies[0], malformed, seconds),
        )
        elapsed = time.perf_counter() - started
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    for client_latencies, client_statuses in results[:-1]:  # type: ignore[misc]
        latencies += client_latencies
        statuses += client_statuses
    return latencies, statuses, results[-1], elapsed, rss_warm  # type: ignore[return-value]


def wait_until_healthy(process: subprocess.Popen[bytes], seconds: float, log_path: Path) -> str:
    """The server's URL, from its start-up line (it was started with --port 0), once healthy."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log = log_path.read_text()
        if process.poll() is not None:
            raise SystemExit(f"server exited with status {process.returncode}:\n{log}")
        listening = re.search(r"on (http://127\.0\.0\.1:\d+)/", log)
        try:
            if listening and httpx.get(f"{listening[1]}/healthz", timeout=2).status_code == 200:
                return listening[1]
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not healthy after {seconds:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, help="a trained run (default: train on the demo set)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--malformed", type=int, default=1000)
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"])
    arguments = parser.parse_args()
    images = sorted((demo_data_dir() / "val").rglob("*.jpg"))
    bodies = [path.read_bytes() for path in images]
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = arguments.run
        if run_dir is None:
            run_dir = Path(scratch) / "run"
            fit(TrainConfig(demo_data_dir(), run_dir, epochs=3), log=lambda _: None)
        offline = offline_rate(run_dir, images)
        print(f"predict (offline, batch 32, {OFFLINE_IMAGES} images): {offline:.1f} images/s")
        engine, engine_rate = offline_runtime_rate(run_dir, images, arguments.runtime)
        print(f"{engine} runtime offline (decode + logits, batch 32): {engine_rate:.1f} images/s")
        command = [sys.executable, "-m", "tlvision.cli", "serve", str(run_dir), "--port", "0"]
        command += ["--runtime", arguments.runtime, "--log-level", "warning"]
        log_path = Path(scratch) / "server.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = wait_until_healthy(server, 300, log_path)
            runtime = httpx.get(f"{url}/healthz").json()["runtime"]
            rss_idle = resident_mb(server.pid)
            latencies, statuses, malformed, elapsed, rss_warm = asyncio.run(
                run_load(
                    f"{url}/v1/predict",
                    bodies,
                    arguments.clients,
                    arguments.seconds,
                    arguments.malformed,
                    server.pid,
                )
            )
            rss_after = resident_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
    report(offline, engine_rate, runtime, arguments, latencies, statuses, malformed, elapsed)
    print(
        f"server RSS: {rss_idle:.0f} MB idle after start, {rss_warm:.0f} MB after the warm-up, "
        f"{rss_after:.0f} MB after the load (+{rss_after - rss_warm:.0f} MB over the timed "
        f"load, goal <= 100; +{rss_after - rss_idle:.0f} MB since start)"
    )


def report(
    offline: float,
    engine_rate: float,
    runtime: str,
    arguments: argparse.Namespace,
    latencies: list[float],
    statuses: Counter[int],
    malformed: Counter[tuple[str, int]],
    elapsed: float,
) -> None:
    served = statuses[200] / elapsed
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    server_errors = sum(count for status, count in statuses.items() if status >= 500)
    server_errors += sum(count for (_, status), count in malformed.items() if status >= 500)
    print(
        f"serve ({runtime}, {arguments.clients} clients, {elapsed:.0f}s, one image per request): "
        f"{served:.1f} images/s = {served / offline:.2f}x predict's offline rate (goal >= 0.9x), "
        f"{served / engine_rate:.2f}x its runtime's offline rate"
    )
    print(
        f"latency p50 {quantiles[49] * 1000:.0f} ms, p99 {quantiles[98] * 1000:.0f} ms; "
        f"answers {dict(sorted(statuses.items()))}"
    )
    print(f"malformed uploads: {sum(malformed.values())}, answered:")
    for (kind, status), count in sorted(malformed.items()):
        print(f"  {kind}: {count} x {status}")
    no_answer = statuses[CONNECTION_ERROR] + sum(
        count for (_, status), count in malformed.items() if status == CONNECTION_ERROR
    )
    print(f"5xx answers: {server_errors} (goal 0); no answer (status 0): {no_answer}")


if __name__ == "__main__":
    main()
