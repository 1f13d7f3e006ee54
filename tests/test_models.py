"""The API models: defaults, bounds and cross-field rules."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError
from vlm_operator.models import VLMServiceSpec, quantity_value


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
        (
            {
                "model": {"id": "m"},
                "resources": {"requests": {"memory": "20Gi"}, "limits": {"memory": "16Gi"}},
            },
            "resources\n  Value error, requests.memory (20Gi) is more than limits.memory (16Gi)",
        ),
        (
            {
                "model": {"id": "m"},
                "gate": {"resources": {"requests": {"cpu": 2}, "limits": {"cpu": "1500m"}}},
            },
            "gate.resources\n  Value error, requests.cpu (2) is more than limits.cpu (1500m)",
        ),
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


@pytest.mark.parametrize(
    ("request_", "limit"),
    [("16Gi", "16Gi"), ("500m", "0.5"), ("1G", "1Gi"), ("1e3", "1k"), ("2", "2.5")],
)
def test_a_request_up_to_its_limit_is_accepted(request_: str, limit: str) -> None:
    spec = VLMServiceSpec.model_validate(
        {
            "model": {"id": "m"},
            "resources": {"requests": {"cpu": request_}, "limits": {"cpu": limit}},
        }
    )
    assert spec.resources.limits.cpu == limit


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("12Gi", Decimal(12 * 2**30)), ("500m", Decimal("0.5")), ("1.5G", Decimal(1_500_000_000)),
     ("1e3", Decimal(1000)), ("1E", Decimal(10**18)), ("1Ei", Decimal(2**60)),
     ("+.5", Decimal("0.5"))],
)  # fmt: skip
def test_quantities_stand_for_what_kubernetes_reads(quantity: str, value: Decimal) -> None:
    assert quantity_value(quantity) == value


@pytest.mark.parametrize("quantity", ["-1", "NaN", "Infinity", "1e", "1e1.5", "lots", ""])
def test_what_is_no_quantity_has_no_value(quantity: str) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        quantity_value(quantity)
