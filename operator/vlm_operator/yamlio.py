"""YAML in and out, the same way everywhere.

Generated files (the CRD, rendered manifests, golden files) must be byte-for-byte
reproducible so that a test can compare them with a fresh generation: keys are
sorted, block style, a fixed line width. Input is read with PyYAML's safe
loader only, and a key given twice in one mapping is an error, as kubectl's
strict decoding makes it: PyYAML would keep the last silently, and a
manifest would not mean what it reads as. Manifests are read, and strings
written, as kubectl reads plain scalars (go-yaml v2, not YAML 1.1): ``y`` is
true there and ``1e3`` a number, so a value validated here or rendered here is
the value the API server gets.

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
    """A YAML stream of the documents, keys sorted, each opened by ``---``.

    A string that kubectl would read as something else (``y``, ``08``, ``1e3``)
    is quoted, so that ``render | kubectl apply -f -`` sends the text it was given.
    """
    parts = [
        "---\n"
        + yaml.dump(
            document,
            Dumper=_KubectlSafeDumper,
            sort_keys=True,
            default_flow_style=False,
            width=100,
            allow_unicode=True,
        )
        for document in documents
    ]
    return "".join(parts)


_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"

# How kubectl reads a plain scalar (sigs.k8s.io/yaml, go-yaml v2's resolve):
# YAML 1.1's words, then with the underscores taken out, Go's integer syntax
# (0x, 0o, 0b, a leading 0 for octal), then a float with an optional dot and
# an exponent without a sign; no base 60.
_GO_WORDS: dict[str, str] = {"<<": _MERGE_TAG}
for _tag, _words in (
    (
        _BOOL_TAG,
        "y Y yes Yes YES true True TRUE on On ON n N no No NO false False FALSE off Off OFF",
    ),
    (_NULL_TAG, "~ null Null NULL"),
    (_FLOAT_TAG, ".nan .NaN .NAN .inf .Inf .INF +.inf +.Inf +.INF -.inf -.Inf -.INF"),
):
    _GO_WORDS.update(dict.fromkeys(_words.split(), _tag))
_GO_WORDS[""] = _NULL_TAG
_GO_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _go_yaml_tag(value: str) -> str | None:
    """The tag kubectl gives a plain scalar other than text and timestamps, or None."""
    word = _GO_WORDS.get(value)
    if word is not None:
        return word
    if not value or value[0] not in "+-.0123456789":
        return None
    plain = value if value[0] == "." else value.replace("_", "")
    if value[0] != "." and _GO_INT.fullmatch(plain):
        return _INT_TAG
    return _FLOAT_TAG if _GO_FLOAT.fullmatch(plain) else None


class _KubectlSafeDumper(yaml.SafeDumper):
    """The safe dumper, quoting every string that YAML 1.1 or kubectl reads as no string."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _go_yaml_tag(value)
            if tag is not None:
                return tag
        return _base_resolve(self, kind, value, implicit)


def _base_resolve(
    resolver: yaml.resolver.BaseResolver, kind: Any, value: Any, implicit: Any
) -> str:
    """YAML 1.1's tag for a node (PyYAML's resolver, which is untyped)."""
    tag: str = yaml.resolver.BaseResolver.resolve(resolver, kind, value, implicit)  # type: ignore[no-untyped-call]
    return tag


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
    """The strict loader reading plain scalars as kubectl does (go-yaml v2's rule, in
    :func:`_go_yaml_tag`): ``5e-1``, ``1.0e3`` and ``08`` are numbers, ``0o17`` is 15,
    ``y`` is true, ``1:30`` is text; timestamps as YAML 1.1 reads them."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _go_yaml_tag(value)
            if tag is not None:
                return tag
            tag = _base_resolve(self, kind, value, implicit)
            return tag if tag == _TIMESTAMP_TAG else _STR_TAG
        return _base_resolve(self, kind, value, implicit)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        return self.construct_scalar(node) in ("y", "Y", "yes", "Yes", "YES") or (
            self.construct_scalar(node).lower() in ("true", "on")
        )

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node).replace("_", "")
        if text.lstrip("+-") == "":  # ``!!int ''``: no digits at all
            raise yaml.constructor.ConstructorError(
                None, None, "found an integer without digits", node.start_mark
            )
        sign = -1 if text[0] == "-" else 1
        digits = text[1:] if text[0] in "+-" else text
        if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
            return sign * int(digits, 8)  # Go's leading 0: octal
        return sign * int(digits, 0)


_KubectlLoader.add_constructor(_BOOL_TAG, _KubectlLoader.construct_yaml_bool)
_KubectlLoader.add_constructor(_INT_TAG, _KubectlLoader.construct_yaml_int)


def load_documents(text: str, *, kubectl_numbers: bool = False) -> list[Any]:
    """Every non-empty document of a YAML stream; with ``kubectl_numbers``, plain
    scalars are read as kubectl reads a manifest (``5e-1`` and ``08`` are numbers,
    ``y`` is true, ``1:30`` is text)."""
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
