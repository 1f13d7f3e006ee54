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
