"""A real Prometheus (Debian's package) scrapes the router and two simulated engines on
loopback; promtool lints the router's exposition. scripts/test installs prometheus."""

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import free_port, stop_process
from conftest import http_get as get

REQUESTS = 6


def chat(router, model):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    req = urllib.request.Request(f"{router}/v1/chat/completions", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


@pytest.fixture(scope="module")
def prometheus(router_stack, tmp_path_factory):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (scripts/test installs it with apt-get)"
    for _ in range(REQUESTS):
        chat(router_stack.url, router_stack.MODEL)
    hostport = lambda url: urllib.parse.urlparse(url).netloc  # noqa: E731
    targets = [hostport(router_stack.url), *(hostport(u) for u in router_stack.m_engines)]
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: llmstack\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n"
    )
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", len(targets)
    finally:
        stop_process(proc)


def query(prom, expr):
    out = json.loads(get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}"))
    assert out["status"] == "success", out
    return out["data"]["result"]


def eventually(f, timeout=40):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = f()
            if last:
                return last
        except (OSError, ValueError) as e:  # not up yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"never true; last: {last}")


def test_promtool_lints_the_router_exposition(router_stack):
    chat(router_stack.url, router_stack.MODEL)
    text = get(f"{router_stack.url}/metrics")
    run = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "llmstack_requests_total" in text
    assert "vllm:" not in text


def test_prometheus_scrapes_router_and_engines(prometheus, router_stack):
    prom, n_targets = prometheus
    eventually(lambda: len([r for r in query(prom, "up") if r["value"][1] == "1"]) == n_targets)
    # The router's request counter: exactly the requests the fixture sent (and the one
    # the lint test may have sent, which is in its own labels-equal series).
    total = eventually(
        lambda: [r for r in query(prom, f'sum(llmstack_requests_total{{model="{router_stack.MODEL}",status="2xx"}})')
                 if float(r["value"][1]) >= REQUESTS]
    )  # fmt: skip
    assert float(total[0]["value"][1]) in (REQUESTS, REQUESTS + 1)
    # An engine gauge straight from the engines, and the same engines' gauges as the
    # router re-exports them.
    running = eventually(lambda: query(prom, "vllm:num_requests_running"))
    assert len(running) == 2
    kv = eventually(lambda: query(prom, "llmstack_engine_kv_cache_usage_ratio"))
    assert len(kv) >= 2
    assert all(0.0 <= float(r["value"][1]) <= 1.0 for r in kv)
