"""``vlm-operator run`` rejects bad options with a message naming the option."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from vlm_operator.cli import main

#: A kubeconfig that loads (its server is never contacted by these tests).
KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: c
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
"""


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
    # A URL to listen on may leave the host out (kopf binds the local host): the
    # check passes it, and the next one (the kubeconfig, empty) is what fails.
    assert main(["run", "--kubeconfig", str(config), "--liveness", "http://:8080/healthz"]) == 2
    err = capsys.readouterr().err
    assert "--liveness" not in err
    assert "--kubeconfig" in err


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


def test_no_cluster_and_no_kubeconfig_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kubernetes.config.kube_config

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    # Read by the client at import, from $KUBECONFIG or ~/.kube/config.
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none")
    )
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlm-operator run: error: --kubeconfig: not in a cluster")
    assert "no kubeconfig found" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "content",
    [b"garbage: [\n", b"{}\n", b"[1, 2]\n", b"hello\n", b"\xff\xfe"],
    ids=["not-yaml", "empty-mapping", "list", "string", "not-utf8"],
)
def test_a_kubeconfig_that_is_not_one_is_a_usage_error(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_bytes(content)
    assert main(["run", "--kubeconfig", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"vlm-operator run: error: --kubeconfig: {config}: not a usable kubeconfig"
    )
    assert err.count("\n") == 1


def test_a_bad_kubeconfig_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("{}\n")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(config))
    assert main(["run"]) == 2
    assert f"--kubeconfig: $KUBECONFIG={config}: not a usable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics-port", "70000"], "--metrics-port: must be a port, 0-65535"),
        (["--metrics-port", "-1"], "--metrics-port: must be a port, 0-65535"),
        (["--liveness-port", "70000"], "--liveness-port: must be a port, 1-65535"),
        (["--liveness-port", "0"], "--liveness-port: must be a port, 1-65535"),
        (["--kube-workers", "0"], "--kube-workers: must be >= 1"),
        (
            ["--prometheus-url", "http://:9090"],
            "--prometheus-url: must be an http(s) URL with a host",
        ),
        (["--prometheus-url", "http://prometheus:99999"], "Port out of range"),
    ],
)
def test_bad_numbers_and_urls_exit_2_saying_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_prometheus_url_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VLM_OPERATOR_PROMETHEUS_URL", "foo")
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--prometheus-url: must be an http(s) URL, got 'foo'" in err
    assert "$VLM_OPERATOR_PROMETHEUS_URL" in err


@pytest.fixture
def run_argv(tmp_path: Path) -> list[str]:
    """``vlm-operator run`` with a kubeconfig that loads."""
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    return ["run", "--kubeconfig", str(config)]


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    """A port of 127.0.0.1 that something listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield int(taken.getsockname()[1])


def test_metrics_that_cannot_listen_are_a_usage_error(
    run_argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = run_argv
    # TEST-NET-1 is no address of this host.
    assert main([*argv, "--metrics-address", "192.0.2.1", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "vlm-operator run: error: --metrics-address/--metrics-port: cannot listen on 192.0.2.1:0: "
    )
    with port_in_use() as port:
        assert main([*argv, "--metrics-address", "127.0.0.1", "--metrics-port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err


def test_a_liveness_kopf_cannot_serve_is_a_usage_error(
    run_argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = run_argv
    # kopf serves http only: an https URL used to end in its traceback.
    assert main([*argv, "--liveness", "https://127.0.0.1:18083/healthz"]) == 2
    assert "--liveness: kopf serves its liveness probe over http only" in capsys.readouterr().err
    with port_in_use() as port:
        assert main([*argv, "--liveness", f"http://127.0.0.1:{port}/healthz"]) == 2
    assert f"--liveness: cannot listen on 127.0.0.1:{port}: Address already in use" in (
        capsys.readouterr().err
    )
    # An address for a /metrics that nothing serves.
    assert main([*argv, "--metrics-address", "127.0.0.1"]) == 2
    assert "--metrics-address: given without --metrics-port" in capsys.readouterr().err
