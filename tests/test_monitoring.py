"""The monitoring profile's own files, checked with the real tools: the alert rules with `promtool`
(`check rules`, and their unit tests in alerts.test.yml), the stack's Prometheus configuration
with `promtool check config`, the Grafana provisioning and dashboard against the schema Grafana
reads, and every PromQL expression of the dashboard and the rules parsed by a real Prometheus.

`dashboard_and_alert_expressions()` is the one list of those expressions: an end-to-end test
can evaluate the same list against a Prometheus that has scraped real workers."""
from __future__ import annotations

import json
import re
import subprocess
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from tests.prometheus_server import prometheus_missing, start_prometheus
from tests.services import REPO

PROMETHEUS_DIR = REPO / "docker" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DIR = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "flashsr.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "flashsr.yml"

# What the workers export (docs/metrics.md); the dashboard shows every one of them.
WORKER_METRICS = ("flashsr_files_total", "flashsr_audio_seconds_total", "flashsr_file_seconds",
                  "flashsr_model_loaded", "flashsr_batch_rows", "flashsr_model_stage_seconds",
                  "flashsr_gpu_memory_bytes", "flashsr_tasks_in_flight", "flashsr_queue_messages")
ALERT_NAMES = {"FlashSRGpuWorkerResampling", "FlashSRFilesFailing", "FlashSRQueueStalled", "FlashSRWorkerDown",
               "FlashSRNoWorkers"}
# Grafana's global variables, as a query of the last hour at a 15 s scrape interval would see them.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
# Panel types that ship with Grafana: no plugin to install.
BUILTIN_PANELS = {"timeseries", "stat", "gauge", "bargauge", "table", "text", "row", "state-timeline",
                  "status-history", "heatmap", "piechart", "barchart", "histogram"}

# PyYAML comes with the model extra (CI installs it), not with the test extra alone.
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

needs_prometheus = pytest.mark.skipif(bool(prometheus_missing()), reason=prometheus_missing() or "present")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus gets it: Grafana's $__rate_interval, $__interval and
    $__range (also written ${...}) replaced as Grafana would for the last hour."""
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise AssertionError(f"the dashboard uses ${name}, which this test does not know: {expr}")
        return GRAFANA_VARIABLES[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def dashboard_and_alert_expressions() -> list[str]:
    """Every PromQL expression of the Grafana dashboard (Grafana's variables replaced) and of the
    alert rules, in file order, each once: ready for Prometheus' query API."""
    exprs = [grafana_to_promql(target["expr"]) for panel in dashboard_panels()
             for target in panel.get("targets", []) if target.get("expr")]
    exprs += [rule["expr"].strip() for rule in alert_rules()]
    return list(dict.fromkeys(exprs))


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ alert rules

@needs_prometheus
def test_the_alert_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in checked.stdout
    tested = promtool("test", "rules", ALERT_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_rule_waits_has_a_severity_and_says_what_to_do():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERT_NAMES
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+m", rule.get("for", "")), f"{name}: a `for:` in minutes"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        for key in ("summary", "description"):
            text = rule["annotations"][key]
            assert text and "\n" not in text, f"{name}: a one-line {key}"
        assert rule["annotations"]["description"].endswith("."), name
    by_name = {rule["alert"]: rule for rule in rules}
    assert 'up{job="flashsr-workers"} == 0' in by_name["FlashSRWorkerDown"]["expr"]
    assert 'flashsr_model_loaded{queue="gpu"} == 0' in by_name["FlashSRGpuWorkerResampling"]["expr"]
    # A queue none of whose workers ever reported a file must still fire: `unless`, not `and == 0`.
    assert "unless on (queue)" in by_name["FlashSRQueueStalled"]["expr"]


def test_every_rule_has_unit_tests_that_fire_and_that_stay_quiet():
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == ALERT_NAMES and quiet == ALERT_NAMES, (fires, quiet)


# ------------------------------------------------------------------ the stack's Prometheus

@needs_prometheus
def test_the_stacks_prometheus_config_is_valid_and_scrapes_the_workers_every_15_s():
    checked = promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == [ALERTS.name]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "flashsr-workers"]
    targets = [t for static in job.get("static_configs", []) for t in static["targets"]]
    targets += [f"{name}:{dns['port']}" for dns in job.get("dns_sd_configs", []) for name in dns["names"]]
    assert sorted(targets) == ["worker-cpu:9101", "worker-gpu:9101"]


# ------------------------------------------------------------------ Grafana

def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard_folder():
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"


def test_the_dashboard_is_a_valid_grafana_dashboard_on_the_provisioned_datasource():
    board = dashboard()
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert "__inputs" not in board and "__requires" not in board, "provisioned as is: no import-time inputs"
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        title = panel["title"]
        assert panel["type"] in BUILTIN_PANELS, f"{title}: {panel['type']} is not a built-in panel"
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "xywh"), title
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{title} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, title
        targets = panel["targets"]
        assert targets, f"{title} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), f"{title}: refIds are unique"
        for target in targets:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"], title
    exprs = " ".join(dashboard_and_alert_expressions())
    missing = [metric for metric in WORKER_METRICS if metric not in exprs]
    assert not missing, f"the dashboard shows no {missing}"


def test_the_dashboard_shows_what_an_operator_asks_for():
    exprs = {grafana_to_promql(t["expr"]) for panel in dashboard_panels() for t in panel.get("targets", [])}
    assert "sum by (instance) (rate(flashsr_audio_seconds_total[1m]))" in exprs  # throughput per worker
    assert "sum by (outcome, method) (rate(flashsr_files_total[1m]))" in exprs
    assert any("flashsr_batch_rows_sum" in e and "flashsr_batch_rows_count" in e for e in exprs)
    assert any(e.startswith("histogram_quantile(0.95") and "flashsr_batch_rows_bucket" in e for e in exprs)
    assert any("flashsr_model_stage_seconds_sum" in e and "by (stage)" in e for e in exprs)
    assert any(e.startswith("histogram_quantile(0.95") and "flashsr_model_stage_seconds_bucket" in e for e in exprs)
    # The failed fraction on the dashboard is the alert's own.
    (failing,) = [rule for rule in alert_rules() if rule["alert"] == "FlashSRFilesFailing"]
    fraction = failing["expr"].strip().rsplit(">", 1)[0]
    assert any(" ".join(e.split()) == " ".join(fraction.split()) for e in exprs)


# ------------------------------------------------------------------ every expression, on a real Prometheus

@needs_prometheus
def test_every_dashboard_and_alert_expression_parses_on_a_real_prometheus(tmp_path):
    exprs = dashboard_and_alert_expressions()
    assert len(exprs) >= 20
    server = start_prometheus(tmp_path / "prometheus", targets=[], rule_files=[ALERTS])
    try:
        errors = []
        for expr in exprs:
            try:
                assert server.query(expr) == [] or "absent" in expr
            except urllib.error.HTTPError as error:  # 400 bad_data: Prometheus' own parse error
                errors.append(f"{expr}\n  -> {error.read().decode(errors='replace')}")
        assert not errors, "\n".join(errors)
        # The server loaded the same rules: one group, every alert.
        groups = server.api("rules")["groups"]
        assert {rule["name"] for group in groups for rule in group["rules"]} == ALERT_NAMES
    finally:
        server.stop()


@needs_prometheus
def test_an_invalid_expression_is_refused_by_that_check(tmp_path):
    server = start_prometheus(tmp_path / "prometheus", targets=[])
    try:
        with pytest.raises((urllib.error.HTTPError, AssertionError)):
            server.query("sum by (queue) (rate(flashsr_files_total))")  # rate of an instant vector
    finally:
        server.stop()
