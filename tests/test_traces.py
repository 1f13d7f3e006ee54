"""Shipped traces, trace validation, and the simulate command's handling of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vlm_operator.cli import main
from vlm_operator.latency import LatencyModel
from vlm_operator.simulator import ENGINE, spec_for
from vlm_operator.traces import TraceError, list_traces, load_trace, parse_trace
from vlm_operator.yamlio import load_documents


def test_shipped_traces() -> None:
    assert list_traces() == ["diurnal-24h", "flash-spike", "measured-gradient", "step-burst"]
    for name in list_traces():
        trace = load_trace(name)
        assert trace.name == name
        assert trace.duration_s > 0
        assert trace.phases[0].start_s == 0
        for before, after in zip(trace.phases, trace.phases[1:], strict=False):
            assert after.start_s == before.end_s


def test_measured_gradient_is_the_measured_test() -> None:
    trace = load_trace("measured-gradient")
    assert trace.kind == "closed"
    assert [p.users for p in trace.phases] == [1, 2, 4, 8, 16]
    assert {p.duration_s for p in trace.phases} == {300.0}


def test_diurnal_peak_needs_dozens_of_pods() -> None:
    trace = load_trace("diurnal-24h")
    assert trace.kind == "open"
    assert trace.duration_s == 24 * 3600
    peak = max(p.peak_rate() for p in trace.phases)
    per_request = LatencyModel().mean_latency(4)
    assert peak * per_request / 4 >= 24
    assert trace.service["autoscaling"]["maxReplicas"] >= peak * per_request / 4
    # Ramps are continuous from hour to hour, and the day wraps around.
    for before, after in zip(trace.phases, trace.phases[1:] + trace.phases[:1], strict=True):
        assert before.rate_end == after.rate
    # It starts at its trough: a cold start is not what this trace measures.
    assert trace.phases[0].rate == min(p.rate for p in trace.phases)


def test_rate_ramps_linearly_inside_a_phase() -> None:
    trace = parse_trace(
        {"kind": "open", "phases": [{"duration": 100, "rate": 1.0, "rateEnd": 3.0}]}
    )
    assert trace.rate_at(0) == 1.0
    assert trace.rate_at(50) == pytest.approx(2.0)
    assert trace.rate_at(100) == 0.0  # after the end


def test_scaled_trace_runs_faster() -> None:
    trace = load_trace("step-burst").scaled(10)
    assert trace.duration_s == pytest.approx(240)
    assert trace.phases[1].rate == pytest.approx(30.0)
    with pytest.raises(TraceError, match="time_scale"):
        trace.scaled(0)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "bursty", "phases": [{"duration": 1, "rate": 1}]}, "kind"),
        ({"kind": "open"}, "phases"),
        ({"kind": "open", "phases": []}, "phases"),
        ({"kind": "open", "phases": [{"duration": -1, "rate": 1}]}, "phases[0].duration"),
        ({"kind": "open", "phases": [{"duration": 1, "rate": -2}]}, "phases[0].rate"),
        ({"kind": "open", "phases": [{"duration": 1, "rate": "x"}]}, "phases[0].rate"),
        ({"kind": "open", "phases": [{"duration": 1, "users": 3}]}, "phases[0].users"),
        ({"kind": "closed", "phases": [{"duration": 1, "users": 1.5}]}, "phases[0].users"),
        ({"kind": "closed", "phases": [{"duration": 1, "users": 1}], "extra": 1}, "extra"),
        ({"kind": "open", "phases": [{"duration": 1, "rate": 1}], "service": []}, "service"),
        # Bounds: a simulation of these would run for hours, or for ever.
        ({"kind": "open", "phases": [{"duration": 1e9, "rate": 1}]}, "phases[0].duration"),
        (
            {"kind": "open", "phases": [{"duration": 86400 * 20, "rate": 1}] * 2},
            "phases[1].duration",
        ),
        ({"kind": "open", "phases": [{"duration": 10, "rate": 1e6}]}, "phases[0].rate"),
        (
            {"kind": "open", "phases": [{"duration": 10, "rate": 1, "rateEnd": 1e6}]},
            "phases[0].rateEnd",
        ),
        ({"kind": "closed", "phases": [{"duration": 10, "users": 10**6}]}, "phases[0].users"),
        # Each bound kept, but together past the requests a run can hold (gigabytes, hours).
        ({"kind": "open", "phases": [{"duration": 3600, "rate": 5000}]}, "phases"),
        (
            {"kind": "open", "phases": [{"duration": 86400, "rate": 0, "rateEnd": 300}]},
            "phases",
        ),
        ({"kind": "closed", "phases": [{"duration": 3600, "users": 10_000}]}, "phases"),
        # A fast model of the trace's own answers its users far more often than once a second.
        (
            {
                "kind": "closed",
                "service": {"model": {"fake": {"baseSeconds": 0.001}}},
                "phases": [{"duration": 3600, "users": 100}],
            },
            "phases",
        ),
        # YAML 1.1 reads 3.6e3 as text: said so, not "a number is no number".
        ({"kind": "open", "phases": [{"duration": "3.6e3", "rate": 1}]}, "phases[0].duration"),
    ],
)
def test_bad_traces_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(TraceError) as info:
        parse_trace(data, origin="bad.yaml")
    assert f"bad.yaml: {field}" in str(info.value)


def test_a_trace_just_within_the_requests_a_run_holds_is_taken() -> None:
    # A ramp counts at the mean of its rates: 86,400 s from 0 to 231 req/s is 9.98 million.
    ramp = {"kind": "open", "phases": [{"duration": 86400, "rate": 0, "rateEnd": 231}]}
    assert parse_trace(ramp).phases[0].rate_end == 231
    with pytest.raises(TraceError, match=r"some 10,800,000 requests in all \(a rate .*10,000,000"):
        parse_trace({**ramp, "phases": [{"duration": 3600, "rate": 3000}]})
    with pytest.raises(TraceError, match=r"got the text '3\.6e3' .*3\.6e\+3"):
        parse_trace({"kind": "open", "phases": [{"duration": "3.6e3", "rate": 1}]})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "open", "phases": [{"duration": 10**400, "rate": 1}]}, "phases[0].duration"),
        ({"kind": "open", "phases": [{"duration": 10, "rate": 10**400}]}, "phases[0].rate"),
        (
            {"kind": "open", "phases": [{"duration": 10, "rate": 1, "rateEnd": -(10**400)}]},
            "phases[0].rateEnd",
        ),
    ],
)
def test_integers_beyond_any_float_are_too_large(data: dict[str, object], field: str) -> None:
    with pytest.raises(TraceError) as info:
        parse_trace(data, origin="big.yaml")
    assert str(info.value) == f"big.yaml: {field}: too large (beyond any float)"


def test_unknown_keys_of_mixed_types_are_named() -> None:
    # YAML keys may be numbers and strings in one mapping: sorting them must not fail.
    with pytest.raises(TraceError, match=r"^mixed\.yaml: 1: unknown field"):
        parse_trace(
            {"kind": "open", 1: 2, "foo": 3, "phases": [{"duration": 10, "rate": 1}]},
            origin="mixed.yaml",
        )
    with pytest.raises(TraceError, match=r"^mixed\.yaml: phases\[0\]\.5: not allowed"):
        parse_trace(
            {"kind": "open", "phases": [{"duration": 10, "rate": 1, 5: 3, "x": 1}]},
            origin="mixed.yaml",
        )


def test_a_trace_file_with_a_number_python_will_not_parse_is_not_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PyYAML builds ints with int(), which refuses more than 4300 digits; a bad date likewise.
    huge = tmp_path / "huge.yaml"
    huge.write_text(f"kind: open\nphases: [{{duration: 1{'0' * 5000}, rate: 1}}]\n", "utf-8")
    assert main(["simulate", "--trace", str(huge)]) == 2
    err = capsys.readouterr().err
    assert f"--trace: {huge}: not valid YAML: Exceeds the limit" in err
    date = tmp_path / "date.yaml"
    date.write_text("kind: open\nname: 2024-13-40\nphases: [{duration: 1, rate: 1}]\n", "utf-8")
    assert main(["simulate", "--trace", str(date)]) == 2
    assert f"--trace: {date}: not valid YAML: month must be in 1..12" in capsys.readouterr().err


def test_unknown_name_lists_the_shipped_traces() -> None:
    with pytest.raises(TraceError, match="measured-gradient"):
        load_trace("no-such-trace")


def test_a_folder_named_after_a_shipped_trace_does_not_hide_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "step-burst").mkdir()  # results of a run, say
    assert load_trace("step-burst").name == "step-burst"
    # A file of that name is a file given on purpose: it is read.
    (tmp_path / "flash-spike").write_text(
        "kind: open\nname: mine\nphases: [{duration: 10, rate: 1}]\n", "utf-8"
    )
    assert load_trace("flash-spike").name == "mine"


def test_simulate_exits_2_on_a_bad_trace_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: open\nphases:\n  - {duration: 10, rate: -1}\n", encoding="utf-8")
    assert main(["simulate", "--trace", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "phases[0].rate" in err
    assert "Traceback" not in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [open\n", encoding="utf-8")
    assert main(["simulate", "--trace", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    twice = tmp_path / "twice.yaml"
    twice.write_text("kind: open\nkind: closed\nphases: [{duration: 10, rate: 1}]\n", "utf-8")
    assert main(["simulate", "--trace", str(twice)]) == 2
    assert "line 2, column 1: found the key 'kind' twice" in capsys.readouterr().err


def test_simulate_exits_2_on_an_unknown_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", "measured-gradient", "--policy", "magic"]) == 2
    assert "--policy" in capsys.readouterr().err


def test_simulate_names_a_misspelt_engine_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VLM_OPERATOR_SIM_ENGINE", "fast")
    assert main(["simulate", "--trace", "measured-gradient"]) == 2
    assert "VLM_OPERATOR_SIM_ENGINE='fast': must be" in capsys.readouterr().err


def test_simulate_prints_phases_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "tiny.yaml"
    trace.write_text(
        "kind: closed\nphases:\n  - {name: two, duration: 120, users: 2}\n"
        "  - {name: eight, duration: 240, users: 8}\n",
        encoding="utf-8",
    )
    assert main(["simulate", "--trace", str(trace), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "two" in out
    assert "eight" in out
    assert "cost ratio" in out
    header = next(line for line in out.splitlines() if line.startswith("phase"))
    for column in ("replica-s", "x oracle", "SLO viol s", "ups", "downs"):
        assert column in header, column
    assert f"of wall time ({ENGINE} engine)" in out
    assert main(["simulate", "--trace", str(trace), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policy"] == "ours"
    assert [p["name"] for p in report["phases"]] == ["two", "eight"]
    assert report["oracle_replica_seconds"] == pytest.approx(120 + 2 * 240)
    assert [p["oracle_replica_seconds"] for p in report["phases"]] == [120, 2 * 240]
    assert sum(p["replica_seconds"] for p in report["phases"]) == pytest.approx(
        report["replica_seconds"]
    )
    for key in ("cost_ratio", "slo_violation_seconds", "scale_ups", "scale_downs"):
        assert all(key in p for p in report["phases"]), key


def test_simulate_compare_runs_every_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "tiny.yaml"
    trace.write_text("kind: open\nphases:\n  - {duration: 300, rate: 1.5}\n", encoding="utf-8")
    assert main(["simulate", "--trace", str(trace), "--compare", "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in reports] == [
        "ours",
        "kpa",
        "hpa-cpu",
        "hpa-inflight",
        "keda",
        "ray",
        "static-1",
    ]
    # Same trace and seed: every policy saw the same arrivals.
    assert len({r["oracle_replica_seconds"] for r in reports}) == 1


def test_simulate_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    trace = tmp_path / "tiny.yaml"
    trace.write_text("kind: closed\nphases:\n  - {duration: 200, users: 6}\n", encoding="utf-8")
    out = tmp_path / "plot.png"
    assert main(["simulate", "--trace", str(trace), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "service: {autoscaling: {maxReplicas: -1}}",
            "service.autoscaling.maxReplicas: must be >= 1",
        ),
        ("service: {bogus: 1}", "service.bogus: unknown field"),
        ("service: {concurrency: {maxInFlight: 0}}", "service.concurrency.maxInFlight"),
        ("service: {monitoring: {interval: 0s}}", "service.monitoring.interval: must match"),
    ],
)
def test_simulate_names_the_field_of_a_bad_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    trace = tmp_path / "svc.yaml"
    trace.write_text(f"kind: open\n{text}\nphases: [{{duration: 10, rate: 1}}]\n", "utf-8")
    assert main(["simulate", "--trace", str(trace)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_simulate_refuses_a_file_that_is_not_utf8_and_an_empty_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe kind: open")
    assert main(["simulate", "--trace", str(binary)]) == 2
    assert "bin.yaml: cannot read: not UTF-8 text" in capsys.readouterr().err
    assert main(["simulate", "--trace", ""]) == 2
    assert "--trace: trace: empty; give a file or a shipped trace" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-3"], "--seed: must be >= 0, got -3"),
        (["--compare", "--policy", "kpa"], "--policy: not with --compare"),
        (["--policy", "static-0"], "static-N takes 1 to 10000 replicas"),
        (["--policy", "static-10001"], "static-N takes 1 to 10000 replicas"),
        # Empty (an unset shell variable): not silently the default.
        (["--policy", ""], "--policy: empty; one of ours"),
        (["--policy", " "], "--policy: empty; one of ours"),
    ],
)
def test_simulate_refuses_bad_flags_before_running(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["simulate", "--trace", "measured-gradient", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""  # nothing simulated


def test_simulate_checks_the_plot_file_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    for target, message in (
        (tmp_path / "plot.xyz", "the extension names the format, one of"),
        (tmp_path / "plot", "the extension names the format, one of"),
        # LaTeX code, made by running xelatex: it failed only after the simulation.
        (tmp_path / "plot.pgf", "the extension names the format, one of"),
        (tmp_path, "is no file name"),
        (tmp_path / "missing" / "plot.png", "no directory"),
        # Not writable (root may write anywhere but here): found before a run of minutes.
        (Path("/proc/plot.png"), "--plot: cannot write /proc/plot.png"),
    ):
        assert main(["simulate", "--trace", "measured-gradient", "--plot", str(target)]) == 2
        captured = capsys.readouterr()
        assert message in captured.err, target
        assert captured.out == "", target
    trace = tmp_path / "tiny.yaml"
    trace.write_text("kind: closed\nphases:\n  - {duration: 100, users: 2}\n", encoding="utf-8")
    svg = tmp_path / "plot.svg"
    assert main(["simulate", "--trace", str(trace), "--plot", str(svg)]) == 0
    assert f"plot written to {svg}" in capsys.readouterr().out
    assert svg.read_text(encoding="utf-8").lstrip().startswith("<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.svg", "tiny.yaml"]


def test_simulate_runs_the_latency_model_and_start_up_of_the_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A trace for a faster model says so in its service's fake runtime: the simulator
    # ran the calibrated CPU pod whatever it said.
    def run(fake: str, phases: str, *flags: str) -> dict[str, Any]:
        trace = tmp_path / "trace.yaml"
        trace.write_text(f"service: {{model: {{fake: {fake}}}}}\n{phases}", encoding="utf-8")
        assert main(["simulate", "--trace", str(trace), "--json", "--seed", "1", *flags]) == 0
        report: dict[str, Any] = json.loads(capsys.readouterr().out)
        return report

    one_user = "kind: closed\nphases:\n  - {duration: 300, users: 1}\n"
    calibrated = run("{}", one_user)
    fast = run("{baseSeconds: 1.0, alpha: 0}", one_user)
    # One user, one pod: the mean latency is the solo time (6.2 s, then 1 s).
    assert calibrated["p50"] == pytest.approx(6.2, rel=0.1)
    assert fast["p50"] == pytest.approx(1.0, rel=0.1)
    assert fast["requests"] > 5 * calibrated["requests"]
    # A step that needs new pods: how long they take to load is the trace's too.
    step = (
        "kind: open\nphases:\n  - {name: quiet, duration: 120, rate: 0.2}\n"
        "  - {name: step, duration: 300, rate: 2}\n"
    )
    slow_start = run("{startupSeconds: 60}", step, "--retries", "2")
    quick_start = run("{startupSeconds: 5}", step, "--retries", "2")
    assert quick_start["phases"][1]["p95"] < slow_start["phases"][1]["p95"] / 2


def test_simulate_says_when_the_oracle_needs_more_than_max_replicas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "six.yaml"
    trace.write_text("kind: open\nphases:\n  - {duration: 600, rate: 6}\n", encoding="utf-8")
    assert main(["simulate", "--trace", str(trace), "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert "the oracle needs" in err
    assert "more than maxReplicas (10)" in err
    trace.write_text(
        "kind: open\nservice: {autoscaling: {maxReplicas: 40}}\n"
        "phases:\n  - {duration: 600, rate: 6}\n",
        encoding="utf-8",
    )
    assert main(["simulate", "--trace", str(trace), "--seed", "1"]) == 0
    assert capsys.readouterr().err == ""


def test_simulate_with_autoscaling_off_runs_the_spec_replicas_from_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "off.yaml"
    trace.write_text(
        "kind: open\nservice: {replicas: 3, autoscaling: {enabled: false}}\n"
        "phases:\n  - {name: idle, duration: 300, rate: 0}\n  - {duration: 300, rate: 1}\n",
        encoding="utf-8",
    )
    assert main(["simulate", "--trace", str(trace), "--json", "--seed", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["scale_ups"], report["scale_downs"]) == (0, 0)
    assert report["replica_seconds"] == pytest.approx(3 * 600)
    assert main(["simulate", "--trace", str(trace), "--compare", "--seed", "1"]) == 0
    assert "the trace turns autoscaling off" in capsys.readouterr().err


def test_simulate_into_a_closed_pipe_exits_without_a_traceback(tmp_path: Path) -> None:
    trace = tmp_path / "tiny.yaml"
    trace.write_text("kind: closed\nphases:\n  - {duration: 60, users: 1}\n", encoding="utf-8")
    command = [sys.executable, "-m", "vlm_operator", "simulate", "--trace", str(trace), "--json"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        child.stdout.close()  # the reader is gone before the first write (``| head -0``)
        err = child.stderr.read().decode()
        assert child.wait(timeout=120) == 1
    assert err == ""


def test_the_readmes_trace_example_is_a_valid_trace() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    after = readme.split("A trace of your own is a YAML file:", 1)[1]
    example = after.split("```yaml\n", 1)[1].split("```", 1)[0]
    (document,) = load_documents(example)
    trace = parse_trace(document, origin="README.md")
    assert [p.name for p in trace.phases] == ["morning", "rush", "after"]
    assert trace.phases[1].rate_end == 6.0
    assert spec_for(trace).autoscaling.max_replicas == 20
