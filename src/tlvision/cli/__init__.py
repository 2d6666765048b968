"""The `tlvision` command: train, evaluate, predict, export, serve, report, and the rest.

Each command is the Python API (tlvision.api) plus printing: a handler calls the API function
of the same name with the parsed options and prints what it returns. The training options are
made from TrainConfig's fields (tlvision.cli.options). Every problem the user can fix is a
UserError: one line on stderr naming the file and the fix, exit status 2, no traceback.
Importing this module loads no torch; building the parser loads none either. The top layer:
it may import every other.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence

from tlvision import __version__
from tlvision.compute.cores import prefer_passive_waiting
from tlvision.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from tlvision.cli import audit, data, deploy, models, report, train, unknown
    from tlvision.cli.help import complete_help

    parser = argparse.ArgumentParser(
        prog="tlvision",
        description="Train, evaluate and use an image classifier by transfer learning.",
    )
    parser.add_argument("--version", action="version", version=f"tlvision {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (train, deploy, data, audit, report, models, unknown):
        module.add_commands(commands)
    complete_help(parser)
    return parser


def never_fail_on_file_names() -> None:
    """Let stdout and stderr write any file name.

    A name that is not valid UTF-8 arrives as a str with lone surrogates (tlvision.data.layouts);
    a strict stream (a UTF-8 locale such as en_US.UTF-8, or PYTHONIOENCODING=utf-8) would raise
    on it half-way through a report. Such a stream writes it as a backslash escape instead
    ("\\udcff", the spelling of the JSON files). Streams that already cope are left alone:
    surrogateescape (C and C.UTF-8 locales) writes the name's original bytes, as `ls` does.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    from tlvision.cli.train import with_config_file

    prefer_passive_waiting()  # before anything loads torch
    never_fail_on_file_names()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = parser.parse_args(argv)
    try:
        if getattr(arguments, "config", None) is not None:
            arguments = with_config_file(parser, arguments, argv)
        arguments.argv = argv
        status: int = arguments.handler(arguments)
    except UserError as error:
        print(f"tlvision: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("tlvision: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    return status
