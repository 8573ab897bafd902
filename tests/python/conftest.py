"""Starts llmstack-sim and llmstack-server processes for the Python client tests.

The binaries come from LLMSTACK_SIM and LLMSTACK_SERVER (set by scripts/test) or target/debug.
Every process started here is ended here, by its own handle.
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

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("LLMSTACK_SIM", str(ROOT / "target" / "debug" / "llmstack-sim"))
SERVER = os.environ.get("LLMSTACK_SERVER", str(ROOT / "target" / "debug" / "llmstack-server"))


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


def request_success_total(engine_url):
    """Requests an engine finished (`vllm:request_success_total`, every reason), from its /metrics."""
    with urllib.request.urlopen(f"{engine_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total{")
    )


def served_since(engines, before, expected, timeout=5):
    """Requests each engine finished since `before` (counts from request_success_total), once
    `expected` are counted in all or `timeout` seconds have passed (engines count just after answering)."""
    deadline = time.monotonic() + timeout
    while True:
        delta = [request_success_total(u) - b for u, b in zip(engines, before)]
        if sum(delta) >= expected or time.monotonic() > deadline:
            return delta
        time.sleep(0.05)


def stop_process(proc):
    """SIGTERM, then wait; SIGKILL only if the process ignores it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Router:
    """A running llmstack-server; its log (stdout and stderr) goes to a file so it never blocks on a pipe."""

    LISTENING = re.compile(r"router listening addr=(\S+)")

    def __init__(self, log_path, *args, timeout=15):
        self.log_path = pathlib.Path(log_path)
        # The router reads every flag from LLMSTACK_* too: keep the caller's environment out of it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSTACK_") and k != "VLLM_API_KEY"}
        env["NO_COLOR"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [SERVER, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        try:
            deadline = time.monotonic() + timeout
            self.url = f"http://{self._address(deadline)}"
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def log(self):
        return self.log_path.read_text(errors="replace")

    def _address(self, deadline):
        while time.monotonic() < deadline:
            m = self.LISTENING.search(self.log())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmstack-server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"llmstack-server printed no listening address:\n{self.log()}")

    def _wait_ready(self, deadline):
        last = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as r:
                    if r.status == 200:
                        return
                    last = r.status
            except urllib.error.HTTPError as e:
                last = e.code
            except OSError as e:
                last = e
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmstack-server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"llmstack-server /ready never answered 200 (last: {last}):\n{self.log()}")

    def stop(self):
        stop_process(self.proc)


class RouterStack:
    """Two engines serving `m` (one sim process), one serving `m2` (another), the router in front."""

    MODEL = "m"
    OTHER_MODEL = "m2"
    ALIAS = "gpt-4o"

    def __init__(self, tmp_dir):
        self.sims = []
        self.router = None
        try:
            pair = Sim("--engines", "2", "--profile", "instant", "--model", self.MODEL)
            self.sims.append(pair)
            other = Sim("--profile", "instant", "--model", self.OTHER_MODEL)
            self.sims.append(other)
            self.m_engines = [e["url"] for e in pair.engines]
            self.m2_engine = other.url
            backends = [*self.m_engines, self.m2_engine]
            self.router = Router(
                pathlib.Path(tmp_dir) / "llmstack-server.log",
                "--host", "127.0.0.1",
                "--port", "0",
                "--service-discovery", "static",
                "--static-backends", ",".join(backends),
                "--static-models", ",".join([self.MODEL, self.MODEL, self.OTHER_MODEL]),
                "--routing-logic", "roundrobin",
                "--static-aliases", f"{self.ALIAS}:{self.MODEL}",
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    @property
    def url(self):
        return self.router.url

    def stop(self):
        if self.router is not None:
            self.router.stop()
        for s in self.sims:
            s.stop()


@pytest.fixture(scope="module")
def router_stack(tmp_path_factory):
    stack = RouterStack(tmp_path_factory.mktemp("router"))
    yield stack
    stack.stop()
