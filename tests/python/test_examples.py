"""The library examples, run as built by `cargo build --workspace --examples`.

- router (llmstack-proxy): a complete router composed from the libraries' layers (discovery, scraper,
  request ids, accounting, retry, routing, forwarding) in front of llmstack-sim processes: it fails
  over to a live engine when one dies, and a stream through it is byte-identical to the engine's.
- embed-axum: an axum gateway embedding the router (RouteLayer over a static endpoint list), in front of
  two llmstack-sim processes; checked with plain HTTP like any OpenAI client would use it.
- custom-policy: a third-party policy that asserts its own decisions; it must exit 0.

Nothing is built here: the binaries come from $LLMSTACK_EXAMPLES (a directory), else
$CARGO_TARGET_DIR/debug/examples, else target/debug/examples; the tests skip when they are missing
(and fail when $LLMSTACK_EXAMPLES is set, as scripts/test does).
"""

import json
import os
import pathlib
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, Sim, request_success_total, served_since, stop_process

MODEL = "m"


def examples_dir():
    if os.environ.get("LLMSTACK_EXAMPLES"):
        return pathlib.Path(os.environ["LLMSTACK_EXAMPLES"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / "examples"


def example(name):
    path = examples_dir() / name
    if not os.access(path, os.X_OK):
        if os.environ.get("LLMSTACK_EXAMPLES"):
            pytest.fail(f"{path} missing although LLMSTACK_EXAMPLES is set")
        pytest.skip(f"{path} not built (run `cargo build -p llmstack-routing --examples`)")
    return path


class Gateway:
    """A running embed-axum example; its output goes to a file so it never blocks on a pipe."""

    LISTENING = re.compile(r"listening on (http://\S+)")

    def __init__(self, binary, log_path, *args, timeout=15):
        self.log_path = pathlib.Path(log_path)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            deadline = time.monotonic() + timeout
            while not (m := self.LISTENING.search(self.log())):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"embed-axum exited with {self.proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embed-axum printed no listening address:\n{self.log()}")
                time.sleep(0.02)
            self.url = m.group(1)
        except BaseException:
            self.stop()
            raise

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        stop_process(self.proc)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    binary = example("embed-axum")
    sims, gw = [], None
    try:
        for _ in range(2):
            sims.append(Sim("--profile", "instant", "--model", MODEL))
        log = tmp_path_factory.mktemp("embed-axum") / "embed-axum.log"
        gw = Gateway(binary, log, "127.0.0.1:0", MODEL, *(s.url for s in sims))
        gw.sims = sims
        yield gw
    finally:
        if gw is not None:
            gw.stop()
        for s in sims:
            s.stop()


def post(url, body, timeout=30):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def chat(model=MODEL, **kw):
    return {"model": model, "messages": [{"role": "user", "content": "Hello!"}], **kw}


def test_chat_completions_reach_both_engines(gateway):
    engines = [s.url for s in gateway.sims]
    before = [request_success_total(u) for u in engines]
    for _ in range(20):
        status, headers, raw = post(f"{gateway.url}/v1/chat/completions", chat(max_tokens=3, ignore_eos=True))
        assert status == 200, raw
        assert headers.get("Content-Type", "").startswith("application/json")
        body = json.loads(raw)
        assert body["object"] == "chat.completion"
        assert body["model"] == MODEL
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["choices"][0]["message"]["content"].strip()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 3
    delta = served_since(engines, before, 20)
    assert sum(delta) == 20, delta
    assert all(d > 0 for d in delta), f"least-loaded left an engine idle: {delta}"


def test_completions(gateway):
    status, _, raw = post(
        f"{gateway.url}/v1/completions", {"model": MODEL, "prompt": "The sky is", "max_tokens": 2, "ignore_eos": True}
    )
    assert status == 200, raw
    body = json.loads(raw)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"].strip()
    assert body["usage"]["completion_tokens"] == 2


def test_streaming_passes_through(gateway):
    status, headers, raw = post(
        f"{gateway.url}/v1/chat/completions", chat(max_tokens=5, stream=True, ignore_eos=True)
    )
    assert status == 200, raw
    assert headers.get("Content-Type", "").startswith("text/event-stream")
    events = [line for line in raw.decode().splitlines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) == 5


def test_unknown_model_is_an_openai_404(gateway):
    status, headers, raw = post(f"{gateway.url}/v1/chat/completions", chat("gpt-9"))
    assert status == 404
    assert headers.get("Content-Type") == "application/json"
    error = json.loads(raw)["error"]
    assert error["code"] == 404
    assert error["type"] == "NotFoundError"
    assert "gpt-9" in error["message"]


def test_custom_policy_example_passes():
    run = subprocess.run([example("custom-policy")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all decisions as expected" in run.stdout


def stream_raw(url, body, request_id):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "X-Request-Id": request_id},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.headers, r.read()


def test_router_example_fails_over_and_streams_byte_identical(tmp_path):
    binary = example("router")
    sims, gw = [], None
    try:
        for _ in range(2):
            sims.append(Sim("--profile", "instant", "--model", MODEL))
        gw = Gateway(binary, tmp_path / "router.log", "127.0.0.1:0", "roundrobin", *(s.url for s in sims))
        # Both engines probed ready (models are learnt from /v1/models).
        deadline = time.monotonic() + 10
        while True:
            status, _, raw = post(f"{gw.url}/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1})
            if status == 200:
                break
            assert time.monotonic() < deadline, raw
            time.sleep(0.1)
        live = sims[1].url
        before = request_success_total(live)
        # One engine dies; the prober has not noticed yet (2 failed probes, 1 s apart):
        # round-robin still sends it every other request, and each one fails over.
        sims[0].stop()
        for _ in range(10):
            status, headers, raw = post(f"{gw.url}/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2})
            assert status == 200, raw
            assert headers.get("x-request-id")
        assert served_since([live], [before], 10) == [10]

        body = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 24, "stream": True,
                "stream_options": {"include_usage": True}, "seed": 3, "temperature": 0}
        for attempt in range(4):
            routed = stream_raw(f"{gw.url}/v1/completions", body, "same-id")
            direct = stream_raw(f"{live}/v1/completions", body, "same-id")
            assert routed[0] == 200
            assert routed[1]["Content-Type"] == direct[1]["Content-Type"]
            assert routed[2].count(b"data: ") > 24
            if routed[2] == direct[2]:
                break
            # `created` is a whole-second timestamp: the two may straddle a second.
            assert attempt < 3, (routed[2], direct[2])
    finally:
        if gw is not None:
            gw.stop()
        for s in sims:
            s.stop()
