"""YAML in and out, the same way everywhere.

Generated files (the CRD, rendered manifests, golden files) must be byte-for-byte
reproducible so that a test can compare them with a fresh generation: keys are
sorted, block style, a fixed line width. Input is read with PyYAML's safe
loader only, and a key given twice in one mapping is an error, as kubectl's
strict decoding makes it: PyYAML would keep the last silently, and a
manifest would not mean what it reads as.

This module is pure: it imports PyYAML and nothing from Kubernetes.
"""

from __future__ import annotations

import re
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


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping that gives a key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<``: merged keys may be overridden, as YAML means them to be
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class says so
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _KubectlLoader(_StrictLoader):
    """The strict loader reading numbers as kubectl does (go-yaml's rule): YAML 1.1 wants
    a dot and a signed exponent (``1.0e+3``), and reads ``5e-1`` and ``1.0e3`` as text."""


_KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def load_documents(text: str, *, kubectl_numbers: bool = False) -> list[Any]:
    """Every non-empty document of a YAML stream; with ``kubectl_numbers``, exponents
    without a dot or a sign (``5e-1``) are numbers, as kubectl reads a manifest."""
    loader = _KubectlLoader if kubectl_numbers else _StrictLoader
    try:
        return [doc for doc in yaml.load_all(text, Loader=loader) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YAMLError(f"not valid YAML{where}: {problem}") from None
    except ValueError as exc:
        # A scalar PyYAML cannot build: an integer of thousands of digits (Python's
        # limit on int parsing), a date like 2024-13-40. It gives no position.
        raise YAMLError(f"not valid YAML: {str(exc).split(':')[0]}") from None
    except RecursionError:
        # PyYAML builds nested collections recursively: ~1,000 levels exhaust the stack.
        raise YAMLError("not valid YAML: nested too deeply") from None


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
