"""API keys and tenant rate limits of llmstack-server (llmstack-gateway), with the official openai client.

Behind the router: one llmstack-sim engine serving `m`. The router reads its keys from a YAML
file (--api-keys-file) of three tenants: `limited` (2 requests per minute), `tokens` (a small
tokens-per-minute budget) and `free` (no limits). Every client has max_retries=0: the SDK would
otherwise retry a 429 after its Retry-After, and a 401 is never retried anyway.

Each test gets its own router (token buckets start full), started in well under a second.
"""

import hashlib
import json
import os
import urllib.error
import urllib.request

import openai
import pytest

from conftest import Router, eventually, free_port

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
