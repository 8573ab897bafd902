"""Every routing policy through llmstack-server with the official openai client.

Two llmstack-sim engines (instant profile, prompt-token details on, so each answer says
how much of its prompt the engine found cached) behind one router per policy.
"""

import openai
import pytest

from conftest import Router, Sim

M = "m"
POLICIES = ["roundrobin", "random", "leastloaded", "power_of_two", "session", "prefixaware"]


@pytest.fixture(scope="module")
def engines():
    sim = Sim("--engines", "2", "--profile", "instant", "--model", M, "--enable-prompt-tokens-details")
    yield sim
    sim.stop()


@pytest.fixture(scope="module", params=POLICIES)
def router(request, engines, tmp_path_factory):
    urls = [e["url"] for e in engines.engines]
    r = Router(
        tmp_path_factory.mktemp(request.param) / "llmstack-server.log",
        "--host", "127.0.0.1",
        "--port", "0",
        "--static-backends", ",".join(urls),
        "--static-models", ",".join([M] * len(urls)),
        "--routing-logic", request.param,
    )  # fmt: skip
    r.policy = request.param
    yield r
    r.stop()


def client(router):
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0, timeout=30)


def test_chat_and_stream_work_under_every_policy(router):
    c = client(router)
    r = c.chat.completions.create(
        model=M, messages=[{"role": "user", "content": "Hello!"}], max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 4
    chunks = list(
        c.chat.completions.create(
            model=M,
            messages=[{"role": "user", "content": "Hello again!"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == 3
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}], max_tokens=1)


@pytest.mark.parametrize("router", ["prefixaware", "session"], indirect=True)
def test_conversations_find_their_history_cached(router):
    """A four-turn conversation: under `prefixaware` (by the prompt alone) and `session`
    (keyed on OpenAI's `user` field) every later turn lands where the history is cached.
    (Round-robin fails this: its second turn finds nothing cached.)"""
    c = client(router)
    for user in range(3):
        messages = [
            {"role": "system", "content": f"Conversation {user} with {router.policy}. " * 5},
            {"role": "user", "content": f"Here is my long document number {user}: " + "lorem ipsum dolor " * 120},
        ]
        previous = 0
        for turn in range(4):
            r = c.chat.completions.create(
                model=M, messages=messages, max_tokens=8, user=f"user-{user}", extra_body={"ignore_eos": True}
            )
            cached = r.usage.prompt_tokens_details.cached_tokens
            if turn > 0:
                assert cached >= previous // 2, f"turn {turn}: {cached} of {r.usage.prompt_tokens} cached"
            previous = r.usage.prompt_tokens
            messages += [
                {"role": "assistant", "content": r.choices[0].message.content},
                {"role": "user", "content": f"And what about part {turn}?"},
            ]
