//! DNS discovery against a real resolver: dnsmasq on loopback, serving `*.test` from a
//! hosts directory it re-reads on change, and SRV records given at its start.

use std::future::poll_fn;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_core::Stream;
use llmstack_core::Update;
use llmstack_discovery::{DnsConfig, UpdateStream, dns_discovery};

const INSTALL: &str = "the DNS tests need dnsmasq: apt-get install -y --no-install-recommends dnsmasq-base";

/// A dnsmasq child process on `127.0.0.1:port`; killed by its PID (and its files
/// removed) on drop, panics included.
struct Dnsmasq {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq with `hosts` (hosts-file lines) and `srv` (`--srv-host` values).
    fn start(hosts: &str, srv: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llmstack-dns-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("hosts")).unwrap();
        let mut dns = Self {
            dir,
            port: free_port(),
            child: None,
        };
        dns.set_hosts(hosts);
        dns.restart(srv);
        dns
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Replaces the hosts file in one step (a rename: dnsmasq never reads half a file).
    fn set_hosts(&self, hosts: &str) {
        let tmp = self.dir.join("engines.tmp");
        std::fs::write(&tmp, hosts).unwrap();
        std::fs::rename(&tmp, self.dir.join("hosts").join("engines")).unwrap();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` signals this child's PID only.
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// (Re)starts dnsmasq on the same port, with new SRV records.
    fn restart(&mut self, srv: &[&str]) {
        self.kill();
        let log = std::fs::File::create(self.dir.join("dnsmasq.log")).unwrap();
        let mut cmd = Command::new(dnsmasq());
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--log-facility=-",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            // `test` is ours alone: unknown names there are NXDOMAIN, never forwarded.
            "--local=/test/",
            "--local-ttl=1",
        ]);
        cmd.arg(format!("--port={}", self.port));
        cmd.arg(format!("--hostsdir={}", self.dir.join("hosts").display()));
        for srv in srv {
            cmd.arg(format!("--srv-host={srv}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dnsmasq ({e}); {INSTALL}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until dnsmasq accepts TCP connections (it opens UDP first).
    fn wait_ready(&mut self) {
        for _ in 0..100 {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dnsmasq exited ({status}): {}", self.log());
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("dnsmasq did not listen within 5 s: {}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The dnsmasq binary: on `PATH`, or in `/usr/sbin` (not on a normal user's `PATH`).
fn dnsmasq() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("dnsmasq"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| panic!("dnsmasq not found; {INSTALL}"))
}

/// A port free for both TCP and UDP on 127.0.0.1 (dnsmasq cannot bind port 0 and
/// report it), released before dnsmasq binds it.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn discover(name: &str, dns: &Dnsmasq) -> UpdateStream {
    dns_discovery(DnsConfig {
        name: name.into(),
        port: 8000,
        nameservers: vec![dns.addr()],
        min_refresh: Duration::from_millis(200),
        max_refresh: Duration::from_secs(1),
    })
}

/// The URLs of the next `Reset`, sorted; panics after `within`.
async fn next_reset(stream: &mut UpdateStream, within: Duration) -> Vec<String> {
    let item = tokio::time::timeout(within, poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)))
        .await
        .unwrap_or_else(|_| panic!("no update within {within:?}"));
    match item.expect("the stream does not end").expect("no error") {
        Update::Reset(eps) => {
            let mut urls: Vec<String> = eps.iter().map(|e| e.url.to_string()).collect();
            urls.sort();
            urls
        }
        other => panic!("DNS discovery sends only resets, got {other:?}"),
    }
}

const SOON: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_records_are_added_removed_and_readdressed() {
    let dns = Dnsmasq::start("127.0.0.2 vllm.test\n127.0.0.3 vllm.test\n", &[]);
    let mut stream = discover("vllm.test", &dns);
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.2:8000/", "http://127.0.0.3:8000/"]
    );
    dns.set_hosts("127.0.0.3 vllm.test\n127.0.0.4 vllm.test\n");
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.3:8000/", "http://127.0.0.4:8000/"]
    );
    // AAAA records count too, in brackets.
    dns.set_hosts("fd00::7 vllm.test\n");
    assert_eq!(next_reset(&mut stream, SOON).await, ["http://[fd00::7]:8000/"]);
    // No records (NXDOMAIN): a valid answer, the set becomes empty.
    dns.set_hosts("");
    assert!(next_reset(&mut stream, SOON).await.is_empty());
}

#[tokio::test]
async fn an_empty_first_answer_is_sent() {
    let dns = Dnsmasq::start("", &[]);
    let mut stream = discover("vllm.test", &dns);
    assert!(next_reset(&mut stream, SOON).await.is_empty());
    dns.set_hosts("127.0.0.2 vllm.test\n");
    assert_eq!(next_reset(&mut stream, SOON).await, ["http://127.0.0.2:8000/"]);
}

#[tokio::test]
async fn srv_records_give_each_target_its_port() {
    let dns = Dnsmasq::start(
        "127.0.0.5 engine-a.test\n127.0.0.6 engine-b.test\n",
        &[
            "_http._tcp.vllm.test,engine-a.test,8001",
            "_http._tcp.vllm.test,engine-b.test,8002",
        ],
    );
    let mut stream = discover("_http._tcp.vllm.test", &dns);
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.5:8001/", "http://127.0.0.6:8002/"]
    );
    // A target re-addressed: found at the next refresh (whether dnsmasq sends the
    // target's address with the SRV answer or it is looked up).
    dns.set_hosts("127.0.0.7 engine-a.test\n127.0.0.6 engine-b.test\n");
    assert_eq!(
        next_reset(&mut stream, SOON).await,
        ["http://127.0.0.6:8002/", "http://127.0.0.7:8001/"]
    );
}

#[tokio::test]
async fn a_failing_resolver_keeps_the_last_endpoints() {
    let mut dns = Dnsmasq::start("127.0.0.2 vllm.test\n", &[]);
    let mut stream = discover("vllm.test", &dns);
    assert_eq!(next_reset(&mut stream, SOON).await, ["http://127.0.0.2:8000/"]);

    dns.kill();
    // Several refresh periods (TTL 1 s, retries from 200 ms) without an answer: no
    // update, in particular no empty set.
    let quiet = tokio::time::timeout(
        Duration::from_millis(2500),
        poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)),
    )
    .await;
    assert!(quiet.is_err(), "an update while the resolver is down: {quiet:?}");

    dns.set_hosts("127.0.0.3 vllm.test\n");
    dns.restart(&[]);
    assert_eq!(
        next_reset(&mut stream, Duration::from_secs(15)).await,
        ["http://127.0.0.3:8000/"]
    );
}
