"""The official openai client through llmstack-server, as an application would use production-stack's router.

Behind the router: two llmstack-sim engines serving `m`, one serving `m2`, and the alias `gpt-4o` for `m`
(see the `router_stack` fixture in conftest.py).
"""

import json
import re
import urllib.error
import urllib.request
import uuid

import openai
import pytest

from conftest import request_success_total, served_since

M, M2, ALIAS = "m", "m2", "gpt-4o"
HEX_ID = re.compile(r"^chatcmpl-[0-9A-Za-z_-]+$")


def client(stack, **kw):
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30)
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none", **kw)


def hello(model=M, **kw):
    return dict(model=model, messages=[{"role": "user", "content": "Hello!"}], **kw)


def test_chat_completion(router_stack):
    r = client(router_stack).chat.completions.create(**hello(max_tokens=8, extra_body={"ignore_eos": True}))
    assert r.object == "chat.completion"
    assert HEX_ID.match(r.id), r.id
    assert r.model == M
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens > 0
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_completion_second_model(router_stack):
    r = client(router_stack).chat.completions.create(**hello(M2, max_tokens=3, extra_body={"ignore_eos": True}))
    assert r.model == M2
    assert r.usage.completion_tokens == 3


def test_completion(router_stack):
    r = client(router_stack).completions.create(
        model=M, prompt="The capital of France is", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.model == M
    assert r.choices[0].text.strip()
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_chat_stream_with_usage(router_stack):
    stream = client(router_stack).chat.completions.create(
        **hello(
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    chunks = list(stream)
    assert len(chunks) >= 3
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and HEX_ID.match(chunks[0].id)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert len(text.split()) == 6
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    # Only the last chunk carries usage, and it has no choices.
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == 6
    assert last.usage.total_tokens == last.usage.prompt_tokens + 6


def test_chat_stream_through_alias(router_stack):
    chunks = list(client(router_stack).chat.completions.create(**hello(ALIAS, max_tokens=2, stream=True)))
    assert chunks and all(c.model == M for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_completions_streaming(router_stack):
    parts = list(
        client(router_stack).completions.create(
            model=M,
            prompt=["one", "two"],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert all(p.object == "text_completion" for p in parts)
    assert {p.choices[0].index for p in parts if p.choices} == {0, 1}
    for i in (0, 1):
        assert "".join(p.choices[0].text for p in parts if p.choices and p.choices[0].index == i).strip()
    assert parts[-1].choices == []
    assert parts[-1].usage.completion_tokens == 8


def test_embeddings(router_stack):
    c = client(router_stack)
    # The client asks for base64 by default and decodes it.
    r = c.embeddings.create(model=M, input=["a", "b"])
    assert r.model == M
    assert len(r.data) == 2
    assert len(r.data[0].embedding) > 0
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens
    f = c.embeddings.create(model=M, input="a", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(r.data[0].embedding, rel=1e-6)


def test_models_list(router_stack):
    models = client(router_stack).models.list()
    ids = [m.id for m in models.data]
    assert sorted(ids) == [M, M2]  # each model once, no alias, nothing else
    assert all(m.object == "model" for m in models.data)


def test_alias_is_answered_by_its_model(router_stack):
    c = client(router_stack)
    r = c.chat.completions.create(**hello(ALIAS, max_tokens=2))
    assert r.model == M
    assert r.choices[0].message.content
    e = c.embeddings.create(model=ALIAS, input="x")
    assert e.model == M


@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings"])
def test_unknown_model_raises_not_found(router_stack, endpoint):
    c = client(router_stack)
    call = {
        "chat": lambda: c.chat.completions.create(**hello("gpt-9")),
        "completions": lambda: c.completions.create(model="gpt-9", prompt="x"),
        "embeddings": lambda: c.embeddings.create(model="gpt-9", input="x"),
    }[endpoint]
    with pytest.raises(openai.NotFoundError) as e:
        call()
    assert e.value.status_code == 404
    assert isinstance(e.value.body, dict)
    assert "gpt-9" in e.value.body["message"] and "does not exist" in e.value.body["message"]
    assert "does not exist" in e.value.message
    assert e.value.response.headers.get("x-request-id")


def test_invalid_parameter_raises_bad_request(router_stack):
    with pytest.raises(openai.BadRequestError) as e:
        client(router_stack).chat.completions.create(**hello(max_tokens=-1))
    assert e.value.status_code == 400
    assert "max_tokens" in e.value.message


def post_raw(stack, path, data, headers=None):
    req = urllib.request.Request(
        f"{stack.url}{path}", data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.mark.parametrize("body", [b"{not json", b"[]", b"", b'{"messages": []}'])
def test_malformed_body_is_an_openai_400(router_stack, body):
    status, headers, raw = post_raw(router_stack, "/v1/chat/completions", body)
    assert status == 400
    assert headers.get("x-request-id")
    error = json.loads(raw)["error"]
    assert error["code"] == 400 and error["message"]
    # The openai client maps the same answer to BadRequestError.
    with pytest.raises(openai.BadRequestError):
        client(router_stack).post(
            "/chat/completions", cast_to=object, content=body, options={"headers": {"Content-Type": "application/json"}}
        )


def test_raw_response_has_a_request_id(router_stack):
    raw = client(router_stack).chat.completions.with_raw_response.create(**hello(max_tokens=2))
    assert raw.status_code == 200
    rid = raw.headers.get("x-request-id")
    assert rid
    assert raw.parse().choices[0].message.content


def test_client_request_id_is_echoed(router_stack):
    rid = f"test-{uuid.uuid4().hex}"
    c = client(router_stack)
    raw = c.chat.completions.with_raw_response.create(**hello(max_tokens=2), extra_headers={"X-Request-Id": rid})
    assert raw.headers.get("x-request-id") == rid
    raw = c.completions.with_raw_response.create(
        model=M2, prompt="x", max_tokens=2, stream=True, extra_headers={"X-Request-Id": rid + "-s"}
    )
    assert raw.headers.get("x-request-id") == rid + "-s"
    assert list(raw.parse())
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(**hello("gpt-9"), extra_headers={"X-Request-Id": rid + "-e"})
    assert e.value.response.headers.get("x-request-id") == rid + "-e"


def test_round_robin_spreads_evenly(router_stack):
    engines = router_stack.m_engines
    before = [request_success_total(u) for u in engines]
    other_before = request_success_total(router_stack.m2_engine)
    c = client(router_stack)
    for _ in range(10):
        c.chat.completions.create(**hello(max_tokens=1))
    delta = served_since(engines, before, 10)
    assert delta == [5, 5]
    assert request_success_total(router_stack.m2_engine) == other_before
