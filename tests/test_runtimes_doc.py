"""docs/runtimes.md stays true: its manifests validate and its facts match the code.

Users copy these examples into their clusters, so every YAML block must be
valid: VLMServices through the API models (and they must render), the rest
against the Kubernetes schemas in strict mode. The default file names and the
model server's flags are compared with the presets and the real CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from vlm_operator import runtimes
from vlm_operator.cli import build_parser
from vlm_operator.models import KIND, VLMService
from vlm_operator.render import render_children

DOC = Path(__file__).resolve().parent.parent / "docs" / "runtimes.md"
TEXT = DOC.read_text()
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", TEXT, re.DOTALL)
OBJECTS = [obj for block in YAML_BLOCKS for obj in yaml.safe_load_all(block) if obj]


def _object_id(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def test_the_doc_has_examples_of_every_kind_it_describes() -> None:
    kinds = sorted({obj["kind"] for obj in OBJECTS})
    assert kinds == ["Job", "PersistentVolumeClaim", "VLMService"]


@pytest.mark.parametrize("obj", [o for o in OBJECTS if o["kind"] == KIND], ids=_object_id)
def test_vlmservice_examples_validate_and_render(obj: dict[str, Any]) -> None:
    service = VLMService.model_validate(obj)
    children = render_children(service.name, service.namespace, service.spec)
    for child in children:
        kubernetes_validate.validate(child, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("obj", [o for o in OBJECTS if o["kind"] != KIND], ids=_object_id)
def test_kubernetes_examples_validate_strictly(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_download_examples_fetch_the_files_the_presets_expect() -> None:
    jobs = [o for o in OBJECTS if o["kind"] == "Job"]
    scripts = "\n".join(
        " ".join(c["args"]) for job in jobs for c in job["spec"]["template"]["spec"]["containers"]
    )
    assert f"{runtimes.QWEN3_VL_2B_GGUF} {runtimes.QWEN3_VL_2B_MMPROJ}" in scripts
    assert f"--local-dir /models/{runtimes.QWEN3_VL_2B_DIRECTORY}" in scripts
    for name in (
        runtimes.QWEN3_VL_2B_GGUF,
        runtimes.QWEN3_VL_2B_MMPROJ,
        runtimes.QWEN3_VL_2B_DIRECTORY,
    ):
        assert f"`{name}`" in TEXT  # the defaults table


def test_model_server_synopsis_lists_exactly_the_cli_flags() -> None:
    synopsis = re.search(r"```\nvlm-operator model-server (.*?)```", TEXT, re.DOTALL)
    assert synopsis is not None
    documented = set(re.findall(r"--[a-z-]+", synopsis[1]))
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    model_server = subparsers.choices["model-server"]
    flags = {
        option
        for action in model_server._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert documented == flags
