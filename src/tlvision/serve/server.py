"""Start-up: check the configuration, bind, load the model, say who may call, then listen."""

from __future__ import annotations

import socket
import sys

from tlvision.errors import UserError
from tlvision.runs.reader import read_model_json
from tlvision.serve.config import ServeConfig, startup_lines, validate_config


def bind_listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads: a busy port is a one-line error at
    once, and --port 0 gets a free port that the start-up lines then name."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host.strip("[]"), port))
    except OSError as error:
        listener.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({error.strerror or error}); "
            "choose another --port (0 picks a free one) or --host"
        ) from error
    return listener


def run_server(config: ServeConfig) -> None:
    """Serve until interrupted. Everything that can be refused is refused before binding."""
    validate_config(config)
    try:
        import uvicorn

        from tlvision.serve.app import create_app
    except ImportError as error:
        raise UserError(
            f"tlvision serve needs the serve extra ({error.name} is missing): "
            "pip install 'tlvision[serve]'"
        ) from error
    from tlvision.inference.class_maps import open_class_mapper
    from tlvision.inference.ood import rejection_of_run
    from tlvision.inference.runtime import open_classifier

    metadata = read_model_json(config.run_dir)
    rejection = rejection_of_run(config.run_dir, config.reject)  # refused before binding
    listener = bind_listening_socket(config.host, config.port)
    port = int(listener.getsockname()[1])
    classifier = open_classifier(config.run_dir, config.runtime)
    app = create_app(
        classifier, open_class_mapper(config.run_dir), config, metadata, rejection=rejection
    )
    for line in startup_lines(config, classifier.runtime, port):
        print(line, file=sys.stderr, flush=True)
    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=port,
        log_level=config.log_level,
        access_log=config.access_log,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(server_config).run(sockets=[listener])
