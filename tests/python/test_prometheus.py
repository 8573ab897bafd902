"""A real Prometheus (Debian's package) scrapes the router and two simulated engines on
loopback; promtool lints the router's exposition. scripts/test installs prometheus."""

import json
import subprocess
import urllib.parse
import urllib.request

import pytest

from conftest import eventually, prometheus_scraping
from conftest import http_get as get
from conftest import prom_query as query

REQUESTS = 6


def chat(router, model):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    req = urllib.request.Request(f"{router}/v1/chat/completions", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


@pytest.fixture(scope="module")
def prometheus(router_stack, tmp_path_factory):
    for _ in range(REQUESTS):
        chat(router_stack.url, router_stack.MODEL)
    hostport = lambda url: urllib.parse.urlparse(url).netloc  # noqa: E731
    targets = [hostport(router_stack.url), *(hostport(u) for u in router_stack.m_engines)]
    with prometheus_scraping(tmp_path_factory.mktemp("prometheus"), targets) as prom:
        yield prom, len(targets)


def test_promtool_lints_the_router_exposition(router_stack):
    chat(router_stack.url, router_stack.MODEL)
    text = get(f"{router_stack.url}/metrics")
    run = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "llmstack_requests_total" in text
    assert "vllm:" not in text


def test_prometheus_scrapes_router_and_engines(prometheus, router_stack):
    prom, n_targets = prometheus
    eventually(lambda: len([r for r in query(prom, "up") if r["value"][1] == "1"]) == n_targets, timeout=40)
    # The router's request counter: exactly the requests the fixture sent (and the one
    # the lint test may have sent, which is in its own labels-equal series).
    total = eventually(
        lambda: [r for r in query(prom, f'sum(llmstack_requests_total{{model="{router_stack.MODEL}",status="2xx"}})')
                 if float(r["value"][1]) >= REQUESTS],
        timeout=40,
    )  # fmt: skip
    assert float(total[0]["value"][1]) in (REQUESTS, REQUESTS + 1)
    # An engine gauge straight from the engines, and the same engines' gauges as the
    # router re-exports them.
    running = eventually(lambda: query(prom, "vllm:num_requests_running"), timeout=40)
    assert len(running) == 2
    kv = eventually(lambda: query(prom, "llmstack_engine_kv_cache_usage_ratio"), timeout=40)
    assert len(kv) >= 2
    assert all(0.0 <= float(r["value"][1]) <= 1.0 for r in kv)
