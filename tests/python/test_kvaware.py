"""`--routing-logic kvaware` with the official openai client: two llmstack-sim engines that
tokenize with the fixture tokenizer and publish KV events, one router that subscribes and
tokenizes with the same files."""

import json
import urllib.request

import openai
import pytest

from conftest import ROOT, Router, Sim, eventually

M = "m"
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer"


@pytest.fixture(scope="module")
def engines():
    sim = Sim(
        "--engines", "2", "--profile", "instant", "--model", M, "--enable-prompt-tokens-details",
        "--tokenizer", str(TOKENIZER),
        "--kv-events-endpoint", "tcp://*:0", "--kv-events-replay-endpoint", "tcp://*:0",
    )  # fmt: skip
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def router(engines, tmp_path_factory):
    urls = [e["url"] for e in engines.engines]
    r = Router(
        tmp_path_factory.mktemp("kvaware") / "llmstack-server.log",
        "--host", "127.0.0.1",
        "--port", "0",
        "--static-backends", ",".join(urls),
        "--routing-logic", "kvaware",
        "--tokenizer", f"{M}={TOKENIZER}",
    )  # fmt: skip
    yield r
    r.stop()


def engines_view(router):
    with urllib.request.urlopen(f"{router.url}/engines", timeout=5) as r:
        return json.loads(r.read())


def metric(router, name, **labels):
    with urllib.request.urlopen(f"{router.url}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
        elif not labels and line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_every_engine_is_subscribed(router):
    def connected():
        view = engines_view(router)
        return len(view) == 2 and all(
            e["kv_events"] and e["kv_events"]["sources"] and e["kv_events"]["sources"][0]["state"] == "connected"
            for e in view
        )

    eventually(connected, "both engines' publishers connected")


def test_conversations_are_routed_by_the_engines_kv_events(router):
    """Four-turn conversations through the openai client: every later turn finds at least
    its history's blocks cached, and the router predicted it from the index."""
    c = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0, timeout=30)
    eventually(lambda: all(e["kv_events"]["sources"][0]["state"] == "connected" for e in engines_view(router)))
    for user in range(3):
        messages = [
            {"role": "system", "content": f"Conversation {user}. " * 5},
            {"role": "user", "content": f"Here is my long document number {user}: " + "lorem ipsum dolor " * 120},
        ]
        previous = 0
        for turn in range(4):
            stream = turn % 2 == 1
            if stream:
                chunks = list(
                    c.chat.completions.create(
                        model=M, messages=messages, max_tokens=8, stream=True,
                        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
                    )
                )  # fmt: skip
                usage = chunks[-1].usage
                content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            else:
                r = c.chat.completions.create(model=M, messages=messages, max_tokens=8, extra_body={"ignore_eos": True})
                usage, content = r.usage, r.choices[0].message.content
            cached = usage.prompt_tokens_details.cached_tokens
            if turn > 0:
                assert cached >= previous // 2, f"turn {turn}: {cached} of {usage.prompt_tokens} cached"
            previous = usage.prompt_tokens
            messages += [
                {"role": "assistant", "content": content},
                {"role": "user", "content": f"And what about part {turn}?"},
            ]
    by_index = metric(router, "llmstack_routing_decisions_total", policy="kvaware", reason="kv_cached")
    assert by_index >= 6, f"only {by_index} decisions made by the KV index"
    assert metric(router, "llmstack_routing_decisions_total", policy="kvaware", reason="no_tokenizer") == 0
    assert metric(router, "llmstack_kv_predicted_cached_tokens_total") > 0
    assert metric(router, "llmstack_kv_event_batches_total") > 0
    blocks = sum(e["kv_events"]["index"]["gpu_blocks"] for e in engines_view(router))
    assert blocks > 0


def test_kv_flags_without_kvaware_fail_at_start(tmp_path):
    with pytest.raises(RuntimeError, match="add --routing-logic kvaware"):
        Router(
            tmp_path / "llmstack-server.log",
            "--host", "127.0.0.1", "--port", "0",
            "--static-backends", "http://127.0.0.1:9",
            "--tokenizer", str(TOKENIZER),
        )  # fmt: skip
