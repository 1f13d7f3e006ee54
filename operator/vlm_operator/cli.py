"""The `vlm-operator` command line.

Each subcommand lives in its own module under ``vlm_operator.commands``,
exposing ``add_arguments(parser)`` and ``run(args) -> int``; this module only
wires them together, so that importing the CLI stays cheap and ``--help``
never needs the heavy dependencies of one subcommand. Bad input raises
:class:`UsageError`, printed without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from vlm_operator import __version__


class UsageError(Exception):
    """Bad input from the user: printed as one message, exit status 2."""


class _Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


#: subcommand → (module, one-line help). Keep sorted by workflow, not name.
COMMANDS: dict[str, tuple[str, str]] = {
    "crd": ("vlm_operator.commands.crd", "Print the VLMService CustomResourceDefinition."),
    "render": ("vlm_operator.commands.render", "Print the objects a VLMService creates."),
    "run": ("vlm_operator.commands.run", "Run the operator (kopf): children, autoscaling, status."),
    "gate": ("vlm_operator.commands.gate", "Run the concurrency gate in front of a model server."),
    "fake-model": ("vlm_operator.commands.fake_model", "Run the latency-emulating fake model."),
    "model-server": ("vlm_operator.commands.model_server", "Serve Qwen3-VL on CPU (Transformers)."),
    "inspect": ("vlm_operator.commands.inspect", "Show why a VLMService scaled, from Prometheus."),
    "simulate": ("vlm_operator.commands.simulate", "Compare scaling policies on a trace, offline."),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, only that subcommand's arguments.

    A subcommand's module is imported to add its arguments, and its imports stay
    for the life of the process: the gate, a sidecar in every model pod, would
    otherwise carry the operator's, the simulator's and the fake model's (about
    20 MB of its RSS). The others are still listed, for ``--help``.
    """
    parser = argparse.ArgumentParser(
        prog="vlm-operator",
        description=(
            "Run CPU vision-language models on Kubernetes behind a concurrency gate, "
            "and autoscale them from Prometheus signals."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        if only is None or name == only:
            module = cast(_Command, importlib.import_module(module_name))
            module.add_arguments(command_parser)
    return parser


def _command_named(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


#: What writing the output fails with when the output cannot take it (``> /dev/full``, a
#: full disk or quota, a file too large, a dead terminal), unlike a socket's errors.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    named = _command_named(argv)
    parser = build_parser(named if named in COMMANDS else None)
    args = parser.parse_args(argv)
    module = cast(_Command, importlib.import_module(args._module))
    try:
        status = int(module.run(args))
        # Printed output may still sit in the buffer: a failure to write it
        # belongs here, not to the interpreter's exit.
        if sys.stdout is not None:
            sys.stdout.flush()
        return status
    except UsageError as exc:
        print(f"vlm-operator {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): no traceback, and none at exit
        # either, when Python flushes stdout into the closed pipe.
        _discard_stdout()
        return 1
    except OSError as exc:
        # Only a failed write of the output (a file the command opened would
        # carry its name); anything else is a bug and keeps its traceback.
        if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
            raise
        print(
            f"vlm-operator {args.command}: error: cannot write the output: {exc.strerror or exc}",
            file=sys.stderr,
        )
        _discard_stdout()
        return 1


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the exit's flush of what is left cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture): nothing is flushed at exit
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
