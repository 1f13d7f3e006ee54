"""The API models: defaults, bounds and cross-field rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from vlm_operator.models import VLMServiceSpec


def test_defaults_match_the_measured_pod() -> None:
    spec = VLMServiceSpec.model_validate({"model": {"id": "Qwen/Qwen3-VL-2B-Instruct"}})
    assert spec.concurrency.max_in_flight == 4
    assert spec.model.runtime == "llamacpp"
    assert spec.autoscaling.sync_period_seconds == 5.0
    assert spec.resources.requests.memory == "12Gi"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"model": {"id": "m"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
            "autoscaling",
        ),
        ({"model": {"id": "m"}, "concurrency": {"queueTimeoutSeconds": -1}}, "concurrency"),
        ({"model": {"id": "m", "runtime": "tensorrt"}}, "model.runtime"),
        ({"model": {"id": "m", "colour": "red"}}, "model.colour"),
        ({"model": {"id": "m", "runtime": "custom"}}, "custom needs model.image"),
    ],
)
def test_bad_specs_name_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        VLMServiceSpec.model_validate(spec)
    assert field in str(info.value)


@pytest.mark.parametrize(("written", "stored"), [(8, "8"), ("500m", "500m"), ("12Gi", "12Gi")])
def test_quantities_take_integers_like_kubernetes(written: object, stored: str) -> None:
    spec = VLMServiceSpec.model_validate(
        {"model": {"id": "m"}, "resources": {"requests": {"cpu": written}}}
    )
    assert spec.resources.requests.cpu == stored


@pytest.mark.parametrize("written", [True, 1.5, "8 cores", "-"])
def test_quantities_reject_what_kubernetes_rejects(written: object) -> None:
    with pytest.raises(ValidationError) as info:
        VLMServiceSpec.model_validate(
            {"model": {"id": "m"}, "resources": {"requests": {"cpu": written}}}
        )
    assert "resources.requests.cpu" in str(info.value)
