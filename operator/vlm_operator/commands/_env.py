"""Flags that also come from the environment (how pods configure servers).

Each server flag ``--some-flag`` takes its default from ``<PREFIX>SOME_FLAG``;
a command-line value wins. Values from either source go through the same
checked converters, so a bad environment variable fails like a bad flag: exit
status 2 with a message naming the flag, its variable and the reason.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


def env_name(prefix: str, flag: str) -> str:
    """``VLM_GATE_`` + ``--max-in-flight`` → ``VLM_GATE_MAX_IN_FLIGHT``."""
    return prefix + flag.lstrip("-").upper().replace("-", "_")


def add_env_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    prefix: str,
    flag: str,
    convert: Callable[[str], Any],
    default: Any,
    help_text: str,
    *,
    required: bool = False,
) -> None:
    """Add ``flag`` whose default is read from its environment variable."""
    variable = env_name(prefix, flag)
    from_env = os.environ.get(variable)

    def checked(text: str) -> Any:
        try:
            return convert(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{exc} (flag {flag} or ${variable})") from None

    if from_env is not None:
        default = from_env  # argparse converts string defaults with ``type``
    parser.add_argument(
        flag,
        type=checked,
        default=default,
        required=required and from_env is None,
        help=f"{help_text} [env {variable}; default {default!r}]",
    )


def flag_type(convert: Callable[[str], T]) -> Callable[[str], T]:
    """``convert`` as a plain argparse ``type=`` whose error says why.

    argparse reports a ValueError as "invalid <function name> value", hiding
    the reason; an ArgumentTypeError's text is shown as it is.
    """

    def checked(text: str) -> T:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return checked


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"must be a number >= 0, got {text!r}")
    return value


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0 picks a free one)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host.strip("[]"), port


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"must be a port, 1-65535, got {value}")
    return value


def port_or_zero(text: str) -> int:
    """A TCP port, or 0 for any free one."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port, 0-65535 (0: any free port), got {value}")
    return value


def serving(run: Callable[[], int], flag: str, host: str, port: int) -> int:
    """``run()``, a server's whole life, with its failing to listen where ``flag``
    says (the port taken, an address not of this host, a name that does not
    resolve) made a usage error naming the flag; any other OSError goes on."""
    from vlm_operator.cli import UsageError

    try:
        return run()
    except OSError as exc:
        if isinstance(exc, socket.gaierror) or exc.errno in _BIND_ERRNOS:
            raise UsageError(
                f"{flag}: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        raise


_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def http_url(text: str, *, host_required: bool = True) -> str:
    """``http(s)://HOST[:PORT][/path]``, checked as far as a client will parse it.

    A URL to listen on may leave the host out (kopf's liveness endpoint binds
    the local host then): ``host_required=False``.
    """
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"must be an http(s) URL, got {text!r}")
    try:
        parts = urlsplit(text)
        # ``.port`` parses lazily: a bad or out-of-range port raises only here.
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"must be an http(s) URL, got {text!r}: {exc}") from None
    if host_required and not parts.hostname:
        raise ValueError(f"must be an http(s) URL with a host, got {text!r}")
    return text


def url_path(text: str) -> str:
    if text and not text.startswith("/"):
        raise ValueError(f"must start with '/' (or be empty), got {text!r}")
    return text
