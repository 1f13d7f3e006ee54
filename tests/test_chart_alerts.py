"""The alerting rules: valid for promtool, installed by the chart, and firing where they should.

``charts/vlm-operator/alerts/vlm-operator.rules.yaml`` is loaded by a real Prometheus
(every ``for:`` set to 0 s, so a test need not wait out the real durations) that
scrapes two fake gates, one of a service in trouble and one of a calm service, and
the operator's own metrics. Exactly the expected alerts must fire, with their
templates rendered.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml
from vlm_operator.operator_metrics import OperatorMetrics

from e2e.cluster import chart
from e2e.exporters import Exporter
from e2e.prometheus import PrometheusServer

RULES = chart.CHART_DIR / "alerts" / "vlm-operator.rules.yaml"
DEADLINE_S = 60.0


def _rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """promtool's answer, asserted a success."""
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_promtool_accepts_the_rules() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout


def test_every_alert_says_what_and_how_bad() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} == {
        "VLMServiceRefusingRequests",
        "VLMServiceQueueNeverEmpty",
        "VLMServiceLatencyAboveTarget",
        "VLMServiceErrors",
        "VLMServiceNotScraped",
        "VLMServiceSignalsUnavailable",
        "VLMOperatorSignalsUnavailable",
        "VLMOperatorCRDOutdated",
        "VLMOperatorAbsent",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert rule["for"].endswith("m"), rule["alert"]  # no alert on a single evaluation


def test_the_chart_installs_the_rules_only_when_asked() -> None:
    assert not [o for o in chart.render() if o["kind"] == "PrometheusRule"]
    values = {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}
    rules = [o for o in chart.render(values) if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    assert rules[0]["metadata"]["labels"]["release"] == "kps"
    assert rules[0]["metadata"]["namespace"] == chart.RELEASE_NAMESPACE
    assert rules[0]["spec"] == yaml.safe_load(RULES.read_text())


def test_the_chart_adjusts_the_rules_by_value(tmp_path: Path) -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "disabled": ["VLMServiceQueueNeverEmpty"],
            "for": {"VLMServiceLatencyAboveTarget": "45m"},
            "ruleLabels": {"team": "ml-platform", "severity": "page"},
            "extraGroups": [{"name": "mine", "rules": [{"alert": "Mine", "expr": "up == 0"}]}],
        }
    }
    spec = next(o for o in chart.render(values) if o["kind"] == "PrometheusRule")["spec"]
    by_name = {r["alert"]: r for group in spec["groups"] for r in group["rules"]}
    originals = {r["alert"]: r for r in _rules()}
    assert set(by_name) == set(originals) - {"VLMServiceQueueNeverEmpty"} | {"Mine"}
    assert by_name["VLMServiceLatencyAboveTarget"]["for"] == "45m"
    assert by_name["Mine"] == {"alert": "Mine", "expr": "up == 0"}  # appended as it is
    for name, rule in by_name.items():
        if name == "Mine":
            continue
        assert rule["labels"] == {"severity": "page", "team": "ml-platform"}, name
        # Everything else as in the file, Prometheus's own templates untouched.
        unchanged = {k: v for k, v in rule.items() if k not in ("labels", "for")}
        assert unchanged == {k: v for k, v in originals[name].items() if k not in ("labels", "for")}
        if name != "VLMServiceLatencyAboveTarget":
            assert rule["for"] == originals[name]["for"], name
    assert [g["name"] for g in spec["groups"]] == [
        "vlm-operator.services",
        "vlm-operator.operator",
        "mine",
    ]
    rendered = tmp_path / "rendered.rules.yaml"
    rendered.write_text(yaml.safe_dump(spec))
    _promtool("check", "rules", str(rendered))
    # A whole group turned off leaves no empty group behind; every alert off, no group.
    operator_alerts = [
        "VLMOperatorSignalsUnavailable",
        "VLMOperatorCRDOutdated",
        "VLMOperatorAbsent",
    ]
    values = {"prometheusRule": {"enabled": True, "disabled": operator_alerts}}
    spec = next(o for o in chart.render(values) if o["kind"] == "PrometheusRule")["spec"]
    assert [g["name"] for g in spec["groups"]] == ["vlm-operator.services"]
    values = {"prometheusRule": {"enabled": True, "disabled": sorted(originals)}}
    spec = next(o for o in chart.render(values) if o["kind"] == "PrometheusRule")["spec"]
    assert spec == {"groups": []}


def test_a_crd_differing_alerts_unless_it_is_newer(tmp_path: Path) -> None:
    # Three operators: one whose CRD bounds fields otherwise (older: alert), one whose
    # CRD also has fields it does not know (newer: the operator is what is old, no
    # alert to apply its CRD), one that matches. promtool's offline rule test.
    rule = next(
        r
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == "VLMOperatorCRDOutdated"
    )

    def drift(pod: str, unknown: int, changed: int) -> list[dict[str, str]]:
        counts = {"missing": 0, "unknown": unknown, "changed": changed}
        return [
            {
                "series": f'vlm_operator_crd_drift_fields{{direction="{direction}",'
                f'namespace="ops",pod="{pod}"}}',
                "values": f"{count}x15",
            }
            for direction, count in counts.items()
        ]

    expected = {
        "exp_labels": {"severity": "warning", "namespace": "ops", "pod": "older"},
        "exp_annotations": {
            key: text.replace("{{ $value }}", "3") for key, text in rule["annotations"].items()
        },
    }
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": drift("older", 0, 3) + drift("newer", 2, 3) + drift("same", 0, 0),
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "VLMOperatorCRDOutdated",
                        "exp_alerts": [expected],
                    }
                ],
            }
        ],
    }
    tests = tmp_path / "crd-drift.test.yaml"
    tests.write_text(yaml.safe_dump(test))
    _promtool("test", "rules", str(tests))


def test_an_operator_not_scraped_alerts(tmp_path: Path) -> None:
    # No operator series at all (down, or nothing scrapes it): the alerts on its series
    # cannot fire, and VLMOperatorAbsent says so once its `for` has passed; with the
    # series there, it stays silent. promtool's offline rule test.
    rule = next(r for r in _rules() if r["alert"] == "VLMOperatorAbsent")
    gate = {"series": 'vlm_requests_running{namespace="a",vlmservice="s"}', "values": "1x30"}
    operator = {"series": 'vlm_operator_services{namespace="ops",pod="op"}', "values": "1x30"}

    def case(series: list[dict[str, str]], firing: bool) -> dict[str, Any]:
        expected = {"exp_labels": {"severity": "critical"}, "exp_annotations": rule["annotations"]}
        return {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "VLMOperatorAbsent", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "VLMOperatorAbsent",
                    "exp_alerts": [expected] if firing else [],
                },
            ],
        }

    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [case([gate], firing=True), case([gate, operator], firing=False)],
    }
    tests = tmp_path / "absent.test.yaml"
    tests.write_text(yaml.safe_dump(test))
    _promtool("test", "rules", str(tests))


@pytest.mark.parametrize("key", ["disabled", "for", "ruleLabels", "extraGroups"])
def test_a_rule_value_set_to_null_is_its_empty_self(key: str) -> None:
    # `--set prometheusRule.for=null` (or null in a values file) removes the key.
    values = {"prometheusRule": {"enabled": True, key: None}}
    spec = next(o for o in chart.render(values) if o["kind"] == "PrometheusRule")["spec"]
    assert spec == yaml.safe_load(RULES.read_text())


@pytest.mark.parametrize(
    ("rule_values", "message"),
    [
        ({"disabled": ["VLMServiceQueueNotEmpty"]}, 'prometheusRule.disabled: "VLMServiceQueue'),
        ({"for": {"VLMErrors": "1h"}}, 'prometheusRule.for: "VLMErrors" is no alert of the chart'),
        ({"for": {"VLMServiceErrors": "an hour"}}, "/prometheusRule/for/VLMServiceErrors"),
        # Prometheus reads units from the largest down, each once.
        ({"for": {"VLMServiceErrors": "30m1h"}}, "/prometheusRule/for/VLMServiceErrors"),
        ({"for": {"VLMServiceErrors": "1m1m"}}, "/prometheusRule/for/VLMServiceErrors"),
        ({"ruleLabels": {"my-team": "x"}}, "my-team"),
        ({"ruleLabels": {"__name__": "x"}}, "__name__"),  # reserved by Prometheus
        ({"extraGroups": [{"rules": []}]}, "name"),
        (
            {"extraGroups": [{"name": "vlm-operator.services", "rules": []}]},
            'prometheusRule.extraGroups: the group name "vlm-operator.services" is the chart',
        ),
        (
            {"extraGroups": [{"name": "mine", "rules": []}, {"name": "mine", "rules": []}]},
            'prometheusRule.extraGroups: the group name "mine" is given twice',
        ),
    ],
)
def test_a_rule_value_naming_no_alert_or_badly_formed_is_refused(
    rule_values: dict[str, Any], message: str
) -> None:
    refusals = (helm.HelmValuesError, helm.HelmRenderError)  # the schema's, the template's
    with pytest.raises(refusals, match=message) as refused:
        chart.render({"prometheusRule": {"enabled": True, **rule_values}})
    if "is no alert" in message:
        assert "its alerts: VLMServiceRefusingRequests," in str(refused.value)


def test_a_misspelt_rule_value_is_refused() -> None:
    with pytest.raises(helm.HelmValuesError, match="enable"):
        chart.render({"prometheusRule": {"enable": True}})


@contextlib.contextmanager
def _alerting(workdir: Path, *, failing_queries: str) -> Iterator[PrometheusServer]:
    """A real Prometheus with the rules, scraping a gate in trouble, a calm one, the two
    gates of an unevenly loaded service and the operator, whose failed queries are
    ``failing_queries``' ("operator" or "service"). The gate in trouble is scraped
    twice, the second time without its vlmservice label, as a job that scrapes pods
    by their annotations does."""
    loaded = yaml.safe_load(RULES.read_text())
    for group in loaded["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    rules = workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump(loaded))
    trouble = Exporter(max_in_flight=4, queue_capacity=8).start()
    calm = Exporter(max_in_flight=4, queue_capacity=8).start()
    uneven = [Exporter(max_in_flight=4, queue_capacity=8).start() for _ in range(2)]
    # A pod of "trouble" loading its model: no request inside, its queue empty.
    loading = Exporter(max_in_flight=4, queue_capacity=8).start()
    operator_metrics = OperatorMetrics()
    operator_server, operator_thread = operator_metrics.serve(0, "127.0.0.1")
    server = PrometheusServer(workdir / "prometheus", rule_files=[rules], honor_labels=True).start()
    try:
        # Every series the test raises exists before the first scrape (at 0): a rate
        # counts no increase into a series' first sample.
        trouble.set(running=4, waiting=3, codes={200: 1})
        calm.set(running=2, waiting=0, codes={200: 1})
        # One gate of "uneven" queues, the other has free slots: a fleet of the right
        # size behind a Service that spreads requests at random.
        uneven[0].set(running=4, waiting=2, codes={200: 1})
        uneven[1].set(running=2, waiting=0, codes={200: 1})
        loading.set(running=0, waiting=0)
        for exporter, code in ((trouble, "500"), (trouble, "502"), (calm, "503")):
            exporter.metrics.total.labels(code)
        for source in ("operator", "service"):
            operator_metrics.query_errors.labels("timeout", source)
        server.set_targets(
            [
                (trouble.host_port, {"namespace": "team-a", "vlmservice": "trouble", "pod": "t-0"}),
                (calm.host_port, {"namespace": "team-a", "vlmservice": "calm", "pod": "c-0"}),
                (trouble.host_port, {"namespace": "team-a", "pod": "t-0", "scrape": "annotations"}),
                (loading.host_port, {"namespace": "team-a", "vlmservice": "trouble", "pod": "t-1"}),
                *(
                    (
                        gate.host_port,
                        {"namespace": "team-a", "vlmservice": "uneven", "pod": f"u-{i}"},
                    )
                    for i, gate in enumerate(uneven)
                ),
                (
                    f"127.0.0.1:{operator_server.server_port}",
                    {"namespace": "vlm-operator", "pod": "vlm-operator-0"},
                ),
            ]
        )
        server.wait_for_series("vlm_gate_max_in_flight", count=6)
        server.wait_for_series("vlm_operator_services", count=1)
        # After the first scrape, so that the rates over the window are above zero.
        trouble.set(
            codes={200: 10, 500: 4, 502: 2, 429: 5, 504: 1},  # the refusals are answers too
            rejected={"queue_full": 5, "deadline": 1},
            durations=[30.0] * 16,
        )
        # One refusal among 2,000 answers: a share no alert is for.
        calm.set(
            codes={200: 1999, 429: 1, 503: 1},
            rejected={"draining": 1, "queue_full": 1},
            durations=[8.0] * 20,
        )
        # An overload of "uneven": its queue timeouts are refusals (a 504 each), not the
        # model failing.
        uneven[0].set(codes={200: 90, 504: 10}, rejected={"deadline": 10}, durations=[8.0] * 20)
        uneven[1].set(codes={200: 100}, durations=[8.0] * 20)
        operator_metrics.query_errors.labels("timeout", failing_queries).inc()

        # Queries sent. Every one of the operator's own fails, among a hundred of the
        # services' that answer (one per service: they may far outnumber its own); or
        # a hundred of its own answer but for one stray time-out, besides the failure
        # of the service's own.
        def send(source: str, count: int) -> None:  # as SignalReader counts a query
            operator_metrics.queries.labels(source).inc(count)
            for _ in range(count):
                operator_metrics.query_seconds.observe(0.01)

        if failing_queries == "operator":
            send("operator", 1)
            send("service", 100)
        else:
            send("operator", 100)
            send("service", 1)
            operator_metrics.query_errors.labels("timeout", "operator").inc()
        # The failures' rate before any signal is lost, as in a cluster: no evaluation
        # sees a service without signals and no failed query yet.
        server.wait_for_series("rate(vlm_operator_prometheus_query_errors_total[5m]) > 0")
        # "unscraped" is managed by the operator, but no gate of it is scraped; the
        # operator could not read the signals of "trouble" nor of "unscraped".
        # "elsewhere" has no gate here either, but a Prometheus of its own that the
        # operator reads: no alert.
        for service in ("trouble", "calm", "unscraped", "elsewhere"):
            operator_metrics.observe_service(
                "team-a",
                service,
                desired=3,
                max_replicas=10,
                p95_target=12.0,
                signals_available=service in ("calm", "elsewhere"),
            )
        operator_metrics.crd_drift.labels("missing").set(2)
        operator_metrics.crd_drift.labels("unknown").set(0)
        yield server
    finally:
        server.stop()
        for gate in (trouble, calm, *uneven, loading):
            gate.stop()
        operator_server.shutdown()
        operator_server.server_close()
        operator_thread.join(timeout=5)


def _firing(prometheus: PrometheusServer) -> set[tuple[str, str]]:
    return {
        (s["metric"]["alertname"], s["metric"].get("vlmservice", ""))
        for s in prometheus.query('ALERTS{alertstate="firing"}')
    }


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with _alerting(tmp_path_factory.mktemp("alerts"), failing_queries="operator") as server:
        yield server


def test_exactly_the_expected_alerts_fire(prometheus: PrometheusServer) -> None:
    expected = {
        ("VLMServiceRefusingRequests", "trouble"),
        ("VLMServiceQueueNeverEmpty", "trouble"),
        ("VLMServiceLatencyAboveTarget", "trouble"),
        ("VLMServiceErrors", "trouble"),
        ("VLMServiceNotScraped", "unscraped"),
        # Its queue timeouts, refusals: not VLMServiceErrors; one queue of two: not
        # VLMServiceQueueNeverEmpty. And no alert of a service without a name, from the
        # gate scraped a second time without its label.
        ("VLMServiceRefusingRequests", "uneven"),
        # Not VLMServiceSignalsUnavailable of "trouble": the operator's own queries
        # fail, which this alert says for every service at once.
        ("VLMOperatorSignalsUnavailable", ""),
        ("VLMOperatorCRDOutdated", ""),
    }
    prometheus.wait_for_series(
        'ALERTS{alertstate="firing"}', timeout=DEADLINE_S, count=len(expected)
    )
    assert _firing(prometheus) == expected  # and nothing of the calm service
    alerts = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    by_name = {
        a["labels"]["alertname"]: a
        for a in alerts
        if a["state"] == "firing" and a["labels"].get("vlmservice") != "uneven"
    }
    refusing = by_name["VLMServiceRefusingRequests"]
    assert refusing["annotations"]["summary"].startswith("VLMService team-a/trouble ")
    assert refusing["labels"]["severity"] == "warning"
    assert "% of its requests" in refusing["annotations"]["description"]
    failing = by_name["VLMOperatorSignalsUnavailable"]["annotations"]["description"]
    assert failing.startswith("100% of its queries fail")
    errors = by_name["VLMServiceErrors"]
    assert "%" in errors["annotations"]["description"]  # humanizePercentage rendered
    outdated = by_name["VLMOperatorCRDOutdated"]["annotations"]["description"]
    assert "(2 at least)" in outdated
    assert "wants 3 pod(s)" in by_name["VLMServiceNotScraped"]["annotations"]["description"]
    slow = by_name["VLMServiceLatencyAboveTarget"]["annotations"]["description"]
    assert "P95 over the last 10 minutes is " in slow


def test_a_service_whose_own_queries_fail_alerts_for_that_service_alone(tmp_path: Path) -> None:
    # The operator's Prometheus answers; the queries "trouble" chose fail (a bad
    # metrics.queries override): its own alert, not the operator's. "unscraped" has
    # no signals either, for want of scraped gates: VLMServiceNotScraped says so.
    signals = {"VLMServiceSignalsUnavailable", "VLMOperatorSignalsUnavailable"}
    with _alerting(tmp_path, failing_queries="service") as prometheus:
        prometheus.wait_for_series(
            'ALERTS{alertstate="firing", alertname="VLMServiceSignalsUnavailable"}',
            timeout=DEADLINE_S,
        )
        prometheus.wait_for_series(
            'ALERTS{alertstate="firing", alertname="VLMServiceNotScraped"}', timeout=DEADLINE_S
        )
        firing = {alert for alert in _firing(prometheus) if alert[0] in signals}
        assert firing == {("VLMServiceSignalsUnavailable", "trouble")}
        alerts = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        (alert,) = [a for a in alerts if a["labels"]["alertname"] == "VLMServiceSignalsUnavailable"]
        assert alert["annotations"]["summary"].endswith("VLMService team-a/trouble")
        assert "MetricsAvailable" in alert["annotations"]["description"]
