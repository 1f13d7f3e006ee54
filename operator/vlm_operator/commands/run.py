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
from typing import TYPE_CHECKING

from vlm_operator.commands._env import (
    add_env_argument,
    flag_type,
    http_url,
    port,
    port_or_zero,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from vlm_operator.kube import KubeClient
    from vlm_operator.operator_metrics import OperatorMetrics
    from vlm_operator.signals import SignalReader

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
    # Through add_env_argument, so a bad $VLM_OPERATOR_PROMETHEUS_URL is named as such.
    add_env_argument(
        prom,
        "VLM_OPERATOR_",
        "--prometheus-url",
        http_url,
        None,
        "Prometheus base URL; a VLMService may override it (spec.metrics.prometheusUrl)",
    )
    prom.add_argument(
        "--prometheus-bearer-token-file",
        help="file with a bearer token, sent to --prometheus-url only (never to a service's URL)",
    )
    prom.add_argument(
        "--prometheus-ca-file", help="CA bundle to verify Prometheus's TLS (besides the system's)"
    )
    prom.add_argument(
        "--prometheus-insecure", action="store_true", help="do not verify Prometheus's TLS"
    )
    prom.add_argument(
        "--prometheus-timeout",
        type=flag_type(positive_float),
        default=5.0,
        help=(
            "seconds a query may wait for each piece of its answer, twice that for the "
            "whole, before it counts as failed (default 5)"
        ),
    )
    ops = parser.add_argument_group("the operator itself")
    liveness = ops.add_mutually_exclusive_group()
    liveness.add_argument(
        "--liveness-port", type=flag_type(port), help="serve kopf's liveness probe on this port"
    )
    liveness.add_argument(
        "--liveness", metavar="URL", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    ops.add_argument(
        "--metrics-port",
        type=flag_type(port_or_zero),
        help="serve the operator's /metrics on this port (0: any free port)",
    )
    ops.add_argument(
        "--metrics-address",
        help="address of /metrics (default 0.0.0.0; only with --metrics-port)",
    )
    ops.add_argument(
        "--operator-image",
        default=os.environ.get("VLM_OPERATOR_IMAGE", DEFAULT_OPERATOR_IMAGE),
        help="image of the gate and fake-model containers [env VLM_OPERATOR_IMAGE]",
    )
    ops.add_argument(
        "--kube-workers",
        type=flag_type(positive_int),
        default=8,
        help="threads (and connections) for the operator's own API requests (default 8)",
    )
    ops.add_argument(
        "--watch-podmonitors",
        action="store_true",
        help="watch PodMonitors (needs their CRD, and list/watch on them), so that one "
        "deleted by hand is re-created at its service's next cycle, not at the refresh",
    )
    ops.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _check_file(flag: str, path: str | None) -> None:
    from vlm_operator.cli import UsageError

    if path is not None and not Path(path).is_file():
        raise UsageError(f"{flag}: no such file: {path}")


def run(args: argparse.Namespace) -> int:
    import kopf

    from vlm_operator.cli import UsageError
    from vlm_operator.operator_metrics import OperatorMetrics
    from vlm_operator.reconcile import OperatorContext

    _check_file("--kubeconfig", args.kubeconfig)
    _check_file("--prometheus-bearer-token-file", args.prometheus_bearer_token_file)
    _check_file("--prometheus-ca-file", args.prometheus_ca_file)
    if args.liveness is not None:
        _check_url("--liveness", args.liveness, host_required=False)
    liveness = args.liveness
    if args.liveness_port is not None:
        liveness = f"http://0.0.0.0:{args.liveness_port}/healthz"
    if liveness is not None:
        _check_liveness(liveness, "--liveness-port" if args.liveness is None else "--liveness")
    if args.metrics_address is not None and args.metrics_port is None:
        raise UsageError("--metrics-address: given without --metrics-port, nothing would listen")
    metrics_address = args.metrics_address or "0.0.0.0"

    # Credentials and the metrics port before kopf takes over logging: a
    # mistake in either is a usage error, said in one line.
    kube = _kube_client(args.kubeconfig, args.kube_workers)
    metrics = OperatorMetrics()
    metrics_port = None
    if args.metrics_port is not None:
        try:
            metrics_port = _serve_metrics(metrics, args.metrics_port, metrics_address)
        except BaseException:
            kube.close()
            raise

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    # One line per Prometheus query would drown everything else.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if metrics_port is not None:
        _LOG.info("metrics on http://%s:%d/metrics", metrics_address, metrics_port)
    signals = signal_reader(args, metrics)
    context = OperatorContext(
        kube=kube, signals=signals, metrics=metrics, operator_image=args.operator_image
    )
    if args.prometheus_url is None:
        _LOG.warning("no --prometheus-url: only services with metrics.prometheusUrl autoscale")

    import vlm_operator.handlers  # (registers the handlers)

    if args.watch_podmonitors:
        vlm_operator.handlers.watch_pod_monitors()

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


def _check_url(flag: str, value: str, *, host_required: bool = True) -> None:
    from vlm_operator.cli import UsageError

    try:
        http_url(value, host_required=host_required)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _check_liveness(url: str, flag: str) -> None:
    """What kopf would fail on later, with a traceback: a scheme other than http (it
    serves none other), or an address it cannot listen on (a port in use)."""
    import socket
    from urllib.parse import urlsplit

    from vlm_operator.cli import UsageError

    parts = urlsplit(url)
    if parts.scheme != "http":
        raise UsageError(f"{flag}: kopf serves its liveness probe over http only, got {url!r}")
    host, port = parts.hostname or None, parts.port or 80
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise UsageError(
            f"{flag}: cannot listen on {host or '*'}:{port}: {exc.strerror or exc}"
        ) from None


def _kube_client(kubeconfig: str | None, workers: int) -> KubeClient:
    """The API client, or a usage error saying which credentials failed and why."""
    import kubernetes
    import yaml

    from vlm_operator.cli import UsageError
    from vlm_operator.kube import KubeClient

    try:
        return KubeClient.from_environment(kubeconfig, workers=workers)
    except (
        kubernetes.config.ConfigException,
        yaml.YAMLError,
        OSError,
        # The loader indexes whatever YAML it got: a list or a number where
        # it expects a mapping fails with these, and bytes that are no UTF-8
        # with a ValueError.
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
    ) as exc:
        reason = " ".join(str(exc).split())  # YAML errors span lines
        variable = os.environ.get("KUBECONFIG")
        if kubeconfig is not None:
            message = f"--kubeconfig: {kubeconfig}: not a usable kubeconfig: {reason}"
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            message = f"in-cluster credentials not usable (or give --kubeconfig): {reason}"
        elif variable:
            message = f"--kubeconfig: $KUBECONFIG={variable}: not a usable kubeconfig: {reason}"
        else:
            message = (
                "--kubeconfig: not in a cluster ($KUBERNETES_SERVICE_HOST unset) and no "
                f"kubeconfig found (~/.kube/config, $KUBECONFIG): {reason}"
            )
        raise UsageError(message) from None


def _serve_metrics(metrics: OperatorMetrics, port_number: int, address: str) -> int:
    """Serve /metrics; the port it listens on, or a usage error naming both flags."""
    from vlm_operator.cli import UsageError

    try:
        server, _ = metrics.serve(port_number, address)
    except OSError as exc:  # a name that does not resolve, an address not ours, a port in use
        raise UsageError(
            f"--metrics-address/--metrics-port: cannot listen on {address}:{port_number}: "
            f"{exc.strerror or exc}"
        ) from None
    return int(server.server_port)


def signal_reader(args: argparse.Namespace, metrics: OperatorMetrics) -> SignalReader:
    """The operator's Prometheus reader: its own client for ``--prometheus-url``, and one
    for the URLs services name, so that a slow server of theirs cannot take its
    connections. The token goes, through either, only to ``--prometheus-url``'s origin
    (a service may name another path of it)."""
    import httpx

    from vlm_operator.signals import SignalReader, build_client

    timeout = httpx.Timeout(args.prometheus_timeout, connect=min(2.0, args.prometheus_timeout))

    def client() -> httpx.AsyncClient:
        return build_client(
            bearer_token_file=args.prometheus_bearer_token_file,
            token_url=args.prometheus_url,
            ca_file=args.prometheus_ca_file,
            insecure=args.prometheus_insecure,
            timeout=timeout,
        )

    return SignalReader(
        client(),
        default_url=args.prometheus_url,
        metrics=metrics,
        service_client=client(),
        deadline_seconds=2 * args.prometheus_timeout,
    )
