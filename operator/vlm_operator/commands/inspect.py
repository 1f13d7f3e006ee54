"""``vlm-operator inspect NAMESPACE/NAME``: why did it scale?

Prints the last minutes of one VLMService as the operator saw them in
Prometheus (pods, in flight per pod against the limit, queue, P95 against the
target), and optionally draws them into a PNG. The work is in
:mod:`vlm_operator.inspection`; this module only maps flags and errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlm_operator.cli import UsageError
from vlm_operator.inspection import (
    DEFAULT_P95_TARGET_SECONDS,
    ExtraMissing,
    PrometheusUnreachable,
    connect,
    format_table,
    inspect_service,
    parse_service_ref,
    plot_png,
)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="NAMESPACE/NAME", help="The VLMService to inspect.")
    parser.add_argument(
        "--prometheus-url",
        required=True,
        help="Prometheus that scrapes the gates (the operator's --prometheus-url).",
    )
    parser.add_argument(
        "--minutes", type=_positive, default=30.0, help="How far back to look (default 30)."
    )
    parser.add_argument(
        "--step",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="Seconds between rows (default: about 30 rows over the range).",
    )
    parser.add_argument(
        "--p95-target",
        type=_positive,
        default=DEFAULT_P95_TARGET_SECONDS,
        metavar="SECONDS",
        help=(
            "The service's spec.autoscaling.p95LatencyTargetSeconds "
            f"(default {DEFAULT_P95_TARGET_SECONDS:g})."
        ),
    )
    parser.add_argument("--png", type=Path, default=None, help="Also draw the series into a PNG.")
    parser.add_argument(
        "--timeout",
        type=_positive,
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
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--prometheus-url: expected an http:// or https:// URL, got {url!r}")
    token = None
    if args.bearer_token_file is not None:
        try:
            token = args.bearer_token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"--bearer-token-file: cannot read it: {exc}") from None
    try:
        client = connect(
            url, timeout_seconds=args.timeout, bearer_token=token, ca_file=args.ca_file
        )
        inspection = inspect_service(
            client,
            service,
            minutes=args.minutes,
            step_seconds=args.step,
            p95_target_seconds=args.p95_target,
        )
    except ExtraMissing as exc:
        raise UsageError(str(exc)) from None
    except PrometheusUnreachable as exc:
        raise UsageError(
            f"--prometheus-url: no answer from {url} within {args.timeout:g} s: {exc}"
        ) from None
    sys.stdout.write(format_table(inspection))
    if args.png is not None:
        try:
            plot_png(inspection, args.png)
        except ExtraMissing as exc:
            raise UsageError(f"--png: {exc}") from None
        except OSError as exc:
            raise UsageError(f"--png: cannot write {args.png}: {exc}") from None
        print(f"wrote {args.png}")
    return 1 if inspection.empty else 0
