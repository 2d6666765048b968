"""The commands that use a trained model: `tlvision evaluate`, `predict`, `export` and `serve`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tlvision.data.label_table import DEFAULT_SCORED_SPLIT, SCORED_SPLITS
from tlvision.errors import UserError
from tlvision.export.format import EXPORT_FORMATS, runtime_names
from tlvision.jsonio import json_text

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

REJECT_HELP = (
    "unknown inputs: auto (the threshold calibrated on val at training time; older runs: "
    "`tlvision calibrate RUN_DIR` first), off (default), or a score threshold; adds ood_score "
    "and unknown to each prediction, and an unknown image gets no class"
)
TTA_HELP = "test-time augmentation: average the centre crop, its mirror and the 4 corner crops"


def add_commands(commands: Commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, per-class P/R/F1, confusion matrix (multi-label: mAP, F1, per-class AP)",
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument(
        "split_dir", type=Path, metavar="DATA_SPLIT",
        help="a split folder (DATA/val), a label table (DATA/val.csv) or a DATA folder holding "
        "label tables (see --split)",
    )  # fmt: skip
    evaluate.add_argument(
        "--split", choices=SCORED_SPLITS, default=DEFAULT_SCORED_SPLIT,
        help=f"in a DATA folder: which table (or folder) to score (default {DEFAULT_SCORED_SPLIT})",
    )  # fmt: skip
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    evaluate.add_argument("--device", default="auto", help="where the model runs (default auto)")
    evaluate.add_argument("--tta", action="store_true", help=TTA_HELP)
    evaluate.add_argument(
        "--runtime", default="auto", help=f"one of {', '.join(runtime_names())} (default auto)"
    )
    evaluate.set_defaults(handler=command_evaluate)
    add_predict_command(commands)
    add_export_command(commands)
    add_serve_command(commands)


def command_evaluate(arguments: argparse.Namespace) -> int:
    from tlvision import api

    report = api.load(arguments.run_dir).evaluate(
        arguments.split_dir,
        split=arguments.split,
        device=arguments.device,
        tta=arguments.tta,
        runtime=arguments.runtime,
    )
    print(json_text(report.to_json()) if arguments.json else report.to_text())
    return 0


def command_predict(arguments: argparse.Namespace) -> int:
    from tlvision.compute.distributed import launched_by_torchrun

    if arguments.jsonl is not None:
        return _command_predict_jsonl(arguments)
    if launched_by_torchrun():
        raise UserError("under torchrun, predict writes JSON lines: pass --jsonl FILE")
    from tlvision import api

    run = api.load(arguments.run_dir)
    predictions = run.predict(
        arguments.paths, top_k=arguments.top_k, device=arguments.device, tta=arguments.tta,
        batch_size=arguments.batch_size, runtime=arguments.runtime, workers=arguments.workers,
        reject=arguments.reject,
    )  # fmt: skip
    if arguments.json:
        print(json_text([prediction.to_json() for prediction in predictions]))
    else:
        for prediction in predictions:
            print(prediction.to_text())
    if arguments.maps is not None:
        from tlvision.inference.class_maps import class_mapper, write_class_maps

        readable = [item.path for item in predictions if item.error is None and item.path]
        written = write_class_maps(
            class_mapper(run.model()), readable, arguments.maps, top_k=arguments.top_k
        )
        print(f"wrote {len(written)} class-map images to {arguments.maps}", file=sys.stderr)
    failed = [prediction for prediction in predictions if prediction.error is not None]
    if failed:
        print(f"{len(failed)} of {len(predictions)} files could not be read", file=sys.stderr)
        return 1
    return 0


def _command_predict_jsonl(arguments: argparse.Namespace) -> int:
    """Streaming: one JSON line per image as it goes, flat memory, sharded under torchrun."""
    from tlvision.inference.stream import predict_to_jsonl

    if arguments.maps is not None:
        raise UserError("--maps goes without --jsonl: draw maps for a handful of images")
    total, failed = predict_to_jsonl(
        arguments.run_dir, arguments.paths, arguments.jsonl, top_k=arguments.top_k,
        batch_size=arguments.batch_size, decoders=arguments.workers,
        device_name=arguments.device, runtime=arguments.runtime, tta=arguments.tta,
        reject=arguments.reject,
    )  # fmt: skip
    if failed and int(os.environ.get("RANK", "0")) == 0:
        print(f"{failed} of {total} files could not be read", file=sys.stderr)
    return 1 if failed else 0


def add_predict_command(commands: Commands) -> None:
    predict = commands.add_parser("predict", help="classify image files or folders")
    predict.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    predict.add_argument("paths", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    predict.add_argument("--top-k", type=int, default=1)
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--tta", action="store_true", help=TTA_HELP)
    predict.add_argument(
        "--maps", type=Path, metavar="OUT_DIR",
        help="also write per image a heat map of the top-k classes over the whole image",
    )  # fmt: skip
    predict.add_argument(
        "--jsonl",
        type=Path,
        metavar="FILE",
        help="stream: one JSON line per image as it goes, memory flat for any number of files "
        "(required under torchrun: the ranks' parts are merged into FILE in input order)",
    )
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--workers", type=int, help="decoding threads (default: one per core)")
    predict.add_argument(
        "--runtime", default="auto",
        help=f"one of {', '.join(runtime_names())}; auto: ONNX Runtime on a CPU where measured "
        "faster (exported into RUN/export/ once, for 500+ images or when an export exists), "
        "torch on a GPU",
    )  # fmt: skip
    predict.add_argument("--reject", default="off", metavar="auto|off|SCORE", help=REJECT_HELP)
    predict.set_defaults(handler=command_predict)


def command_export(arguments: argparse.Namespace) -> int:
    from tlvision.export.exporter import ExportRequest, export_model

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
        print(json_text(document))
    return 0


def add_export_command(commands: Commands) -> None:
    export = commands.add_parser(
        "export", help="the model as ONNX or TorchScript, checked against torch before written"
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument(
        "--format", default="onnx", help=f"one of {', '.join(EXPORT_FORMATS)} (default onnx)"
    )
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
        raise UserError(
            f"--max-batch {arguments.max_batch}, --queue-size {arguments.queue_size}, "
            f"--batch-wait-ms {arguments.batch_wait_ms}: the first two must be at least 1, the "
            "last 0 or more"
        )
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
            allowed_hosts=tuple(arguments.allowed_host),
            reject=arguments.reject,
        )
    )
    return 0


def add_serve_command(commands: Commands) -> None:
    from tlvision.serve.batching import BatchingConfig
    from tlvision.serve.config import TOKEN_ENVIRONMENT_VARIABLE, ServeConfig

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
        "--runtime", default=defaults.runtime,
        help=f"one of {', '.join(runtime_names())}; auto: ONNX Runtime when installed and measured "
        "faster here, else torch",
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
    serve.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="also answer requests whose Host header names NAME (repeatable); by default only "
        "loopback names and the --host address are answered (400 otherwise), which keeps web "
        "pages from reaching the server through DNS rebinding",
    )  # fmt: skip
    serve.add_argument("--reject", default="off", metavar="auto|off|SCORE", help=REJECT_HELP)
    serve.set_defaults(handler=command_serve)
