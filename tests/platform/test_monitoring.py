"""The monitoring files in platform/: Prometheus alert rules, the scrape config and the Grafana dashboard.

Structure and metric names are checked everywhere; promtool, when installed, also checks
syntax and replays synthetic series to prove each alert fires where the design says.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.metrics import PlatformCollector, SharedHistogram, shared_metrics
from settings.topology import all_queue_names

PLATFORM = Path(__file__).resolve().parents[2] / "platform"
ALERTS = PLATFORM / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = PLATFORM / "prometheus" / "prometheus.yml"
DASHBOARD = PLATFORM / "grafana" / "notify-dashboard.json"

#: Gauges built at scrape time by jobs/metrics.py PlatformCollector.collect (not shared metrics).
SCRAPE_TIME_GAUGES = {
    "notify_queue_depth",
    "notify_queue_oldest_age_seconds",
    "notify_queue_reserved",
    "notify_breaker_state",
    "notify_dead_letters_open",
}
#: Campaign gauges: notifications/campaigns.py campaign_metrics, added through jobs.metrics.register_gauges.
CAMPAIGN_GAUGES = {"notify_campaign_messages", "notify_campaign_send_rate"}
HISTOGRAMS = {metric.name for metric in shared_metrics() if isinstance(metric, SharedHistogram)}
EXPORTED = {metric.name for metric in shared_metrics()} | SCRAPE_TIME_GAUGES | CAMPAIGN_GAUGES

SEVERITIES = {"page", "critical", "warning"}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
PROMTOOL = shutil.which("promtool")


def promtool_path() -> str:
    """promtool's path; a missing tool fails the test (`make test` installs it), it never skips it."""
    if PROMTOOL is None:
        pytest.fail("promtool is missing: run `bash .ci/install-test-tools` (what `make test` does) and run again")
    return PROMTOOL


def alert_rules() -> dict[str, dict[str, Any]]:
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def data_panels() -> list[dict[str, Any]]:
    """Every panel that draws data; rows only group them."""
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in data_panels() for target in panel["targets"]]


def one_line(expr: str) -> str:
    return " ".join(expr.split())


def metric_names(expr: str) -> set[str]:
    names = set()
    for name in re.findall(r"\bnotify_[a-z_]+", expr):
        stem = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(stem if stem in HISTOGRAMS else name)
    return names


def balanced(expr: str) -> bool:
    """Brackets pair up outside string literals: the cheapest PromQL sanity check without promtool."""
    pairs, stack, quote = {")": "(", "]": "[", "}": "{"}, [], None
    for i, char in enumerate(expr):
        if quote:
            if char == quote and expr[i - 1] != "\\":
                quote = None
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack and quote is None


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool_path(), *map(str, args)], capture_output=True, text=True, timeout=60)


# --- alert rules ------------------------------------------------------------------------


def test_the_four_design_alerts_exist_with_their_thresholds():
    rules = alert_rules()

    backlog = rules["NotifyBacklogHigh"]
    assert one_line(backlog["expr"]) == "sum(notify_queue_depth) > 10000"
    assert backlog["for"] == "2m"
    assert backlog["labels"]["severity"] == "page"

    dead = rules["NotifyDeadLettersSurge"]
    assert one_line(dead["expr"]) == "sum(increase(notify_dead_letters_total[5m])) > 100"
    assert "for" not in dead, "a dead-letter surge fires at once"
    assert dead["labels"]["severity"] == "critical"

    stale = rules["NotifySecurityQueueStale"]
    assert one_line(stale["expr"]) == r'max(notify_queue_oldest_age_seconds{queue=~"security\\..*"}) > 10'
    assert stale["for"] == "30s"
    assert stale["labels"]["severity"] == "page"

    breaker = rules["NotifyBreakerOpen"]
    # Open (2) or probing between open spells (1): a flapping breaker must not restart the minute.
    assert one_line(breaker["expr"]) == "max by (breaker) (notify_breaker_state) >= 1"
    assert breaker["for"] == "1m"
    assert breaker["labels"]["severity"] == "warning"


def test_the_extra_alerts_are_few_and_every_alert_tells_on_call_what_to_do():
    rules = alert_rules()
    assert 4 <= len(rules) <= 7
    for name, rule in rules.items():
        assert name.startswith("Notify"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name} has no {key}"


def test_the_rule_file_is_structurally_valid_without_promtool():
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    (group,) = document["groups"]
    assert group["name"] == "notify"
    assert set(group) <= {"name", "interval", "limit", "rules"}
    names = [rule["alert"] for rule in group["rules"]]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in group["rules"]:
        name = rule["alert"]
        assert set(rule) <= RULE_KEYS, f"{name}: unknown keys {set(rule) - RULE_KEYS}"
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), name
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        assert balanced(rule["expr"]), f"{name}: unbalanced brackets or quotes in {rule['expr']!r}"
        if "for" in rule:
            assert DURATION.match(rule["for"]), f"{name}: bad duration {rule['for']!r}"
        for section in ("labels", "annotations"):
            assert all(isinstance(v, str) for v in rule.get(section, {}).values()), f"{name}: {section}"


def test_the_scrape_config_reads_the_password_from_a_file_and_loads_the_rules():
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    for rule_file in config["rule_files"]:
        assert (SCRAPE_CONFIG.parent / rule_file).resolve() == ALERTS
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["basic_auth"]["username"] == "prometheus"
    assert "password" not in job["basic_auth"], "never inline the password"
    assert job["basic_auth"]["password_file"].startswith("/")
    assert f'up{{job="{job["job_name"]}"}}' in alert_rules()["NotifyMetricsDown"]["expr"]


def test_rule_files_pass_promtool():
    rules = promtool("check", "rules", ALERTS)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", SCRAPE_CONFIG)
    assert config.returncode == 0, config.stdout + config.stderr


#: Synthetic series, one sample every 15 s (a scrape interval), and when each alert must fire.
ALERT_SCENARIOS = {
    "interval": "15s",
    "input_series": [
        {"series": 'notify_queue_depth{queue="marketing.email"}', "values": "12000x20"},
        {"series": 'notify_queue_depth{queue="security.sms"}', "values": "0x20"},
        # Dead letters: a steady trickle (about 40 per 5 minutes) from 0 s, a surge from 5m15s.
        {"series": 'notify_dead_letters_total{queue="transactional.email"}', "values": "0+2x40"},
        {"series": 'notify_dead_letters_total{queue="marketing.email"}', "values": "0x20 0+50x20"},
        # The security queue's head message is older than 10 s from 1m; a marketing queue's old head never pages.
        {"series": 'notify_queue_oldest_age_seconds{queue="security.sms"}', "values": "0+3x20"},
        {"series": 'notify_queue_oldest_age_seconds{queue="marketing.email"}', "values": "500x20"},
        # postmark fails for good and flaps open/half-open; fcm opens once and recovers.
        {"series": 'notify_breaker_state{breaker="postmark"}', "values": "2 2 1 2 2 1 2 2 1 2 2 1 2"},
        {"series": 'notify_breaker_state{breaker="fcm"}', "values": "2 2 0x10"},
        # Every security send takes between 1 and 2.5 s.
        *(
            {
                "series": f'notify_delivery_latency_seconds_bucket{{channel="sms",priority="security",le="{le}"}}',
                "values": values,
            }
            for le, values in (("0.5", "0x40"), ("1.0", "0x40"), ("2.5", "0+10x40"), ("+Inf", "0+10x40"))
        ),
        {"series": 'up{job="notify-web",instance="127.0.0.1:8000"}', "values": "0x20"},
    ],
    "alert_rule_test": [
        {"eval_time": "1m30s", "alertname": "NotifyBacklogHigh", "exp_alerts": []},
        {"eval_time": "2m30s", "alertname": "NotifyBacklogHigh", "exp_alerts": [{"exp_labels": {"severity": "page"}}]},
        {"eval_time": "5m", "alertname": "NotifyDeadLettersSurge", "exp_alerts": []},
        {
            "eval_time": "6m",
            "alertname": "NotifyDeadLettersSurge",
            "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
        },
        {"eval_time": "1m", "alertname": "NotifySecurityQueueStale", "exp_alerts": []},
        {
            "eval_time": "1m30s",
            "alertname": "NotifySecurityQueueStale",
            "exp_alerts": [{"exp_labels": {"severity": "page"}}],
        },
        {"eval_time": "45s", "alertname": "NotifyBreakerOpen", "exp_alerts": []},
        {
            "eval_time": "1m30s",
            "alertname": "NotifyBreakerOpen",
            "exp_alerts": [{"exp_labels": {"severity": "warning", "breaker": "postmark"}}],
        },
        {"eval_time": "4m", "alertname": "NotifySecurityLatencyHigh", "exp_alerts": []},
        {
            "eval_time": "6m",
            "alertname": "NotifySecurityLatencyHigh",
            "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
        },
        {
            "eval_time": "3m",
            "alertname": "NotifyMetricsDown",
            "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "notify-web", "instance": "127.0.0.1:8000"}}],
        },
    ],
}


def test_alerts_fire_at_their_thresholds_and_not_before(tmp_path):
    # promtool compares annotations too; their wording is checked above, so replay the rules without them.
    document = yaml.safe_load(ALERTS.read_text())
    for rule in document["groups"][0]["rules"]:
        rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(document))
    (tmp_path / "alerts_test.yml").write_text(
        yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "15s", "tests": [ALERT_SCENARIOS]})
    )
    result = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# --- metric names -------------------------------------------------------------------------


def test_every_metric_an_alert_or_panel_uses_is_one_the_platform_exports():
    used = {name for rule in alert_rules().values() for name in metric_names(rule["expr"])}
    used |= {name for expr in dashboard_exprs() for name in metric_names(expr)}
    assert used, "no notify_ metric found: the extraction is broken"
    assert used <= EXPORTED, f"not exported by jobs/metrics.py: {sorted(used - EXPORTED)}"


def test_every_metric_the_platform_exports_is_on_the_dashboard():
    shown = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    assert EXPORTED <= shown, f"missing from the dashboard: {sorted(EXPORTED - shown)}"


@pytest.mark.django_db
def test_the_listed_gauges_are_exactly_the_ones_the_collector_serves():
    # Keeps the hand-written lists above honest: a gauge added later fails here until it is listed,
    # and so until the dashboard shows it.
    served = {family.name for family in PlatformCollector(all_queue_names).collect() if family.type == "gauge"}
    assert served == SCRAPE_TIME_GAUGES | CAMPAIGN_GAUGES


# --- dashboard ----------------------------------------------------------------------------


def test_the_dashboard_parses_and_every_panel_has_a_title_and_a_target():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in board["panels"]:
        assert panel.get("title", "").strip(), f"panel {panel['id']} has no title"
    for panel in data_panels():
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip() and balanced(target["expr"]), f"{panel['title']}: {target['expr']!r}"


def test_every_query_uses_the_prometheus_datasource_variable():
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in data_panels():
        for holder in (panel, *panel["targets"]):
            assert holder["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]


def test_the_dashboard_has_the_panels_the_design_asks_for():
    panels = {panel["title"]: panel for panel in data_panels()}
    exprs = {title: " ".join(one_line(t["expr"]) for t in panel["targets"]) for title, panel in panels.items()}

    assert "notify_queue_depth" in exprs["Queue depth per queue"]
    age = panels["Oldest message age per queue"]
    assert "notify_queue_oldest_age_seconds" in exprs["Oldest message age per queue"]
    assert age["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    assert 10 in [step["value"] for step in age["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert "sum by (outcome) (rate(notify_sends_total" in exprs["Sends/s by outcome"]
    assert "sum by (provider" in exprs["Sends/s by provider"]
    latency = exprs["Delivery latency p50 / p99 per priority"]
    assert "histogram_quantile(0.5, sum by (priority, le)" in latency
    assert "histogram_quantile(0.99, sum by (priority, le)" in latency
    assert "rate(notify_retries_total" in exprs["Retries/s"]
    assert "notify_dead_letters_open" in exprs["Dead letters"]
    assert "increase(notify_dead_letters_total[5m])" in exprs["Dead letters"]
    assert panels["Breaker state per provider"]["type"] == "state-timeline"
    assert "notify_breaker_state" in exprs["Breaker state per provider"]
    assert "rate(notify_ratelimit_waits_total" in exprs["Rate-limiter waits/s"]
    assert 'notify_campaign_messages{state=~"remaining|sent"}' in exprs["Campaign progress"]
    assert "notify_campaign_send_rate" in exprs["Campaign send rate"]


def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool parses PromQL in rule files only, so each query becomes a recording rule;
    # Grafana's $__rate_interval becomes a fixed range.
    rules = [
        {"record": f"dashboard:query_{index}", "expr": expr.replace("$__rate_interval", "1m")}
        for index, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
