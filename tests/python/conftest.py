"""Starts llmstack-sim processes for the Python client tests.

The binary comes from LLMSTACK_SIM (set by scripts/test) or target/debug.
Every process started here is ended here, by its own handle.
"""

import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("LLMSTACK_SIM", str(ROOT / "target" / "debug" / "llmstack-sim"))


class Sim:
    """A running llmstack-sim and the engines it printed."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [BINARY, "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            raise RuntimeError(f"llmstack-sim {' '.join(args)} did not start")
        self.engines = json.loads(line)["engines"]

    @property
    def url(self):
        return self.engines[0]["url"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sim_factory():
    started = []

    def start(*args):
        s = Sim(*args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def sim(sim_factory):
    return sim_factory("--profile", "instant", "--model", "test-model", "--enable-prompt-tokens-details")
