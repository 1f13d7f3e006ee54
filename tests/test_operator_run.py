"""``vlm-operator run`` rejects bad options with a message naming the option."""

from __future__ import annotations

from pathlib import Path

import pytest
from vlm_operator.cli import main


def test_missing_kubeconfig_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    assert main(["run", "--kubeconfig", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "--kubeconfig" in err
    assert "no such file" in err


def test_prometheus_url_must_be_http(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--prometheus-url", "ftp://prometheus:9090"])
    assert exit_info.value.code == 2
    assert "--prometheus-url" in capsys.readouterr().err


def test_liveness_url_must_be_http(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\n")
    assert main(["run", "--kubeconfig", str(config), "--liveness", "healthz"]) == 2
    assert "--liveness" in capsys.readouterr().err


def test_every_labelled_watch_is_filtered_by_the_api_server() -> None:
    # A handler's label filter alone runs in the operator, after the API server sent every
    # object of the kind in the cluster; the watch's own selector keeps them out of the wire.
    import kopf
    import vlm_operator.handlers  # noqa: F401  (registers the handlers)
    from vlm_operator.models import SERVICE_LABEL
    from vlm_operator.reconcile import configure_settings

    settings = kopf.OperatorSettings()
    configure_settings(settings)
    registry = kopf.get_default_registry()
    labelled = {
        handler.selector
        for handlers in (registry._indexing, registry._watching)
        for handler in handlers.get_all_handlers()
        if handler.labels and SERVICE_LABEL in handler.labels
    }
    assert len(labelled) >= 5  # pods, Deployments, Services, budgets, NetworkPolicies
    for selector in labelled:
        assert settings.watching.label_selectors.get(selector) == SERVICE_LABEL, selector
