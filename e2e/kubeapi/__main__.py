"""``python -m e2e.kubeapi``: the emulated API server as its own process.

Prints ``kubeapi ready at <url>`` on stdout once it serves (the line scripts wait for) and exits
cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import yaml

from . import PODMONITOR_CRD, APIError, KubeAPIServer


async def _serve(args: argparse.Namespace) -> None:
    server = KubeAPIServer(
        history_limit=args.history_limit, validate_builtins=args.validate_builtins
    )
    await server.start(args.host, args.port)
    for path in args.crds:
        server.load_crds(path)
    if args.podmonitor_crd:
        server.load_crds(PODMONITOR_CRD)
    if args.kubeconfig:
        server.write_kubeconfig(args.kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"kubeapi ready at {server.url}", flush=True)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.kubeapi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--crds",
        action="append",
        default=[],
        help="a CRD YAML file or a directory of them (repeatable)",
    )
    parser.add_argument(
        "--podmonitor-crd",
        action="store_true",
        help="also register the bundled monitoring.coreos.com PodMonitor CRD",
    )
    parser.add_argument("--kubeconfig", help="write a kubeconfig for the server here")
    parser.add_argument(
        "--history-limit",
        type=int,
        default=10_000,
        help="watch events kept for resuming (older resourceVersions get 410)",
    )
    parser.add_argument("--validate-builtins", action="store_true",
                        help="validate built-in kinds against their OpenAPI schemas "
                        "(kubernetes-validate; ~20 ms per write)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except (OSError, ValueError, yaml.YAMLError, APIError) as error:
        print(f"kubeapi: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
