"""YAML in and out as kubectl reads it: what ``render | kubectl apply -f -`` sends."""

from __future__ import annotations

import datetime

import pytest
from vlm_operator.yamlio import YAMLError, dump_documents, load_documents

# Plain scalars and what kubectl (sigs.k8s.io/yaml, go-yaml v2) makes of them,
# as `kubectl label --local -f FILE x=y -o json` prints them.
KUBECTL_READS = {
    "y": True,
    "N": False,
    "on": True,
    "08": 8.0,
    "0o17": 15,
    "017": 15,
    "-017": -15,
    "0X1F": 31,
    "0x_1F": 31,
    "0b11": 3,
    "1_000": 1000,
    "1e3": 1000.0,
    "5e-1": 0.5,
    "1.0e3": 1000.0,
    ".5e3": 500.0,
    "+.5": 0.5,
    "1:30": "1:30",  # no base 60
    "0x": "0x",
    "1e": "1e",
    "1.2.3": "1.2.3",
    "x1e3": "x1e3",
    "~": None,
}


@pytest.mark.parametrize(("plain", "value"), KUBECTL_READS.items())
def test_plain_scalars_are_read_as_kubectl_reads_them(plain: str, value: object) -> None:
    (document,) = load_documents(f"a: {plain}\n", kubectl_numbers=True)
    assert document["a"] == value
    assert type(document["a"]) is type(value)


def test_timestamps_and_merges_are_read_as_before() -> None:
    (document,) = load_documents(
        "base: &b {x: 1}\nm: {<<: *b, z: 2}\nd: 2024-01-02\n", kubectl_numbers=True
    )
    assert document["m"] == {"x": 1, "z": 2}
    assert document["d"] == datetime.date(2024, 1, 2)


@pytest.mark.parametrize("text", [*KUBECTL_READS, "yes", "0.5", "12", "", "-.inf", "abc"])
def test_every_string_is_dumped_so_that_kubectl_reads_it_back_as_text(text: str) -> None:
    dumped = dump_documents([{"value": text, text: "key"}])
    (document,) = load_documents(dumped, kubectl_numbers=True)
    assert document == {"value": text, text: "key"}
    (document,) = load_documents(dumped)  # and so does YAML 1.1
    assert document == {"value": text, text: "key"}


def test_numbers_and_plain_text_stay_unquoted() -> None:
    dumped = dump_documents([{"a": [1, 0.5, 1e20, True, None, -3], "b": "abc", "c": "1.2.3"}])
    assert dumped == ("---\na:\n- 1\n- 0.5\n- 1.0e+20\n- true\n- null\n- -3\nb: abc\nc: 1.2.3\n")
    (document,) = load_documents(dumped, kubectl_numbers=True)
    assert document["a"] == [1, 0.5, 1e20, True, None, -3]


def test_a_key_given_twice_is_an_error() -> None:
    with pytest.raises(YAMLError, match="found the key 'a' twice"):
        load_documents("a: 1\na: 2\n", kubectl_numbers=True)


@pytest.mark.parametrize("text", ["a: !!int ''\n", "a: !!int '-'\n"])
def test_an_integer_without_digits_is_a_yaml_error(text: str) -> None:
    with pytest.raises(YAMLError, match="integer without digits"):
        load_documents(text, kubectl_numbers=True)
