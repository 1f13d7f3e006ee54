"""``vlm-operator inspect NAMESPACE/NAME``: why did it scale?

Prints the last minutes of one VLMService as the operator saw them in
Prometheus (pods, in flight per pod against the limit, queue, P95 against the
target), and optionally draws them into a PNG. The work is in
:mod:`vlm_operator.inspection`; this module only maps flags and errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from vlm_operator.cli import UsageError
from vlm_operator.commands._env import http_url
from vlm_operator.inspection import (
    DEFAULT_P95_TARGET_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    ExtraMissing,
    PrometheusError,
    PrometheusRefused,
    PrometheusTLSFailed,
    PrometheusUnreachable,
    check_plot_extra,
    check_points,
    connect,
    default_step,
    format_table,
    inspect_service,
    parse_service_ref,
    plot_png,
)

_DAY = 86400.0
#: Upper bounds, far beyond any use: past them a value is a typo, and an
#: infinite or huge one would overflow the date arithmetic or Prometheus's
#: durations instead of saying so.
_MAX_MINUTES = 366 * 24 * 60.0
_MAX_STEP = 366 * _DAY
_MAX_TIMEOUT = 3600.0
#: The bounds of spec.metrics.windowSeconds.
_MIN_WINDOW, _MAX_WINDOW = 5, 3600
#: Prometheus keeps time in milliseconds: a smaller step would be zero to it.
_MIN_STEP = 0.001


def _number(
    above: float, at_most: float, *, at_least: float | None = None
) -> Callable[[str], float]:
    """A finite number in ``(above, at_most]`` (or ``[at_least, at_most]``)."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        low_ok = value >= at_least if at_least is not None else value > above
        # NaN fails both comparisons, infinity the second.
        if not (low_ok and value <= at_most):
            low = f"at least {at_least:g}" if at_least is not None else f"above {above:g}"
            raise argparse.ArgumentTypeError(
                f"must be a number {low} and at most {at_most:.0f}, got {text!r}"
            )
        return value

    return convert


def _whole_seconds(least: int, most: int) -> Callable[[str], int]:
    """A whole number of seconds in ``[least, most]``, as the spec's field takes."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected whole seconds, got {text!r}") from None
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(
                f"must be from {least} to {most} seconds, got {text!r}"
            )
        return value

    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="NAMESPACE/NAME", help="The VLMService to inspect.")
    parser.add_argument(
        "--prometheus-url",
        required=True,
        help="Prometheus that scrapes the gates (the operator's --prometheus-url).",
    )
    parser.add_argument(
        "--minutes",
        type=_number(0, _MAX_MINUTES),
        default=30.0,
        help="How far back to look (default 30).",
    )
    parser.add_argument(
        "--step",
        type=_number(0, _MAX_STEP, at_least=_MIN_STEP),
        default=None,
        metavar="SECONDS",
        help="Seconds between rows (default: about 30 rows over the range).",
    )
    parser.add_argument(
        "--p95-target",
        type=_number(0, _DAY),
        default=DEFAULT_P95_TARGET_SECONDS,
        metavar="SECONDS",
        help=(
            "The service's spec.autoscaling.p95LatencyTargetSeconds "
            f"(default {DEFAULT_P95_TARGET_SECONDS:g})."
        ),
    )
    parser.add_argument(
        "--window",
        type=_whole_seconds(_MIN_WINDOW, _MAX_WINDOW),
        default=DEFAULT_WINDOW_SECONDS,
        metavar="SECONDS",
        help=(
            "The service's spec.metrics.windowSeconds, the rate window of the P95 and the "
            f"rates (default {DEFAULT_WINDOW_SECONDS}; a step longer than it widens it)."
        ),
    )
    parser.add_argument("--png", type=Path, default=None, help="Also draw the series into a PNG.")
    parser.add_argument(
        "--timeout",
        type=_number(0, _MAX_TIMEOUT),
        default=10.0,
        metavar="SECONDS",
        help="Give up on a Prometheus request after this long (default 10).",
    )
    parser.add_argument(
        "--bearer-token-file", type=Path, default=None, help="Bearer token for Prometheus."
    )
    parser.add_argument("--ca-file", default=None, help="CA bundle for an https:// Prometheus URL.")


def run(args: argparse.Namespace) -> int:
    try:
        service = parse_service_ref(args.service)
    except ValueError as exc:
        raise UsageError(f"NAMESPACE/NAME: {exc}") from None
    url: str = args.prometheus_url
    try:
        http_url(url)
    except ValueError as exc:
        raise UsageError(f"--prometheus-url: {exc}") from None
    # Every flag is checked before the first query: a mistake costs no wait.
    step = args.step if args.step is not None else default_step(args.minutes)
    try:
        check_points(args.minutes, step)
    except ValueError as exc:
        raise UsageError(f"--step/--minutes: {exc}") from None
    png = None if args.png is None else _png_target(args.png)
    token = None if args.bearer_token_file is None else _read_token(args.bearer_token_file)
    if args.ca_file is not None and not Path(args.ca_file).is_file():
        raise UsageError(f"--ca-file: no such file: {args.ca_file}")
    try:
        client = connect(
            url, timeout_seconds=args.timeout, bearer_token=token, ca_file=args.ca_file
        )
        inspection = inspect_service(
            client,
            service,
            minutes=args.minutes,
            step_seconds=step,
            p95_target_seconds=args.p95_target,
            window_seconds=args.window,
        )
    except ExtraMissing as exc:
        raise UsageError(str(exc)) from None
    except PrometheusError as exc:
        raise UsageError(_query_failure(exc, url, args)) from None
    sys.stdout.write(format_table(inspection))
    if png is not None:
        try:
            plot_png(inspection, png)
        except ExtraMissing as exc:
            raise UsageError(f"--png: {exc}") from None
        except OSError as exc:
            raise UsageError(f"--png: cannot write {png}: {exc.strerror or exc}") from None
        print(f"wrote {png}")
    return 1 if inspection.empty else 0


def _query_failure(exc: PrometheusError, url: str, args: argparse.Namespace) -> str:
    """One line naming the flag to look at: only a silence is a matter of the timeout."""
    if isinstance(exc, PrometheusUnreachable):
        return f"--prometheus-url: no answer from {url} within {args.timeout:g} s: {exc}"
    if isinstance(exc, PrometheusTLSFailed):
        if args.ca_file is not None:
            return f"--ca-file: {args.ca_file} does not verify {url}: {exc}"
        return f"--prometheus-url: cannot verify {url} (its CA: --ca-file): {exc}"
    if isinstance(exc, PrometheusRefused):
        return f"--prometheus-url: Prometheus at {url} refused the query: {exc}"
    return f"--prometheus-url: the query to {url} failed: {exc}"


def _png_target(path: Path) -> Path:
    """Where ``--png`` writes, checked before any query (as simulate's ``--plot``)."""
    try:
        check_plot_extra()
    except ExtraMissing as exc:
        raise UsageError(f"--png: {exc}") from None
    if path.is_dir():
        raise UsageError(f"--png: {str(path)!r} is a directory, not a file name")
    # matplotlib would append .png to a name without it, and fail on another
    # extension only after the queries; the message must name the real file.
    if path.suffix.lower() != ".png":
        raise UsageError(f"--png: {str(path)!r}: the file name must end in .png")
    if not path.parent.is_dir():
        raise UsageError(f"--png: {path}: no directory {str(path.parent)!r}")
    return path


def _read_token(path: Path) -> str:
    """The bearer token: one line of printable ASCII, as an HTTP header can carry it."""
    try:
        token = path.read_bytes().decode("ascii").strip()
    except OSError as exc:
        raise UsageError(f"--bearer-token-file: cannot read it: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(
            f"--bearer-token-file: {path}: not a token (bytes that are not ASCII text)"
        ) from None
    if not token:
        raise UsageError(f"--bearer-token-file: {path}: empty")
    if not token.isprintable() or any(c.isspace() for c in token):
        raise UsageError(
            f"--bearer-token-file: {path}: not a token (spaces or control characters inside)"
        )
    return token
