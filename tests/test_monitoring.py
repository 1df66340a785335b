"""Dashboards and alerts shipped in the chart (design.md §2.3): the alert rules pass
`promtool check rules` and their unit tests (`promtool test rules`, Debian's prometheus
package, installed by .ci/run); every dashboard query is valid PromQL; the chart renders both
behind their toggles exactly as the files hold them; and every metric name the dashboard and the
rules use is exported by a running sidecar's /metrics."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dcr_sidecar.app import Sidecar
from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.test_chart import CHART, of_kind, render
from tests.test_metrics import cc_upstream, token

RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULE_TESTS = Path(__file__).resolve().parent / "promtool" / "rules_test.yaml"
METRIC = re.compile(r"\bdcr_sidecar_[a-z0-9_]+")
# Grafana's variables, replaced so promtool can parse the dashboard's queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$upstream": ".*"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                           "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}


async def promtool(*args: str) -> tuple[int, str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is missing: .ci/run installs Debian's prometheus"
    process = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_expressions() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    match = re.fullmatch(r"label_values\((.+), *(\w+)\)", expr)
    return match.group(1) if match else expr  # label_values(selector, label): the selector


def exported_names(text: str) -> set[str]:
    """Every series name a scrape of `text` can hold: declared families with their type's
    suffixes (a labelled counter without samples yet is still declared), and every sample."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def missing(expressions: list[str], exported: set[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC.findall(expr)} - exported


async def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    code, out = await promtool("check", "rules", str(RULES))
    assert code == 0, out
    assert f"SUCCESS: {len(rule_expressions())} rules found" in out
    code, out = await promtool("test", "rules", str(RULE_TESTS))
    assert code == 0, out
    assert "SUCCESS" in out
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"]}
    assert tested == alerts  # every alert has a unit test


async def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """The queries, Grafana variables substituted, checked by promtool as recording rules."""
    exprs = dashboard_expressions()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": as_promql(e)} for n, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    code, out = await promtool("check", "rules", str(path))
    assert code == 0, out
    assert f"SUCCESS: {len(exprs)} rules found" in out


def test_dashboard_is_well_formed() -> None:
    """Unique panel ids and refIds, panels inside the 24-column grid without overlapping,
    every query on the dashboard's data source variable."""
    board = dashboard()
    assert board["uid"] == "dcr-sidecar"
    assert board["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "job", "upstream"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, panel["title"]
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs
        assert len(refs) == len(set(refs))
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_chart_renders_the_dashboard_and_the_rules_only_when_toggled() -> None:
    default = render(CHART, {})
    assert not of_kind(default, "PrometheusRule")
    assert not [d for d in of_kind(default, "ConfigMap")
                if "grafana_dashboard" in d["metadata"].get("labels", {})]
    docs = render(CHART, {"metrics": {
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "OAuth"}}}})
    (rule,) = of_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    (board,) = [d for d in of_kind(docs, "ConfigMap")
                if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert board["metadata"]["annotations"] == {"grafana_folder": "OAuth"}
    assert json.loads(board["data"]["dcr-sidecar.json"]) == dashboard()


def test_metric_name_check_reports_an_unknown_name() -> None:
    """The check below can fail: a name no sidecar exports is reported."""
    exported = {"dcr_sidecar_requests_total"}
    assert missing(['rate(dcr_sidecar_requests_total[5m])'], exported) == set()
    assert missing(['rate(dcr_sidecar_requestz_total[5m])'], exported) == {
        "dcr_sidecar_requestz_total"}


async def scrape_text(side: Sidecar) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.management.url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


@pytest.mark.parametrize("source", ["rules", "dashboard"])
async def test_every_metric_used_exists_in_a_running_sidecars_metrics(
        source: str, oidc: ProviderFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """A sidecar that registered a client and answered a token request is scraped; every
    dcr_sidecar_* name in the rules (or the dashboard) is among the names it exports."""
    provider = await oidc()
    side = await sidecar({"upstreams": [cc_upstream(provider.issuer)]})
    leak_guard.add_token_response(await token(side))
    exported = exported_names(await scrape_text(side))
    expressions = rule_expressions() if source == "rules" else dashboard_expressions()
    used = {name for expr in expressions for name in METRIC.findall(expr)}
    assert len(used) >= 5
    assert missing(expressions, exported) == set(), sorted(exported)
