"""``vlm-operator run``: run the operator (kopf, standalone, no peering).

One operator instance per cluster (or per set of namespaces) is the supported
shape: the Deployment of the Helm chart has one replica and a Recreate
strategy, so kopf's peering (which needs its own CRD) is not used.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
from pathlib import Path

from vlm_operator.commands._env import http_url, non_negative_int, positive_float, positive_int

_LOG = logging.getLogger("vlm_operator.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_operator.render import DEFAULT_OPERATOR_IMAGE

    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; glob patterns as kopf takes them)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
    )
    prom = parser.add_argument_group("Prometheus (the signals)")
    prom.add_argument(
        "--prometheus-url",
        type=http_url,
        default=os.environ.get("VLM_OPERATOR_PROMETHEUS_URL"),
        help="Prometheus base URL; a VLMService may override it (spec.metrics.prometheusUrl) "
        "[env VLM_OPERATOR_PROMETHEUS_URL]",
    )
    prom.add_argument(
        "--prometheus-bearer-token-file",
        help="file with a bearer token, sent to --prometheus-url only (never to a service's URL)",
    )
    prom.add_argument("--prometheus-ca-file", help="CA bundle to verify Prometheus's TLS")
    prom.add_argument(
        "--prometheus-insecure", action="store_true", help="do not verify Prometheus's TLS"
    )
    prom.add_argument(
        "--prometheus-timeout",
        type=positive_float,
        default=5.0,
        help="seconds before a query counts as failed (default 5)",
    )
    ops = parser.add_argument_group("the operator itself")
    liveness = ops.add_mutually_exclusive_group()
    liveness.add_argument(
        "--liveness-port", type=positive_int, help="serve kopf's liveness probe on this port"
    )
    liveness.add_argument(
        "--liveness", metavar="URL", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    ops.add_argument(
        "--metrics-port",
        type=non_negative_int,
        help="serve the operator's /metrics on this port (0: any free port)",
    )
    ops.add_argument(
        "--metrics-address", default="0.0.0.0", help="address of /metrics (default 0.0.0.0)"
    )
    ops.add_argument(
        "--operator-image",
        default=os.environ.get("VLM_OPERATOR_IMAGE", DEFAULT_OPERATOR_IMAGE),
        help="image of the gate and fake-model containers [env VLM_OPERATOR_IMAGE]",
    )
    ops.add_argument(
        "--kube-workers",
        type=positive_int,
        default=8,
        help="threads (and connections) for the operator's own API requests (default 8)",
    )
    ops.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _check_file(flag: str, path: str | None) -> None:
    from vlm_operator.cli import UsageError

    if path is not None and not Path(path).is_file():
        raise UsageError(f"{flag}: no such file: {path}")


def run(args: argparse.Namespace) -> int:
    import httpx
    import kopf

    from vlm_operator.kube import KubeClient
    from vlm_operator.operator_metrics import OperatorMetrics
    from vlm_operator.reconcile import OperatorContext
    from vlm_operator.signals import SignalReader, build_client

    _check_file("--kubeconfig", args.kubeconfig)
    _check_file("--prometheus-bearer-token-file", args.prometheus_bearer_token_file)
    _check_file("--prometheus-ca-file", args.prometheus_ca_file)
    if args.liveness is not None:
        _check_url("--liveness", args.liveness)
    liveness = args.liveness
    if args.liveness_port is not None:
        liveness = f"http://0.0.0.0:{args.liveness_port}/healthz"

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    # One line per Prometheus query would drown everything else.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    kube = KubeClient.from_environment(args.kubeconfig, workers=args.kube_workers)
    metrics = OperatorMetrics()
    if args.metrics_port is not None:
        server, _ = metrics.serve(args.metrics_port, args.metrics_address)
        _LOG.info("metrics on http://%s:%d/metrics", args.metrics_address, server.server_port)
    client = build_client(
        bearer_token_file=args.prometheus_bearer_token_file,
        token_url=args.prometheus_url,
        ca_file=args.prometheus_ca_file,
        insecure=args.prometheus_insecure,
        timeout=httpx.Timeout(args.prometheus_timeout, connect=min(2.0, args.prometheus_timeout)),
    )
    signals = SignalReader(client, default_url=args.prometheus_url, metrics=metrics)
    context = OperatorContext(
        kube=kube, signals=signals, metrics=metrics, operator_image=args.operator_image
    )
    if args.prometheus_url is None:
        _LOG.warning("no --prometheus-url: only services with metrics.prometheusUrl autoscale")

    import vlm_operator.handlers  # noqa: F401  (registers the handlers)

    # Everything imported so far lives as long as the process: out of the
    # garbage collector's way, a full collection walks only what the loops
    # allocate (with a thousand services, the modules are most of the heap).
    gc.collect()
    gc.freeze()
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
        memo=kopf.Memo(context=context),
    )
    return 0


def _check_url(flag: str, value: str) -> None:
    from vlm_operator.cli import UsageError

    try:
        http_url(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
