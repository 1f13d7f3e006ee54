"""``vlm-operator render``: the objects the operator would create for a VLMService.

Reads VLMService manifests (a file or stdin), validates them as the API server
(the CRD's types: ``port: "8000"`` is no port) and the operator do, and prints
the child objects (Deployment, Service, PodDisruptionBudget, and the optional
PodMonitor and NetworkPolicy) as one YAML stream. Useful to review a spec
before applying it, to diff two specs, or to run the model without the
operator (``| kubectl apply -f -``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlm_operator.cli import UsageError
from vlm_operator.render import DEFAULT_OPERATOR_IMAGE, render_children
from vlm_operator.validation import InvalidManifest, load_services, spec_warnings
from vlm_operator.yamlio import dump_documents, write_utf8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="FILE",
        help="VLMService manifest (YAML, several documents allowed); '-' reads stdin",
    )
    parser.add_argument(
        "--operator-image",
        default=DEFAULT_OPERATOR_IMAGE,
        metavar="IMAGE",
        help="image of the gate sidecar and the fake runtime (default: %(default)s)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=None,
        metavar="NAMESPACE",
        help="namespace of the objects (default: the manifest's, else 'default')",
    )
    parser.epilog = (
        "Example: vlm-operator render -f manifests/fake-demo.yaml | kubectl apply -f -\n"
        "Exit status 2 and one line per problem when the manifest is not a valid VLMService\n"
        "(rules across fields, such as minReplicas <= maxReplicas, once each field is valid)."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    text = _read(args.filename)
    try:
        services = load_services(text)
    except InvalidManifest as exc:
        raise UsageError(_indented(str(exc))) from None
    documents = []
    for service in services:
        for warning in spec_warnings(service.spec):
            print(f"vlm-operator render: warning: {service.name}: {warning}", file=sys.stderr)
        namespace = args.namespace or service.namespace
        documents += render_children(
            service.name, namespace, service.spec, operator_image=args.operator_image
        )
    write_utf8(dump_documents(documents))
    return 0


def _read(filename: str) -> str:
    if filename == "-":
        return sys.stdin.read()
    path = Path(filename)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{filename}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{filename}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{filename}: not a text file (UTF-8 expected)") from None
    except OSError as exc:
        raise UsageError(f"{filename}: cannot read: {exc.strerror}") from None


def _indented(message: str) -> str:
    """Several problems: the first on the error line, the others indented below it."""
    return "\n  ".join(message.splitlines())
