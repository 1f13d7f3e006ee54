"""YAML in and out, the same way everywhere.

Generated files (the CRD, rendered manifests, golden files) must be byte-for-byte
reproducible so that a test can compare them with a fresh generation: keys are
sorted, block style, a fixed line width. Input is read with ``safe_load`` only.

This module is pure: it imports PyYAML and nothing from Kubernetes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

import yaml

__all__ = ["YAMLError", "dump_documents", "load_documents", "write_utf8"]


class YAMLError(ValueError):
    """Text that is not YAML; the message says where it broke."""


def dump_documents(documents: Iterable[Any]) -> str:
    """A YAML stream of the documents, keys sorted, each opened by ``---``."""
    parts = [
        "---\n"
        + yaml.safe_dump(
            document, sort_keys=True, default_flow_style=False, width=100, allow_unicode=True
        )
        for document in documents
    ]
    return "".join(parts)


def load_documents(text: str) -> list[Any]:
    """Every non-empty document of a YAML stream."""
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YAMLError(f"not valid YAML{where}: {problem}") from None


def write_utf8(text: str, stream: TextIO | None = None) -> None:
    """Write generated YAML as UTF-8 whatever the locale says (descriptions use α)."""
    stream = stream if stream is not None else sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text)
        return
    stream.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()
