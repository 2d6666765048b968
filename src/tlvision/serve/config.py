"""What `tlvision serve` was asked to do, and the decisions made from it before anything binds.

Pure functions only: whether an address is loopback, whether a token is required, what the
start-up banner says. The server module does the binding; these are tested without a socket.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from tlvision.errors import UserError
from tlvision.export.format import runtime_names
from tlvision.serve.batching import BatchingConfig

TOKEN_ENVIRONMENT_VARIABLE = "TLVISION_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    run_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    runtime: str = "auto"
    token: str | None = None  # None: no token checked (only allowed on loopback or insecure)
    insecure_no_token: bool = False
    max_upload_mb: float = 20.0  # whole request body, enforced while it is read
    max_files: int = 16  # images per request
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    log_level: str = "info"
    access_log: bool = False  # one line per request: off by default, it costs time under load
    allowed_hosts: tuple[str, ...] = ()  # Host names answered beyond loopback and the bound one
    reject: str = "off"  # unknown inputs: auto, off or a score threshold (predict --reject)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and 'localhost'."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def validate_config(config: ServeConfig) -> None:
    """Refuse, before binding, what would be unsafe or could never work."""
    if config.runtime not in runtime_names():
        names = ", ".join(runtime_names())
        raise UserError(f"--runtime {config.runtime}: choose one of {names}")
    if config.token is not None and not config.token.strip():
        raise UserError(
            f"--token / {TOKEN_ENVIRONMENT_VARIABLE} is empty; give a long random string"
        )
    if not is_loopback(config.host) and config.token is None and not config.insecure_no_token:
        raise UserError(
            f"--host {config.host} is reachable from other machines, so serve needs a token: "
            f"pass --token TOKEN or set {TOKEN_ENVIRONMENT_VARIABLE} (clients send "
            "'Authorization: Bearer TOKEN'), or --insecure-no-token to serve anyone who can "
            "reach the port"
        )
    if not 0 <= config.port <= 65535:
        raise UserError(f"--port {config.port}: choose a port between 0 and 65535")
    if config.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb {config.max_upload_mb}: must be positive")
    if config.max_files < 1:
        raise UserError(f"--max-files {config.max_files}: must be at least 1")
    if config.batching.queue_size < config.max_files:
        raise UserError(
            f"--queue-size {config.batching.queue_size} is smaller than --max-files "
            f"{config.max_files}: a full request could never be queued; raise --queue-size"
        )


def startup_lines(config: ServeConfig, runtime: str, port: int) -> list[str]:
    """What the server prints before it listens: where, with what, and who may call it."""
    shown_host = f"[{config.host}]" if ":" in config.host else config.host
    lines = [
        f"tlvision serve: {config.run_dir} with {runtime} on http://{shown_host}:{port}/ "
        f"(uploads up to {config.max_upload_mb:g} MB, {config.max_files} images per request)"
    ]
    if config.token is not None:
        lines.append(
            "token required on every /v1/ call: send the header 'Authorization: Bearer TOKEN'"
        )
    elif is_loopback(config.host):
        lines.append("no token: only this machine can connect (loopback address)")
    else:
        lines.append(
            f"WARNING: --insecure-no-token: anyone who can reach {config.host}:{port} "
            "can use this model; pass --token to require one"
        )
    return lines
