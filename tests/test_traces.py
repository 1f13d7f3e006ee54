"""Shipped traces, trace validation, and the simulate command's handling of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vlm_operator.cli import main
from vlm_operator.latency import LatencyModel
from vlm_operator.simulator import ENGINE
from vlm_operator.traces import TraceError, list_traces, load_trace, parse_trace


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
    ],
)
def test_bad_traces_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(TraceError) as info:
        parse_trace(data, origin="bad.yaml")
    assert f"bad.yaml: {field}" in str(info.value)


def test_unknown_name_lists_the_shipped_traces() -> None:
    with pytest.raises(TraceError, match="measured-gradient"):
        load_trace("no-such-trace")


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
    assert f"of wall time ({ENGINE} engine)" in out
    assert main(["simulate", "--trace", str(trace), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policy"] == "ours"
    assert [p["name"] for p in report["phases"]] == ["two", "eight"]
    assert report["oracle_replica_seconds"] == pytest.approx(120 + 2 * 240)


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
