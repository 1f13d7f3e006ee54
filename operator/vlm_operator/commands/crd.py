"""``vlm-operator crd``: print the VLMService CustomResourceDefinition.

The CRD is generated from the API models, so it can never disagree with what
the operator parses. ``make crd`` writes it to ``crds/vlmservice.yaml``.
"""

from __future__ import annotations

import argparse

from vlm_operator.crd import crd_yaml
from vlm_operator.yamlio import write_utf8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Install it with: vlm-operator crd | kubectl apply --server-side -f -"


def run(args: argparse.Namespace) -> int:
    write_utf8(crd_yaml())
    return 0
