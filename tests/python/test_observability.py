"""The Grafana dashboard and the Prometheus alert rules under observability/.

- The dashboard validates against a JSON Schema generated from @grafana/schema's types
  (scripts/grafana-schema), and a broken copy does not.
- Every panel query, template variables filled in, is accepted by a real Prometheus
  (Debian's package) scraping the router and two simulator processes; after traffic with
  repeated prompts, the seven panels carried over from production-stack's dashboard show
  data, both from the engines' own series and from the router's re-export of them.
- promtool lints the rules and runs their unit tests.

Needs node + npm (for the schema, cached after the first run), prometheus and promtool;
scripts/test installs the latter two. Nothing is skipped: a missing tool fails.
"""

import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from ruamel.yaml import YAML

from conftest import ROOT, eventually, prometheus_scraping
from conftest import http_get as get
from conftest import prom_query as query

DASHBOARD = ROOT / "helm" / "llmstack" / "dashboards" / "llmstack.json"
RULES_DIR = ROOT / "observability" / "rules"
RULES = RULES_DIR / "llmstack-alerts.yaml"
RULE_TESTS = RULES_DIR / "llmstack-alerts.test.yaml"
NAMES_RS = ROOT / "llmstack-metrics" / "src" / "names.rs"

# The panels of production-stack's "vLLM Dashboard" this one keeps, by title.
SEED = [
    "Available instances",
    "Request latency distribution",
    "Time to first token distribution",
    "Running requests per instance",
    "Pending (waiting) requests per instance",
    "KV cache usage per instance",
    "KV cache hit rate per instance",
]
# Per-instance seed panels: `<vLLM series> or (<router re-export> unless on () group(<vLLM series>))`.
FALLBACK = re.compile(
    r"^(?P<engines>.+)\nor\n\((?P<router>.+)\n  unless on \(\) group\((?P<presence>[^()]+)\)\)$", re.S
)
PROMPT = "You are a helpful assistant. Answer briefly and precisely. " * 8


def tool(name):
    path = shutil.which(name)
    assert path, f"{name} is not installed (scripts/test installs it: apt-get install prometheus)"
    return path


def run(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kw)


def load_dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard):
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def panel(dashboard, title):
    found = [p for p in all_panels(dashboard) if p.get("title") == title]
    assert len(found) == 1, f"{len(found)} panels titled {title!r}"
    return found[0]


def promql(expr):
    """A panel query as Grafana would send it with every variable on `All`."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


# === the dashboard file ===


def test_dashboard_validates_against_the_grafana_schema(tmp_path):
    made = run(str(ROOT / "scripts" / "grafana-schema"))
    assert made.returncode == 0, f"scripts/grafana-schema failed (needs node and npm):\n{made.stderr}"
    schema = made.stdout.strip()
    check = [sys.executable, "-m", "check_jsonschema", "--schemafile", schema]
    ok = run(*check, str(DASHBOARD))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The schema is strict enough to catch a wrong type.
    broken = load_dashboard()
    broken["title"] = 5
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps(broken))
    failed = run(*check, str(bad))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "5 is not of type 'string'" in failed.stdout + failed.stderr


def test_dashboard_structure():
    d = load_dashboard()
    assert (ROOT / "observability" / "dashboards" / "llmstack.json").resolve() == DASHBOARD.resolve()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"model", "engine"} <= set(variables)
    panels = list(all_panels(d))
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells = {}
    for p in panels:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p.get("description"), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], p["title"]
            # Every variable but $__rate_interval is a regex matcher (`All` is `.*`).
            used = re.findall(r"\$\{?(\w+)\}?", t["expr"])
            assert all(v == "__rate_interval" or v in variables for v in used), (p["title"], used)
            matchers = re.findall(r'=~"\$\w+"', t["expr"])
            assert len(matchers) == len([v for v in used if v != "__rate_interval"]), t["expr"]
            # Counters and histogram buckets only under rate()/increase().
            # (`group(...)` only asks whether a series exists.)
            counters = r"(group\()?\b[\w:]+(_total|_bucket|_sum|_count)\b(\{[^}]*\})?(\[[^]]+\])?"
            for m in re.finditer(counters, t["expr"]):
                assert m.group(1) or m.group(4), f"{p['title']}: {m.group(0)} needs a range and rate()"
    for title in SEED:
        assert panel(d, title)["type"] in ("stat", "timeseries")


# The router's KV-event and kvaware series (--routing-logic kvaware), each drawn in the
# dashboard's "KV events" row.
KV_METRICS = {
    "llmstack_kv_event_batches_total",
    "llmstack_kv_events_total",
    "llmstack_kv_event_gaps_total",
    "llmstack_kv_event_replays_total",
    "llmstack_kv_event_resets_total",
    "llmstack_kv_event_decode_errors_total",
    "llmstack_kv_event_lag_seconds",
    "llmstack_kv_event_connected",
    "llmstack_kv_index_blocks",
    "llmstack_kv_predicted_cached_tokens_total",
    "llmstack_kv_reported_cached_tokens_total",
}
# What the engine's cache really served, when it does not report cached_tokens: its own hit
# counter, re-exported by the router.
KV_FALLBACK = "llmstack_engine_prefix_cache_hits_total"


def row_panels(dashboard, title):
    """The panels under the row `title` (rows are not collapsed: the next rows down)."""
    rows = sorted((p["gridPos"]["y"], p["title"]) for p in dashboard["panels"] if p["type"] == "row")
    (top,) = [y for y, t in rows if t == title]
    below = [y for y, _ in rows if y > top]
    bottom = min(below) if below else float("inf")
    return [p for p in dashboard["panels"] if p["type"] != "row" and top < p["gridPos"]["y"] < bottom]


def test_kv_events_row():
    """Every KV-event series is drawn under "KV events", by engine, with the lag's p50 and
    p99 and the predicted/actual ratio; the alerts on them use real names too."""
    panels = row_panels(load_dashboard(), "KV events")
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    drawn = {re.sub(r"_bucket$", "", n) for e in exprs for n in metric_names(e)}
    assert drawn == KV_METRICS | {KV_FALLBACK}
    assert all('engine=~"$engine"' in e for e in exprs), exprs
    lag = [t["expr"] for t in panel(load_dashboard(), "KV-event lag")["targets"]]
    assert [e.split(",")[0] for e in lag] == ["histogram_quantile(0.5", "histogram_quantile(0.99"]
    assert all("by (le, engine)" in e for e in lag)
    targets = panel(load_dashboard(), "Predicted vs actual cached tokens")["targets"]
    predicted, actual, ratio = [t["expr"] for t in targets]
    assert metric_names(predicted) == {"llmstack_kv_predicted_cached_tokens_total"}
    assert metric_names(actual) == {"llmstack_kv_reported_cached_tokens_total", KV_FALLBACK}
    # The ratio is the two lines' sums (the actual one is the same fallback, not re-written).
    numerator, denominator = ratio.split("\n/\n")
    assert numerator == "sum" + predicted.removeprefix("sum by (engine) "), ratio
    assert re.sub(r"\s+", " ", denominator) == re.sub(r"\s+", " ", f"sum( {actual} )"), ratio
    rules = {r["alert"]: r["expr"] for g in load_rules()["groups"] for r in g["rules"]}
    assert {"LLMStackKvEventsStalled", "LLMStackKvPredictionsWrong"} <= set(rules)
    assert "llmstack_kv_event_connected" in rules["LLMStackKvEventsStalled"]
    assert metric_names(rules["LLMStackKvPredictionsWrong"]) == {
        "llmstack_kv_predicted_cached_tokens_total", "llmstack_kv_reported_cached_tokens_total", KV_FALLBACK,
        "llmstack_kv_event_batches_total"}
    # The names are the router's (names.rs), not guesses.
    assert KV_METRICS | {KV_FALLBACK} <= router_names(), sorted(KV_METRICS - router_names())


def metric_names(expr):
    return set(re.findall(r"\b(llmstack_\w+|vllm:[\w:]+)", expr))


def router_names():
    return set(re.findall(r'"(llmstack_\w+)"', NAMES_RS.read_text()))


def test_queries_and_rules_use_only_real_metric_names(prometheus_with_traffic):
    """Prometheus accepts a query on a misspelt name (it is just empty): check every name.
    The router's names come from names.rs (some appear only after an error); vLLM's from
    what Prometheus scraped off the simulators."""
    prom = prometheus_with_traffic
    known = router_names()
    scraped = set(json.loads(get(f"{prom}/api/v1/label/__name__/values"))["data"])
    exprs = [t["expr"] for p in all_panels(load_dashboard()) for t in p.get("targets", [])]
    exprs += [v["query"] for v in load_dashboard()["templating"]["list"] if v["type"] == "query"]
    exprs += [r["expr"] for g in load_rules()["groups"] for r in g["rules"]]
    for expr in exprs:
        for name in metric_names(expr):
            if name.startswith("vllm:"):
                assert name in scraped, f"{name} is not a series the simulator exposes"
            else:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name in known or base in known, f"{name} is not in names.rs"


# === a real Prometheus ===


def labelsets(result):
    return sorted(json.dumps(r["metric"], sort_keys=True) for r in result)


def finite(result):
    return [r for r in result if math.isfinite(float(r["value"][1]))]


def chat(router, model, content):
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "stream": True}
    req = urllib.request.Request(
        f"{router}/v1/chat/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        r.read()


@pytest.fixture(scope="module")
def prometheus(router_stack, tmp_path_factory):
    """Prometheus scraping the router and the three engines every second."""
    tool("prometheus")
    tool("promtool")
    hostport = lambda url: urllib.parse.urlparse(url).netloc  # noqa: E731
    targets = [hostport(u) for u in [router_stack.url, *router_stack.m_engines, router_stack.m2_engine]]
    tmp = tmp_path_factory.mktemp("prometheus")
    with prometheus_scraping(tmp, targets) as prom:
        up = lambda: len([r for r in query(prom, "up") if r["value"][1] == "1"]) == len(targets)  # noqa: E731
        eventually(up, f"all {len(targets)} targets up (log: {tmp / 'prometheus.log'})")
        yield prom


@pytest.fixture(scope="module")
def prometheus_with_traffic(prometheus, router_stack):
    """After every target's first scrape: streamed chats with repeated prompts on both
    models (the prefix cache hits from the second one on), spread over a few scrapes so
    rate() sees the counters move."""
    for i in range(12):
        chat(router_stack.url, router_stack.MODEL, PROMPT + str(i % 2))
        chat(router_stack.url, router_stack.OTHER_MODEL, PROMPT)
        time.sleep(0.25)
    eventually(
        lambda: finite(query(prometheus, "sum by (instance) (rate(vllm:prefix_cache_hits_total[1m]))")), "hits counted"
    )
    return prometheus


def test_prometheus_rejects_a_broken_query(prometheus):
    with pytest.raises(AssertionError, match="bad_data"):
        query(prometheus, "sum(rate(llmstack_requests_total[1m])")


def test_every_panel_query_is_accepted(prometheus_with_traffic):
    d = load_dashboard()
    targets = [(p["title"], t["expr"]) for p in all_panels(d) for t in p.get("targets", [])]
    assert len(targets) >= 25
    for title, expr in targets:
        query(prometheus_with_traffic, promql(expr))  # raises with Prometheus's error
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((\S+), (\w+)\)", v["query"])
            assert m, v["query"]
            values = json.loads(get(f"{prometheus_with_traffic}/api/v1/label/{m[2]}/values?match[]={m[1]}"))["data"]
            assert values, f"variable {v['name']} has no values"


def test_seed_panels_show_data(prometheus_with_traffic, router_stack):
    prom, d = prometheus_with_traffic, load_dashboard()
    n_engines = len(router_stack.m_engines) + 1

    ready = query(prom, promql(panel(d, "Available instances")["targets"][0]["expr"]))
    assert [float(r["value"][1]) for r in ready] == [n_engines]

    for title in SEED[1:]:
        for t in panel(d, title)["targets"]:
            expr = promql(t["expr"])
            split = FALLBACK.match(expr)
            assert split, f"{title}: not `<engines> or (<router> unless on () group(...))`"
            full = eventually(lambda e=expr: finite(query(prom, e)), f"{title} ({t['refId']})")
            engines = finite(query(prom, split["engines"]))
            router = eventually(lambda e=split["router"]: finite(query(prom, e)), f"{title}, the router's series")
            # With the engines scraped, the panel shows their series only.
            assert labelsets(full) == labelsets(engines), title
            if title.endswith("per instance"):
                assert {r["metric"]["instance"] for r in full} == {
                    urllib.parse.urlparse(u).netloc for u in [*router_stack.m_engines, router_stack.m2_engine]
                }, title
                assert len(router) == n_engines and all("engine" in r["metric"] for r in router), title
            else:  # percentiles per model
                assert {r["metric"]["model_name"] for r in full} == {router_stack.MODEL, router_stack.OTHER_MODEL}
                assert {r["metric"]["model"] for r in router} == {router_stack.MODEL, router_stack.OTHER_MODEL}
            if title == "KV cache hit rate per instance":
                assert all(0 < float(r["value"][1]) <= 1 for r in full + router), (full, router)


# === alert rules ===


def load_rules():
    return YAML(typ="safe", pure=True).load(RULES.read_text())


def test_rules_pass_promtool_lint_and_unit_tests():
    promtool = tool("promtool")
    check = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout and "WARNING" not in check.stdout + check.stderr
    unit = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULES_DIR)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_alert_is_labelled_and_tested_firing_and_not():
    rules = [r for g in load_rules()["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert {
        "LLMStackNoReadyEngines",
        "LLMStackModelUnavailable",
        "LLMStackHighErrorRatio",
        "LLMStackEngineQueueGrowing",
        "LLMStackEngineScrapeFailing",
        "LLMStackTargetDown",
    } <= alerts
    for r in rules:
        assert r.get("for"), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"].get("summary") and r["annotations"].get("description"), r["alert"]
    tests = YAML(typ="safe", pure=True).load(RULE_TESTS.read_text())
    fired, quiet = set(), set()
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fired == alerts, f"never seen firing: {alerts - fired}"
    assert quiet == alerts, f"never seen not firing: {alerts - quiet}"
