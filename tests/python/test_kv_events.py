"""KV events decoded with pyzmq + msgpack, the libraries vLLM's own consumers use.

Block hashes are recomputed here with Python's own pickle and hashlib, exactly as vLLM
computes them (sha256 over pickle protocol 5 of (parent, tokens, extra_keys)), so the
simulator's hashes are checked against an independent implementation.
"""

import hashlib
import json
import pickle
import time
import urllib.request

import msgpack
import pytest
import zmq


def vllm_sha256(obj):
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


NONE_HASH = vllm_sha256("vllm-none-hash")


def block_hashes(tokens, block_size=16):
    out, parent = [], NONE_HASH
    for i in range(len(tokens) // block_size):
        parent = vllm_sha256((parent, tuple(tokens[i * block_size:(i + 1) * block_size]), None))
        out.append(int.from_bytes(parent[-8:], "big"))
    return out


def post(url, path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def receive(sock, url, text, attempts=40):
    """Sends fresh prompts until a KV-event batch arrives (PUB drops messages until the
    subscription reaches it, and a repeated prompt is a cache hit that stores nothing).
    Returns the frames and the token ids of every prompt sent."""
    sent = []
    for i in range(attempts):
        tokens = post(url, "/tokenize", {"prompt": f"attempt {i} {text}"})["tokens"]
        sent.append(tokens)
        post(url, "/v1/completions", {"prompt": tokens, "max_tokens": 1})
        if sock.poll(250):
            return sock.recv_multipart(), sent
    raise AssertionError("no KV-event batch received")


def event_type(ev):
    return ev["type"] if isinstance(ev, dict) else ev[0]


@pytest.mark.parametrize("layout", ["map", "array"])
def test_subscriber_decodes_blocks(sim_factory, layout):
    s = sim_factory("--profile", "instant", "--kv-events-endpoint", "tcp://*:0",
                    "--kv-events-topic", "kv", "--kv-events-layout", layout)
    endpoint = s.engines[0]["kv_events"].replace("*", "127.0.0.1")
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv")
    try:
        (topic, seq, payload), sent = receive(sub, s.url, "the quick brown fox " * 12)
    finally:
        sub.close(0)
    assert topic == b"kv"
    assert len(seq) == 8
    ts, events, rank = msgpack.unpackb(payload, raw=False)
    assert ts > 1.7e9 and rank == 0
    stored = [e for e in events if event_type(e) == "BlockStored"]
    assert stored, events
    ev = stored[0]
    if layout == "map":
        hashes, parent, token_ids, block_size = ev["block_hashes"], ev["parent_block_hash"], ev["token_ids"], ev["block_size"]
        assert ev["medium"] == "GPU" and ev["lora_name"] is None and ev["group_idx"] == 0
    else:
        _, hashes, parent, token_ids, block_size = ev[:5]
        assert ev[6] == "GPU"
    assert block_size == 16
    tokens = next(t for t in sent if t[: len(token_ids)] == token_ids)
    assert len(token_ids) == len(tokens) // 16 * 16, "every full block, with its real token ids"
    assert parent is None
    assert hashes == block_hashes(tokens), "sim hashes equal Python pickle+sha256 hashes"


def test_engine_connects_to_a_bound_subscriber_and_replays(sim_factory):
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    s = sim_factory("--profile", "instant", "--kv-events-endpoint", f"tcp://127.0.0.1:{port}",
                    "--kv-events-replay-endpoint", "tcp://*:0")
    replay = s.engines[0]["kv_events_replay"].replace("*", "127.0.0.1")
    try:
        (_, seq, payload), _ = receive(sub, s.url, "replay me " * 20)
    finally:
        sub.close(0)
    live_seq = int.from_bytes(seq, "big")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(replay)
    try:
        dealer.send_multipart([b"", (0).to_bytes(8, "big")])
        replayed = []
        while True:
            assert dealer.poll(3000), "replay answer"
            frames = dealer.recv_multipart()
            assert frames[0] == b""
            _, topic, seq, body = frames
            if seq == b"\xff" * 8:
                assert body == b""
                break
            replayed.append((int.from_bytes(seq, "big"), body))
    finally:
        dealer.close(0)
    seqs = [q for q, _ in replayed]
    assert seqs == list(range(len(seqs))), "buffered batches from 0, in order"
    assert live_seq in seqs
    assert dict(replayed)[live_seq] == payload, "replay returns the same bytes"
