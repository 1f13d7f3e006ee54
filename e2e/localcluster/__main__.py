"""``python -m e2e.localcluster up``: a local cluster to poke at, until Ctrl-C.

Starts the API, Prometheus, the process runner and the operator, applies the given VLMService
manifests (compressed to ``--time-scale``), opens one Service per VLMService, prints where
everything is (the kubeconfig works with ``kubectl``-style clients and ``vlm-operator inspect``)
and a status line per VLMService every few seconds. Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from e2e.localcluster import procs
from e2e.localcluster.cluster import LocalCluster

_REPO = Path(__file__).resolve().parents[2]


async def _up(args: argparse.Namespace) -> int:
    async with LocalCluster(
        time_scale=args.time_scale,
        namespace=args.namespace,
        workdir=Path(args.workdir) if args.workdir else None,
        operator=not args.no_operator,
        service_strategy=args.strategy,
    ) as cluster:
        names = []
        for manifest in args.manifest:
            applied = await cluster.apply(Path(manifest))
            if applied.get("kind") == "VLMService":
                names.append(str(applied["metadata"]["name"]))
        print(f"API server   {cluster.api_url}")
        print(f"kubeconfig   {cluster.kubeconfig}")
        print(f"Prometheus   {cluster.prometheus_url}")
        print(f"logs         {cluster.logs}  (pods: {cluster.workdir / 'pods'})")
        for note in cluster.notes:
            print(f"note: {note}")
        for name in names:
            service = await cluster.service(name)
            print(f"Service {name:<12} {service.url}/v1/chat/completions")
        print("Ctrl-C to stop.", flush=True)
        for _ in range(int(args.duration / args.interval) if args.duration else sys.maxsize):
            await asyncio.sleep(args.interval)
            for name in names:
                snap = await cluster.snapshot(name)
                per_pod = " ".join(f"{p.running or 0:.0f}" for p in snap.pods)
                print(
                    f"{name}: ready {snap.ready}/{snap.desired} in-flight/pod [{per_pod}] "
                    f"queue {snap.waiting:.0f}",
                    flush=True,
                )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a local cluster and keep it running")
    up.add_argument(
        "manifest",
        nargs="*",
        default=[str(_REPO / "manifests" / "fake-demo.yaml")],
        help="VLMService manifests to apply (default: manifests/fake-demo.yaml)",
    )
    up.add_argument("--time-scale", type=float, default=5.0, help="compression factor (5)")
    up.add_argument("--namespace", default="default")
    up.add_argument("--workdir", help="keep logs, kubeconfig and Prometheus data here")
    up.add_argument("--no-operator", action="store_true", help="do not start the operator")
    up.add_argument(
        "--strategy",
        choices=("round-robin", "least-in-flight"),
        default="round-robin",
        help="how the Services spread requests over ready pods",
    )
    up.add_argument("--interval", type=float, default=5.0, help="seconds between status lines")
    up.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    args = parser.parse_args(argv)
    if not args.time_scale > 0:
        parser.error("--time-scale: must be positive")
    if not args.interval > 0:
        parser.error("--interval: must be positive")
    procs.install_signal_handlers()
    try:
        return asyncio.run(_up(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
