"""`vlm-operator crd` and `vlm-operator render`: output, and exit 2 naming the field."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from vlm_operator.cli import main
from vlm_operator.crd import crd_yaml

from tests.crd_check import example_files

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = example_files(REPO / "manifests")
HEADER = "apiVersion: vlm-operator.io/v1alpha1\nkind: VLMService\nmetadata:\n  name: demo\n"


def _run(
    argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str | None = None
) -> tuple[int, str, str]:
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(argv)
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


def test_crd_prints_the_generated_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["crd"], capsys)
    assert code == 0
    assert out == crd_yaml() == (REPO / "crds" / "vlmservice.yaml").read_text()


def _example_scrape_intervals() -> set[str]:
    """The gates' scrape intervals of the Prometheus examples the README points to."""
    prometheus = REPO / "manifests" / "prometheus"
    config = yaml.safe_load((prometheus / "prometheus.yml").read_text())
    jobs = [c["scrape_interval"] for c in config["scrape_configs"] if c["job_name"] == "vlm-gates"]
    monitor = yaml.safe_load((prometheus / "podmonitor.yaml").read_text())
    endpoints = [e["interval"] for e in monitor["spec"]["podMetricsEndpoints"]]
    return {*jobs, *endpoints}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_rate_windows_hold_enough_scrapes_of_the_examples_prometheus(
    example: Path,
) -> None:
    # A rate needs two samples in its window: under four scrapes, one late scrape reads
    # it empty, which holds the replicas (fake-demo's 5 s window, under 5 s scrapes,
    # never let it scale down on a real cluster).
    from vlm_operator.validation import RATE_WINDOW_SCRAPES, _duration_seconds, parse_spec

    intervals = _example_scrape_intervals()
    assert intervals == {"5s"}  # the README's advice
    for document in yaml.safe_load_all(example.read_text()):
        window = parse_spec(document["spec"]).metrics.window_seconds
        for interval in intervals:
            assert window >= RATE_WINDOW_SCRAPES * _duration_seconds(interval), (example, window)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_render_prints_the_golden_stream(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["render", "-f", str(example)], capsys)
    assert code == 0, err
    assert out == (REPO / "tests" / "golden" / f"{example.stem}.yaml").read_text()
    kinds = [doc["kind"] for doc in yaml.safe_load_all(out)]
    assert kinds[:3] == ["Deployment", "Service", "PodDisruptionBudget"]


def test_render_reads_stdin_and_takes_options(capsys: pytest.CaptureFixture[str]) -> None:
    text = HEADER + "spec:\n  model: {id: m, runtime: fake}\n"
    code, out, _ = _run(
        ["render", "-f", "-", "--operator-image", "local/vlm:dev", "-n", "lab"], capsys, text
    )
    assert code == 0
    deployment = next(yaml.safe_load_all(out))
    assert deployment["metadata"]["namespace"] == "lab"
    images = {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert images == {"local/vlm:dev"}


def test_render_warns_about_pods_that_would_never_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _run(["render", "-f", "-"], capsys, HEADER + "spec: {model: {id: m}}\n")
    assert code == 0
    assert out
    assert "warning: demo: spec.model.storage: runtime llamacpp reads its model files" in err


MALFORMED: list[tuple[str, str, str]] = [
    ("unknown field", "spec:\n  model: {id: m, colour: red}\n", "spec.model.colour: unknown field"),
    (
        "wrong type",
        "spec:\n  model: {id: m}\n  replicas: three\n",
        "spec.replicas: must be a valid integer",
    ),
    (
        "min above max",
        "spec:\n  model: {id: m}\n  autoscaling: {minReplicas: 5, maxReplicas: 2}\n",
        "spec.autoscaling: minReplicas must be less than or equal to maxReplicas",
    ),
    (
        "negative timeout",
        "spec:\n  model: {id: m}\n  concurrency: {queueTimeoutSeconds: -1}\n",
        "spec.concurrency: queueTimeoutSeconds must be positive",
    ),
    (
        "unknown runtime",
        "spec:\n  model: {id: m, runtime: tensorrt}\n",
        "spec.model.runtime: must be one of 'llamacpp', 'transformers', 'fake' or 'custom'",
    ),
    ("missing model", "spec: {}\n", "spec.model: required field is missing"),
    (
        "negative in-flight",
        "spec:\n  model: {id: m}\n  concurrency: {maxInFlight: -4}\n",
        "spec.concurrency.maxInFlight: must be >= 1, got -4",
    ),
    (
        "bad quantity",
        "spec:\n  model: {id: m}\n  resources: {requests: {memory: 12 gigs}}\n",
        "spec.resources.requests.memory: must be a Kubernetes quantity",
    ),
    (
        "custom without image",
        "spec:\n  model: {id: m, runtime: custom}\n",
        "spec: runtime custom needs model.image",
    ),
    (
        "two storages",
        "spec:\n  model:\n    id: m\n    storage: {pvc: {claimName: a}, hostPath: {path: /m}}\n",
        "spec.model.storage: set at most one of pvc, hostPath, emptyDir",
    ),
    (
        "fallback without replicas",
        "spec:\n  model: {id: m}\n  autoscaling: {missingSignals: {action: Fallback}}\n",
        "spec.autoscaling: missingSignals.action Fallback needs fallbackReplicas",
    ),
    (
        "bad prometheus url",
        "spec:\n  model: {id: m}\n  metrics: {prometheusUrl: prometheus:9090}\n",
        "spec.metrics.prometheusUrl: must be an http(s) URL with a host",
    ),
    ("spec not a mapping", "spec: [model]\n", "spec: must be a mapping, got a list"),
]


@pytest.mark.parametrize(
    ("body", "message"), [(b, m) for _, b, m in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_services_exit_2_naming_the_field(
    body: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(["render", "-f", "-"], capsys, HEADER + body)
    assert code == 2
    assert out == ""
    assert err.startswith("vlm-operator render: error: ")
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("kind: [", "not valid YAML at line 1"),
        ("spec: " + "[" * 2000 + "]" * 2000 + "\n", "not valid YAML: nested too deeply"),
        ("", "no VLMService in the input"),
        ("just a string\n", "a VLMService must be a mapping, got the string"),
        ("apiVersion: v1\nkind: ConfigMap\n", "got apiVersion: 'v1' and kind: 'ConfigMap'"),
        (HEADER.replace("demo", "My_Model") + "spec: {model: {id: m}}\n", "metadata.name: must be"),
    ],
)
def test_input_that_is_not_a_vlmservice(
    stdin: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["render", "-f", "-"], capsys, stdin)
    assert code == 2
    assert message in err


def test_missing_and_unreadable_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(["render", "-f", str(tmp_path / "nope.yaml")], capsys)
    assert (code, err.strip()) == (
        2,
        f"vlm-operator render: error: {tmp_path}/nope.yaml: no such file",
    )
    code, _, err = _run(["render", "-f", str(tmp_path)], capsys)
    assert code == 2
    assert "is a directory" in err
    binary = tmp_path / "model.gguf"
    binary.write_bytes(b"\xff\xfe\x00GGUF")
    code, _, err = _run(["render", "-f", str(binary)], capsys)
    assert code == 2
    assert "not a text file" in err


def test_help_explains_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["render", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "-f FILE, --filename FILE" in out
    assert "'-' reads stdin" in out
    assert "--operator-image IMAGE" in out
    assert "kubectl apply" in out


def test_a_command_loads_no_other_commands_modules() -> None:
    # The gate runs in every model pod: the operator's, the simulator's and the fake
    # model's imports (about 20 MB of RSS) have no place there.
    code = (
        "import sys\n"
        "from vlm_operator.cli import COMMANDS, main\n"
        "try:\n"
        "    main(['gate', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for _, (m, _) in COMMANDS.items() if m in sys.modules))\n"
        "print(sorted(m for m in ('aiohttp', 'httpx', 'kopf', 'kubernetes') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    commands, heavy = result.stdout.splitlines()[-2:]
    assert commands == "['vlm_operator.commands.gate']"
    assert heavy == "[]"


def _console(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlm_operator", "render", "-f", "-"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_console_script_end_to_end() -> None:
    """The installed entry point: stdin, exit status, no traceback."""
    bad = HEADER + "spec:\n  model: {id: m}\n  autoscaling: {minReplicas: 3, maxReplicas: 1}\n"
    result = _console(bad)
    assert result.returncode == 2
    assert result.stderr == (
        "vlm-operator render: error: spec.autoscaling: "
        "minReplicas must be less than or equal to maxReplicas\n"
    )
    result = _console((REPO / "manifests" / "fake-demo.yaml").read_text())
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "tests" / "golden" / "fake-demo.yaml").read_text()


def test_output_is_utf8_whatever_the_locale() -> None:
    env = {**os.environ, "PYTHONIOENCODING": "latin-1", "LC_ALL": "C"}
    result = subprocess.run(
        [sys.executable, "-m", "vlm_operator", "crd"],
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == (REPO / "crds" / "vlmservice.yaml").read_bytes()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "argv",
    [
        ["crd"],
        ["render", "-f", str(REPO / "manifests" / "fake-demo.yaml")],
        # print(), buffered: the write fails when main flushes, not at the interpreter's exit.
        ["simulate", "--trace", "measured-gradient", "--policy", "static-1"],
    ],
)
def test_output_that_cannot_be_written_is_one_line_and_exit_1(argv: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "vlm_operator", *argv],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"vlm-operator {argv[0]}: error: cannot write the output: No space left on device\n"
    )


def test_an_error_that_is_not_the_outputs_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only a failed write of the output is said in one line; another OSError is a bug.
    import errno

    from vlm_operator.commands import crd

    def refuse(args: object) -> int:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(crd, "run", refuse)
    with pytest.raises(ConnectionRefusedError):
        main(["crd"])
