"""API keys and tenant rate limits of llmstack-server (llmstack-gateway), with the official openai client.

Behind the router: one llmstack-sim engine serving `m`. The router reads its keys from a YAML
file (--api-keys-file) of three tenants: `limited` (2 requests per minute), `tokens` (a small
tokens-per-minute budget) and `free` (no limits). Every client has max_retries=0: the SDK would
otherwise retry a 429 after its Retry-After, and a 401 is never retried anyway.

Each test gets its own router (token buckets start full), started in well under a second.

Then the admission queue (priority classes under saturation, the waiting room of a model with
no ready engine, a full queue) and outlier ejection, each test with its own engines and router.
"""

import concurrent.futures
import hashlib
import json
import os
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import BINARY, Router, Sim, eventually, free_port

M = "m"
LIMITED, TOKENS, FREE, FREE_2 = "sk-limited-1", "sk-tokens-1", "sk-free-1", "sk-free-2"
TPM = 100
KEYS_YAML = f"""\
keys:
  - key: {LIMITED}
    tenant: limited
    priority: low
    rpm: 2
  - key: {TOKENS}
    tenant: tokens
    tpm: {TPM}
  - key: {FREE}
    tenant: free
    priority: high
  # A key given by its SHA-256 only (`printf %s sk-free-2 | sha256sum`): the same tenant.
  - sha256: {hashlib.sha256(FREE_2.encode()).hexdigest()}
    tenant: free
    priority: high
"""
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")


class Gateway:
    def __init__(self, router, keys_file, admin_port):
        self.router = router
        self.keys_file = keys_file
        self.admin_url = f"http://127.0.0.1:{admin_port}"

    @property
    def url(self):
        return self.router.url

    def client(self, key):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def gateway(sim_factory, tmp_path):
    sim = sim_factory("--profile", "instant", "--model", M)
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(KEYS_YAML)
    admin_port = free_port()
    router = Router(
        tmp_path / "llmstack-server.log",
        "--host", "127.0.0.1", "--port", "0", "--admin-port", str(admin_port),
        "--service-discovery", "static", "--static-backends", sim.url, "--static-models", M,
        "--api-keys-file", str(keys_file),
    )  # fmt: skip
    yield Gateway(router, keys_file, admin_port)
    router.stop()


def chat(client, **kw):
    return client.chat.completions.create(
        model=M, messages=[{"role": "user", "content": "Hello!"}], max_tokens=4, extra_body={"ignore_eos": True}, **kw
    )


def raw_chat(client):
    return client.chat.completions.with_raw_response.create(
        model=M, messages=[{"role": "user", "content": "Hello!"}], max_tokens=4, extra_body={"ignore_eos": True}
    )


def http(method, url, headers=None, body=None):
    """(status, headers, decoded JSON or text body); an error status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"content-type": "application/json"} if data else {}), **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode(errors="replace")


# --- authentication ------------------------------------------------------------------------------


def test_wrong_key_raises_authentication_error(gateway):
    with pytest.raises(openai.AuthenticationError) as e:
        chat(gateway.client("wrong"))
    err = e.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.type == "invalid_request_error"
    assert err.param is None
    assert err.body["code"] == "invalid_api_key" and err.body["message"]
    assert "wrong" not in err.body["message"]  # a presented key is never echoed
    # Every OpenAI route, not only chat.
    with pytest.raises(openai.AuthenticationError):
        gateway.client("wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        gateway.client("wrong").completions.create(model=M, prompt="x", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        gateway.client("wrong").embeddings.create(model=M, input="x")


def test_valid_keys_succeed(gateway):
    for key in (FREE, FREE_2, LIMITED, TOKENS):
        reply = chat(gateway.client(key))
        assert reply.model == M
        assert reply.usage.completion_tokens == 4
        assert reply.choices[0].message.content
    client = gateway.client(FREE)
    assert [m.id for m in client.models.list()] == [M]
    stream = client.chat.completions.create(
        model=M, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})  # fmt: skip
    assert list(stream)[-1].usage.completion_tokens == 3
    assert client.embeddings.create(model=M, input="x").data[0].embedding


def test_missing_key_and_x_api_key(gateway):
    """Without any key: 401 with OpenAI's body; `x-api-key` (Anthropic's SDK) works as Bearer does."""
    body = {"model": M, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    status, _, answer = http("POST", f"{gateway.url}/v1/chat/completions", body=body)
    assert status == 401
    assert answer["error"]["code"] == "invalid_api_key"
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] is None
    status, _, answer = http("POST", f"{gateway.url}/v1/chat/completions", {"x-api-key": FREE}, body)
    assert status == 200 and answer["usage"]["completion_tokens"] <= 2
    status, _, _ = http("POST", f"{gateway.url}/v1/chat/completions", {"x-api-key": "wrong"}, body)
    assert status == 401
    # The scheme is case-insensitive.
    status, _, _ = http("POST", f"{gateway.url}/v1/chat/completions", {"authorization": f"bearer {FREE}"}, body)
    assert status == 200


def test_which_routes_need_a_key(gateway):
    for path in ("/v1/models", "/engines", "/version"):
        status, _, answer = http("GET", f"{gateway.url}{path}")
        assert status == 401, path
        assert answer["error"]["code"] == "invalid_api_key", path
        status, _, _ = http("GET", f"{gateway.url}{path}", {"authorization": f"Bearer {FREE}"})
        assert status == 200, path
    # Probes and the Prometheus scrape stay open.
    for path in ("/health", "/ready", "/metrics"):
        status, _, _ = http("GET", f"{gateway.url}{path}")
        assert status == 200, path
    # The admin listener serves /engines without a key.
    status, _, engines = http("GET", f"{gateway.admin_url}/engines")
    assert status == 200 and len(engines) == 1
    status, _, metrics = http("GET", f"{gateway.admin_url}/metrics")
    assert status == 200 and "llmstack_auth_failures_total" in metrics


def test_keys_file_is_reloaded(gateway):
    """A change of the file (here replaced whole, as an editor or the kubelet does) is seen
    within about a second, without a restart; an invalid file leaves the previous keys."""
    new = gateway.keys_file.with_suffix(".new")
    new.write_text("# one key per line\nsk-new-1\n")
    os.replace(new, gateway.keys_file)

    def reloaded():
        try:
            chat(gateway.client("sk-new-1"))
            return True
        except openai.AuthenticationError:
            return False

    eventually(reloaded, "the new key accepted", timeout=10)
    with pytest.raises(openai.AuthenticationError):
        chat(gateway.client(FREE))
    gateway.keys_file.write_text("keys:\n  - tenant: nobody\n")  # no key: invalid
    eventually(lambda: "API keys not reloaded" in gateway.router.log(), "the invalid file logged", timeout=10)
    assert chat(gateway.client("sk-new-1")).usage.completion_tokens == 4


def test_api_keys_flag(sim_factory, tmp_path):
    """--api-keys: keys of the tenant `default`, no limits (so no x-ratelimit headers)."""
    sim = sim_factory("--profile", "instant", "--model", M)
    router = Router(
        tmp_path / "llmstack-server.log", "--host", "127.0.0.1", "--port", "0", "--service-discovery", "static",
        "--static-backends", sim.url, "--static-models", M, "--api-keys", "sk-one,sk-two",
    )  # fmt: skip
    try:
        for key in ("sk-one", "sk-two"):
            client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0, timeout=30)
            raw = raw_chat(client)
            assert raw.parse().usage.completion_tokens == 4
            assert not [h for h in raw.headers if h.startswith("x-ratelimit-")]
        with pytest.raises(openai.AuthenticationError):
            chat(openai.OpenAI(base_url=f"{router.url}/v1", api_key="sk-three", max_retries=0))
    finally:
        router.stop()


def test_engine_key_replaces_the_clients(sim_factory, tmp_path):
    """Engines with a key of their own (vLLM's --api-key / VLLM_API_KEY): the router sends them
    theirs (--engine-api-key, env VLLM_API_KEY) in place of the client's key."""
    sim = sim_factory("--profile", "instant", "--model", M, "--api-key", "sk-engine")
    direct = openai.OpenAI(base_url=f"{sim.url}/v1", api_key=FREE, max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as e:
        chat(direct)
    assert e.value.body == "Unauthorized"  # vLLM's {"error": "Unauthorized"}
    router = Router(
        tmp_path / "llmstack-server.log", "--host", "127.0.0.1", "--port", "0", "--service-discovery", "static",
        "--static-backends", sim.url, "--static-models", M, "--api-keys", FREE, "--engine-api-key", "sk-engine",
    )  # fmt: skip
    try:
        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=FREE, max_retries=0, timeout=30)
        assert chat(client).usage.completion_tokens == 4
        assert [m.id for m in client.models.list()] == [M]
        # The engine's key is not a client key.
        with pytest.raises(openai.AuthenticationError) as e:
            chat(openai.OpenAI(base_url=f"{router.url}/v1", api_key="sk-engine", max_retries=0))
        assert e.value.code == "invalid_api_key"
    finally:
        router.stop()


# --- rate limits ---------------------------------------------------------------------------------


def test_requests_per_minute(gateway):
    client = gateway.client(LIMITED)
    first = raw_chat(client)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"]
    assert "x-ratelimit-limit-tokens" not in first.headers  # no tpm for this tenant
    assert first.parse().usage.completion_tokens == 4
    second = raw_chat(client)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.parse().choices[0].message.content

    with pytest.raises(openai.RateLimitError) as e:
        chat(client)
    err = e.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert err.type == "requests"
    assert err.body["message"]
    headers = err.response.headers
    retry_after = headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 30  # one request back per 30 s
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"]

    # Other tenants are not affected; an unlimited one gets no x-ratelimit headers.
    free = raw_chat(gateway.client(FREE))
    assert free.status_code == 200 and free.parse().usage.completion_tokens == 4
    assert not [h for h in free.headers if h.startswith("x-ratelimit-")]
    # Refused again while the bucket is empty (a refused request takes nothing from it).
    with pytest.raises(openai.RateLimitError):
        chat(client)
    status, _, metrics = http("GET", f"{gateway.url}/metrics")
    (refused,) = [line for line in metrics.splitlines() if line.startswith("llmstack_rate_limited_total{")]
    assert 'tenant="limited"' in refused and 'limit="requests"' in refused and refused.endswith(" 2"), refused


def test_tokens_per_minute(gateway):
    client = gateway.client(TOKENS)
    first = raw_chat(client)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < TPM
    assert first.headers["x-ratelimit-reset-tokens"]
    assert "x-ratelimit-limit-requests" not in first.headers  # no rpm for this tenant
    # Spend the budget: a request is admitted on an estimate from its body, then charged its
    # usage (prompt + completion, here more than what is left); then the tenant waits.
    reply = client.chat.completions.create(
        model=M, messages=[{"role": "user", "content": "Hello!"}], max_tokens=TPM, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == TPM
    with pytest.raises(openai.RateLimitError) as e:
        chat(client)
    assert e.value.code == "rate_limit_exceeded" and e.value.type == "tokens"
    headers = e.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-tokens"] == str(TPM)
    # The SDK's own retries would honour Retry-After; with max_retries=0 it raises at once.
    assert chat(gateway.client(FREE)).usage.completion_tokens == 4


# --- admission queue: priorities, the waiting room, a full queue ----------------------------------
#
# Timing assertions compare orders of magnitude (a queued request against an instant refusal,
# the last high request against the last low one), never a few milliseconds: the tests run
# on small, busy machines with debug binaries.

HIGH, LOW = "sk-interactive-1", "sk-batch-1"
PRIORITY_KEYS_YAML = f"""\
keys:
  - key: {HIGH}
    tenant: interactive
    priority: high
  - key: {LOW}
    tenant: batch
    priority: low
"""


def router_args(*backends, models=None):
    """Flags of a router over static `backends`, each serving `models` (default: M for all)."""
    return [
        "--host", "127.0.0.1", "--port", "0", "--service-discovery", "static",
        "--static-backends", ",".join(backends),
        "--static-models", ",".join(models or [M] * len(backends)),
    ]  # fmt: skip


def client_for(url, key="sk-none", timeout=60):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=timeout)


def metric_values(url, name):
    """{labels text: value} of one metric family from a /metrics page."""
    _, _, text = http("GET", f"{url}/metrics")
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name) :]] = float(value)
    return out


def metric(url, name, **labels):
    """The sum of a metric's series whose labels include `labels` (0 when none)."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in metric_values(url, name).items() if all(w in k for w in want))


def get_json(url):
    status, _, body = http("GET", url)
    assert status == 200, (url, status, body)
    return body


def wait_for(f, what, timeout=15, interval=0.02):
    """Polls f() quickly (unlike conftest's `eventually`, every 20 ms) until it is truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = f()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: never true; last: {last}")


def assert_service_unavailable(err):
    """The admission queue's refusal: 503, Retry-After, OpenAI's body naming the model."""
    assert err.status_code == 503
    retry_after = err.response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    assert err.type == "ServiceUnavailableError", err.body
    assert err.param == "model", err.body
    assert err.body["message"], err.body


class RouterWithoutEngines(Router):
    """A router started before any engine is up: /ready is 503 then, so wait for /health."""

    def _wait_ready(self, deadline):
        last = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
                    last = r.status
            except OSError as e:
                last = e
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmstack-server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"llmstack-server /health never answered 200 (last: {last}):\n{self.log()}")


class SimOnPort(Sim):
    """llmstack-sim on a given port (conftest's Sim always asks for a free one)."""

    def __init__(self, port, *args):
        self.proc = subprocess.Popen(
            [BINARY, "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"llmstack-sim on port {port} did not start")
        self.engines = json.loads(line)["engines"]


def test_high_priority_goes_first_under_saturation(sim_factory, tmp_path):
    """One engine with real step times (~7 ms per token: a 16-token answer takes ~0.15 s), at
    most 2 requests in flight on it. Ten low-priority requests arrive first and queue; ten
    high-priority ones arrive behind them and are served first: strict priority between
    classes. Without it (FIFO) the high ones would be the slowest."""
    sim = sim_factory("--profile", "llama3-8b-h100", "--speedup", "1", "--model", M)
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(PRIORITY_KEYS_YAML)
    router = Router(
        tmp_path / "llmstack-server.log", *router_args(sim.url), "--api-keys-file", str(keys_file),
        "--max-in-flight-per-engine", "2", "--queue-timeout", "30",
    )  # fmt: skip
    try:
        clients = {HIGH: client_for(router.url, HIGH), LOW: client_for(router.url, LOW)}

        def one(key):
            start = time.monotonic()
            reply = clients[key].chat.completions.create(
                model=M, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=16,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            end = time.monotonic()
            return reply, end - start, end

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            low = [pool.submit(one, LOW) for _ in range(10)]
            # The low ones are in: two run, the rest wait in the low class.
            wait_for(lambda: metric(router.url, "llmstack_queue_depth", model=M, priority="low") >= 3,
                     "low-priority requests queued")  # fmt: skip
            high = [pool.submit(one, HIGH) for _ in range(10)]
            low_results = [f.result(timeout=120) for f in low]
            high_results = [f.result(timeout=120) for f in high]

        for reply, _, _ in low_results + high_results:
            assert reply.usage.completion_tokens == 16
            assert reply.choices[0].message.content
        low_lat = sorted(r[1] for r in low_results)
        high_lat = sorted(r[1] for r in high_results)
        detail = f"high latencies {[round(x, 3) for x in high_lat]}, low {[round(x, 3) for x in low_lat]}"
        # p99 of ten requests is the slowest.
        assert high_lat[-1] < low_lat[-1], detail
        assert statistics.median(high_lat) < statistics.median(low_lat), detail
        # The last high request finished before the last low one, though it arrived later.
        assert max(r[2] for r in high_results) < max(r[2] for r in low_results), detail
        assert metric(router.url, "llmstack_queue_rejected_total") == 0
        assert metric(router.url, "llmstack_queue_depth") == 0
    finally:
        router.stop()


def test_waiting_room_holds_requests_until_an_engine_is_ready(tmp_path):
    """--queue-timeout: a model listed in --static-models whose engine is not up yet (scale
    from zero) holds requests until the engine is ready, instead of an instant 503; past the
    deadline the client gets 503 with Retry-After."""
    port = free_port()
    backend = f"http://127.0.0.1:{port}"
    router = RouterWithoutEngines(
        tmp_path / "llmstack-server.log", *router_args(backend), "--queue-timeout", "10",
        "--static-backend-health-check-interval", "0.5",
    )  # fmt: skip
    sim = None
    try:
        # The first probe found nothing listening: the engine is unready, nothing is routable.
        wait_for(lambda: get_json(f"{router.url}/engines")[0]["state"] == "unready",
                 "the engine probed unready", timeout=10, interval=0.1)  # fmt: skip
        result = {}

        def send():
            start = time.monotonic()
            try:
                result["reply"] = chat(client_for(router.url))
            except Exception as e:  # reported by the assertions below
                result["error"] = e
            result["elapsed"] = time.monotonic() - start

        waiter = threading.Thread(target=send, daemon=True)
        waiter.start()
        time.sleep(1)
        assert waiter.is_alive(), f"the request did not wait for an engine: {result}"
        assert metric(router.url, "llmstack_queue_depth", model=M) == 1
        sim = SimOnPort(port, "--profile", "instant", "--model", M)
        waiter.join(timeout=15)
        assert not waiter.is_alive(), "the request was not admitted once the engine was ready"
        assert "error" not in result, result["error"]
        assert result["reply"].usage.completion_tokens == 4
        assert result["reply"].choices[0].message.content
        assert 1 <= result["elapsed"] < 10, result
        assert metric(router.url, "llmstack_queue_rejected_total") == 0
    finally:
        router.stop()
        if sim is not None:
            sim.stop()

    # No engine ever comes: refused at the deadline, not at once and not never.
    port = free_port()
    router = RouterWithoutEngines(
        tmp_path / "llmstack-server-2.log", *router_args(f"http://127.0.0.1:{port}"), "--queue-timeout", "0.6",
    )  # fmt: skip
    try:
        wait_for(lambda: get_json(f"{router.url}/engines")[0]["state"] == "unready",
                 "the engine probed unready", timeout=10, interval=0.1)  # fmt: skip
        start = time.monotonic()
        with pytest.raises(openai.InternalServerError) as e:
            chat(client_for(router.url))
        elapsed = time.monotonic() - start
        assert_service_unavailable(e.value)
        assert 0.5 <= elapsed < 5, elapsed
        assert metric(router.url, "llmstack_queue_rejected_total", reason="timeout") == 1
    finally:
        router.stop()


def test_full_queue_refuses_at_once(sim_factory, tmp_path):
    """One request in flight (the limit), one waiting (the queue's length): a third is refused
    with 503 at once, not after --queue-timeout; the waiting one is served when the first ends."""
    sim = sim_factory("--profile", "llama3-8b-h100", "--model", M)
    router = Router(
        tmp_path / "llmstack-server.log", *router_args(sim.url),
        "--max-in-flight-per-engine", "1", "--queue-timeout", "30", "--max-queue-length", "1",
    )  # fmt: skip
    try:
        client = client_for(router.url)
        # A long stream (2000 tokens, ~15 s at this profile) holds the engine's one place
        # until it is closed below.
        slow = client.chat.completions.create(
            model=M, messages=[{"role": "user", "content": "Write a long essay."}], max_tokens=2000, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        try:
            assert next(iter(slow)) is not None  # in flight: the engine has answered
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                waiting = pool.submit(chat, client)
                wait_for(lambda: metric(router.url, "llmstack_queue_depth", model=M) == 1, "the second request queued")
                start = time.monotonic()
                with pytest.raises(openai.InternalServerError) as e:
                    chat(client)
                elapsed = time.monotonic() - start
                assert_service_unavailable(e.value)
                assert elapsed < 5, f"refused after {elapsed:.2f} s, not at once"
                assert not waiting.done(), "the queued request did not wait"
                assert metric(router.url, "llmstack_queue_rejected_total", reason="full") == 1
                # The stream ends (client gone): its place goes to the waiting request.
                slow.close()
                reply = waiting.result(timeout=30)
        finally:
            slow.close()
        assert reply.usage.completion_tokens == 4
        assert metric(router.url, "llmstack_queue_depth") == 0
        assert chat(client).usage.completion_tokens == 4  # room again
    finally:
        router.stop()


# --- outlier ejection ------------------------------------------------------------------------------


def test_failing_engine_is_ejected(sim_factory, tmp_path):
    """Three engines, round robin; one answers every request with 500 (its /sim/faults). A 500
    is not retried, so the client sees each failure; after 3 in a row the engine is ejected
    (for 30 s) and every later request goes to the two others."""
    sim = sim_factory("--engines", "3", "--profile", "instant", "--model", M)
    urls = [e["url"] for e in sim.engines]
    admin_port = free_port()
    router = Router(
        tmp_path / "llmstack-server.log", *router_args(*urls), "--admin-port", str(admin_port),
        "--routing-logic", "roundrobin", "--outlier-consecutive-failures", "3", "--outlier-base-ejection", "30",
    )  # fmt: skip
    admin = f"http://127.0.0.1:{admin_port}"

    def engines():
        return {e["url"]: e for e in get_json(f"{admin}/engines")}

    try:
        wait_for(lambda: all(e["state"] == "ready" for e in engines().values()) and len(engines()) == 3,
                 "all three engines ready", timeout=20, interval=0.1)  # fmt: skip
        bad = urls[1]
        status, _, faults = http("POST", f"{bad}/sim/faults", body={"error_rate": 1.0, "error_status": 500})
        assert status == 200 and faults["error_rate"] == 1.0, faults

        client = client_for(router.url)
        ok, failed = 0, []
        for _ in range(30):
            try:
                assert chat(client).usage.completion_tokens == 4
                ok += 1
            except openai.InternalServerError as e:
                failed.append(e)
        assert [e.status_code for e in failed] == [500, 500, 500], [str(e) for e in failed]
        assert ok == 27

        state = engines()
        assert state[bad]["outlier"]["state"] == "ejected", state[bad]
        assert state[bad]["outlier"]["ejections"] == 1, state[bad]
        assert 0 < state[bad]["outlier"]["remaining_ms"] <= 30_000, state[bad]
        for url in urls:
            if url != bad:
                assert state[url]["outlier"] == {"state": "serving", "failures": 0}, state[url]
        # Probes still pass (/health is fine): ejection, not unreadiness, keeps it out.
        assert state[bad]["state"] == "ready"
        assert metric(admin, "llmstack_engine_ejections_total") == 1
    finally:
        router.stop()
