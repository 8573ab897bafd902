"""Starts llmstack-sim and llmstack-server processes for the Python client tests.

The binaries come from LLMSTACK_SIM and LLMSTACK_SERVER (set by scripts/test) or target/debug.
Every process started here is ended here, by its own handle.
"""

import contextlib
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
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


def free_port():
    """A TCP port free on 127.0.0.1 now (for programs that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url):
    """The body of a GET, as text (raises on an error status)."""
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def eventually(f, what="the condition", timeout=30):
    """f()'s first truthy result within `timeout` s (errors of a server not up yet are retried)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = f()
            if last:
                return last
        except (OSError, ValueError) as e:  # not listening, or not answering JSON yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: never true; last: {last}")


@contextlib.contextmanager
def prometheus_scraping(tmp, targets):
    """A real Prometheus (Debian's package) scraping `targets` (host:port) every second;
    yields its base URL. Its log is tmp/prometheus.log."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (scripts/test installs it with apt-get)"
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: llmstack\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n"
    )
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    with open(tmp / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def prom_query(prom, expr):
    """The instant query's result; a query Prometheus rejects fails the test with its error."""
    try:
        out = json.loads(http_get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}"))
    except urllib.error.HTTPError as e:
        raise AssertionError(f"Prometheus rejected\n{expr}\n{e.read().decode()}") from None
    assert out["status"] == "success", out
    return out["data"]["result"]


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


# --- A real Kubernetes API server (issue 8: the Helm chart tests) ---------------------------------
#
# etcd + kube-apiserver v1.20.2 on loopback, the Python port of
# llmstack-test-support/src/kube_apiserver.rs: free ports, a self-signed serving cert generated
# by the apiserver (also the CA to trust), token auth with an admin token in system:masters, RBAC.
# This 1.20 build crashes (SIGSEGV) when it pretty-prints JSON, which it does for ?pretty=true or
# a User-Agent starting with curl, Wget or Mozilla: every request here sends a neutral User-Agent.

KUBE_ADMIN_TOKEN = "llmstack-test-admin-token"
KUBE_USER_AGENT = "llmstack-tests/0.1"


def kube_apiserver_binary():
    """$LLMSTACK_KUBE_APISERVER, else the cached build; fails (never skips) when it is missing."""
    path = os.environ.get("LLMSTACK_KUBE_APISERVER")
    if not path:
        cache = os.environ.get("LLMSTACK_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "llmstack"))
        path = os.path.join(cache, "kube-apiserver-v1.20.2", "kube-apiserver")
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        pytest.fail(
            f"no kube-apiserver binary at {path}: run `scripts/kube-apiserver` once (it builds v1.20.2 "
            "and installs etcd), or set LLMSTACK_KUBE_APISERVER"
        )
    return path


def free_loopback_ports(n, host="127.0.0.1"):
    """n distinct free ports on `host`: all bound at once, then released."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _log_tail(path, lines=40):
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"<cannot read {path}: {e}>"


class KubeApiServer:
    """A running etcd + kube-apiserver pair; `stop()` kills both by their own handles."""

    def __init__(self, directory, timeout=60):
        import shutil
        import ssl

        import tempfile

        self.dir = pathlib.Path(directory)
        self.etcd = None
        self.apiserver = None
        # etcd preallocates 2 x 64 MB of WAL: kept in memory (tmpfs) when possible, and removed
        # on stop either way.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.etcd_data = pathlib.Path(tempfile.mkdtemp(prefix="llmstack-etcd-", dir=shm))
        bin_path = kube_apiserver_binary()
        for tool in ("etcd", "openssl"):
            if shutil.which(tool) is None:
                pytest.fail(f"`{tool}` is not installed (apt-get install etcd-server openssl)")
        certs = self.dir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                ["openssl", "genrsa", "-out", str(certs / "sa.key"), "2048"], check=True, capture_output=True
            )
            subprocess.run(
                ["openssl", "rsa", "-in", str(certs / "sa.key"), "-pubout", "-out", str(certs / "sa.pub")],
                check=True,
                capture_output=True,
            )
            (certs / "tokens.csv").write_text(f'{KUBE_ADMIN_TOKEN},admin,1,"system:masters"\n')
            etcd_client, etcd_peer, self.port = free_loopback_ports(3)
            etcd_url, peer_url = f"http://127.0.0.1:{etcd_client}", f"http://127.0.0.1:{etcd_peer}"
            with open(self.dir / "etcd.log", "wb") as log:
                self.etcd = subprocess.Popen(
                    [
                        "etcd", "--name=t", f"--data-dir={self.etcd_data}",
                        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                        f"--initial-cluster=t={peer_url}", "--log-level=warn",
                    ],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            deadline = time.monotonic() + timeout
            self._wait_port(etcd_client, self.etcd, "etcd", self.dir / "etcd.log", deadline)
            with open(self.dir / "apiserver.log", "wb") as log:
                self.apiserver = subprocess.Popen(
                    [
                        bin_path, f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
                        "--advertise-address=127.0.0.1", f"--secure-port={self.port}", "--insecure-port=0",
                        f"--cert-dir={certs}", f"--token-auth-file={certs / 'tokens.csv'}",
                        "--authorization-mode=RBAC", "--service-cluster-ip-range=10.96.0.0/24",
                        "--service-account-issuer=https://kubernetes.default.svc",
                        f"--service-account-key-file={certs / 'sa.pub'}",
                        f"--service-account-signing-key-file={certs / 'sa.key'}",
                        "--api-audiences=https://kubernetes.default.svc", "--enable-priority-and-fairness=false",
                        "--disable-admission-plugins=ServiceAccount", "--profiling=false", "--v=0",
                    ],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            self._wait_ready(deadline)
            self.ssl = ssl.create_default_context(cafile=str(self.ca_path))
            self.kubeconfig_path.write_text(
                f"""apiVersion: v1
kind: Config
clusters:
- name: llmstack-test
  cluster:
    server: {self.url}
    certificate-authority: {self.ca_path}
users:
- name: admin
  user:
    token: {KUBE_ADMIN_TOKEN}
contexts:
- name: llmstack-test
  context:
    cluster: llmstack-test
    user: admin
    namespace: default
current-context: llmstack-test
"""
            )
        except BaseException:
            self.stop()
            raise

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_path(self):
        return self.dir / "certs" / "apiserver.crt"

    @property
    def kubeconfig_path(self):
        return self.dir / "kubeconfig"

    @property
    def token(self):
        return KUBE_ADMIN_TOKEN

    def _wait_port(self, port, proc, name, log, deadline):
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not come up on port {port} (exit {proc.poll()}):\n{_log_tail(log)}")
            time.sleep(0.05)

    def _wait_ready(self, deadline):
        import ssl

        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        last = None
        while True:
            req = urllib.request.Request(
                f"{self.url}/readyz",
                headers={"Authorization": f"Bearer {KUBE_ADMIN_TOKEN}", "User-Agent": KUBE_USER_AGENT},
            )
            try:
                with urllib.request.urlopen(req, timeout=2, context=insecure) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = e.code
            except OSError as e:
                last = e
            if self.apiserver.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"kube-apiserver not ready at {self.url} (last: {last}, exit {self.apiserver.poll()}):\n"
                    + _log_tail(self.dir / "apiserver.log")
                )
            time.sleep(0.1)

    def request(self, method, path, body=None, content_type="application/json", timeout=30):
        """(status, decoded JSON body) of one API call; an HTTP error status is returned, not raised."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {KUBE_ADMIN_TOKEN}",
                "User-Agent": KUBE_USER_AGENT,
                "Accept": "application/json",
                **({"Content-Type": content_type} if data is not None else {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def stop(self):
        import shutil

        for proc in (self.apiserver, self.etcd):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
        self.apiserver = self.etcd = None
        shutil.rmtree(self.etcd_data, ignore_errors=True)


@pytest.fixture(scope="module")
def kube_apiserver(tmp_path_factory):
    """A fresh etcd + kube-apiserver v1.20.2 for one test module (about 5 s to start)."""
    server = KubeApiServer(tmp_path_factory.mktemp("kapi"))
    yield server
    server.stop()
