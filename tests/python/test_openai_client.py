"""The official openai client against llmstack-sim, as an application would use vLLM."""

import openai
import pytest


def client(sim):
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key="EMPTY", max_retries=0, timeout=30)


def test_models_list(sim):
    models = client(sim).models.list()
    assert [m.id for m in models.data] == ["test-model"]
    assert models.data[0].owned_by == "vllm"


def test_chat_completion(sim):
    r = client(sim).chat.completions.create(
        model="test-model",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.choices[0].message.content.startswith(" ")


def test_chat_stream_with_usage(sim):
    stream = client(sim).chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Tell me a story"}]}],
        max_completion_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 0


def test_chat_stream_without_usage(sim):
    chunks = list(
        client(sim).chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completions_plain_and_streaming(sim):
    c = client(sim)
    r = c.completions.create(model="test-model", prompt="The capital of France is", max_tokens=5)
    assert r.object == "text_completion"
    assert r.usage.completion_tokens <= 5
    parts = list(
        c.completions.create(
            model="test-model",
            prompt=["one", "two"],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    indices = {p.choices[0].index for p in parts if p.choices}
    assert indices == {0, 1}
    assert parts[-1].usage.completion_tokens == 8


def test_cached_tokens_grow_with_a_shared_prefix(sim):
    c = client(sim)
    system = "You are a careful assistant who answers in detail. " * 8
    history = [{"role": "system", "content": system}, {"role": "user", "content": "first"}]
    first = c.chat.completions.create(model="test-model", messages=history, max_tokens=2)
    history += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "next"}]
    second = c.chat.completions.create(model="test-model", messages=history, max_tokens=2)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached % 16 == 0
    assert cached >= first.usage.prompt_tokens - 16


def test_unknown_model_raises_not_found(sim):
    with pytest.raises(openai.NotFoundError) as e:
        client(sim).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert "gpt-9" in e.value.message
    assert e.value.status_code == 404


def test_bad_request_raises(sim):
    with pytest.raises(openai.BadRequestError) as e:
        client(sim).completions.create(model="test-model", prompt="x", max_tokens=10**7)
    assert "max_model_len" in e.value.message


def test_embeddings_default_base64(sim):
    # The client asks for base64 by default and decodes it.
    r = client(sim).embeddings.create(model="test-model", input=["a", "b"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) == 1024
    assert abs(sum(x * x for x in r.data[0].embedding) - 1.0) < 1e-3
    f = client(sim).embeddings.create(model="test-model", input="a", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(r.data[0].embedding, rel=1e-6)


def test_injected_503_is_retried_then_raised(sim_factory):
    s = sim_factory("--profile", "instant", "--fault-error-rate", "1", "--fault-error-status", "503")
    c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="EMPTY", max_retries=1, timeout=10)
    with pytest.raises(openai.InternalServerError) as e:
        c.completions.create(model="meta-llama/Llama-3.1-8B-Instruct", prompt="x")
    assert e.value.status_code == 503
