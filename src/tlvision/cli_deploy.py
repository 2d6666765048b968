"""The commands that take a trained model out of the tool: `tlvision export` and `serve`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tlvision.errors import UserError

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def add_commands(commands: Commands) -> None:
    add_export_command(commands)
    add_serve_command(commands)


def command_export(arguments: argparse.Namespace) -> int:
    from tlvision.export import ExportRequest, export_model

    request = ExportRequest(
        run_dir=arguments.run_dir,
        format=arguments.format,
        out=arguments.out,
        class_maps=arguments.class_maps,
        quantize=arguments.quantize,
        data=arguments.data,
    )
    document = export_model(request, log=lambda message: print(message, file=sys.stderr))
    if arguments.json:
        from tlvision.checkpoint import json_text

        print(json_text(document))
    return 0


def add_export_command(commands: Commands) -> None:
    export = commands.add_parser(
        "export", help="the model as ONNX or TorchScript, checked against torch before written"
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export.add_argument(
        "--out", type=Path, help="default RUN_DIR/export/model[-maps][-int8].onnx or .pt"
    )
    export.add_argument(
        "--class-maps", action="store_true",
        help="fully convolutional variant: any height and width in, per-class score maps out",
    )  # fmt: skip
    export.add_argument("--quantize", choices=["int8"], help="ONNX Runtime static int8")
    export.add_argument(
        "--data", type=Path, metavar="DATA",
        help="images for the parity check (DATA/val, DATA/train); default: the run's data",
    )  # fmt: skip
    export.add_argument("--json", action="store_true", help="print the sidecar JSON")
    export.set_defaults(handler=command_export)


def command_serve(arguments: argparse.Namespace) -> int:
    import os

    from tlvision.serve.batching import BatchingConfig
    from tlvision.serve.config import TOKEN_ENVIRONMENT_VARIABLE, ServeConfig
    from tlvision.serve.server import run_server

    if arguments.max_batch < 1 or arguments.queue_size < 1 or arguments.batch_wait_ms < 0:
        raise UserError("--max-batch and --queue-size must be at least 1, --batch-wait-ms >= 0")
    run_server(
        ServeConfig(
            run_dir=arguments.run_dir,
            host=arguments.host,
            port=arguments.port,
            runtime=arguments.runtime,
            token=arguments.token or os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None,
            insecure_no_token=arguments.insecure_no_token,
            max_upload_mb=arguments.max_upload_mb,
            max_files=arguments.max_files,
            batching=BatchingConfig(
                max_batch=arguments.max_batch,
                max_wait_seconds=arguments.batch_wait_ms / 1000,
                queue_size=arguments.queue_size,
            ),
            log_level=arguments.log_level,
            access_log=arguments.access_log,
        )
    )
    return 0


def add_serve_command(commands: Commands) -> None:
    from tlvision.serve.batching import BatchingConfig
    from tlvision.serve.config import RUNTIMES, TOKEN_ENVIRONMENT_VARIABLE, ServeConfig

    defaults = ServeConfig(run_dir=Path("."))
    batching = BatchingConfig()
    serve = commands.add_parser(
        "serve", help="a web page and a JSON API for a trained run (FastAPI on uvicorn)"
    )
    serve.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    serve.add_argument(
        "--host",
        default=defaults.host,
        help="address to listen on (default %(default)s: this machine only; any other needs "
        "--token or --insecure-no-token)",
    )
    serve.add_argument("--port", type=int, default=defaults.port)
    serve.add_argument(
        "--runtime", default=defaults.runtime, choices=RUNTIMES,
        help="auto: ONNX Runtime when installed, else torch",
    )  # fmt: skip
    serve.add_argument(
        "--token",
        help=f"require 'Authorization: Bearer TOKEN' on every /v1/ call (or set "
        f"{TOKEN_ENVIRONMENT_VARIABLE})",
    )
    serve.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="allow a non-loopback --host without a token: anyone who can reach it may call",
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=defaults.max_upload_mb,
        help="request body limit, enforced while reading (default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--max-files", type=int, default=defaults.max_files,
        help="images per request (default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--max-batch", type=int, default=batching.max_batch,
        help="images per model call (default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--batch-wait-ms", type=float, default=batching.max_wait_seconds * 1000,
        help="how long a lone request waits for others to batch with (default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--queue-size", type=int, default=batching.queue_size,
        help="images waiting for the model before requests get 503 (default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--log-level", default=defaults.log_level,
        choices=["critical", "error", "warning", "info", "debug"],
    )  # fmt: skip
    serve.add_argument("--access-log", action="store_true", help="log one line per request")
    serve.set_defaults(handler=command_serve)
