//! A real DNS server for tests: Debian's dnsmasq on a free loopback port, serving
//! `*.test` from a hosts directory it re-reads on change (records with a 1 s TTL) and
//! SRV records given at its start. Killed by its PID on drop.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const INSTALL: &str =
    "the DNS tests need dnsmasq: apt-get install -y --no-install-recommends dnsmasq-base";

#[derive(Debug)]
/// A dnsmasq child process on `127.0.0.1:port`; killed by its PID (and its files
/// removed) on drop, panics included.
pub struct Dnsmasq {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// While dnsmasq is down: sockets holding its port, so nothing else takes it and
    /// queries go unanswered (a silent server: timeouts, not refusals).
    hold: Option<(UdpSocket, TcpListener)>,
}

impl Dnsmasq {
    /// Starts dnsmasq with `hosts` (hosts-file lines) and `srv` (`--srv-host` values).
    pub fn start(hosts: &str, srv: &[&str]) -> Self {
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
            hold: None,
        };
        dns.set_hosts(hosts);
        dns.restart(srv);
        dns
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Replaces the hosts file in one step (a rename: dnsmasq never reads half a file).
    pub fn set_hosts(&self, hosts: &str) {
        let tmp = self.dir.join("engines.tmp");
        std::fs::write(&tmp, hosts).unwrap();
        std::fs::rename(&tmp, self.dir.join("hosts").join("engines")).unwrap();
    }

    /// Stops dnsmasq; its port stays taken by sockets that never answer, until the
    /// next (re)start.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` signals this child's PID only.
            child.kill().unwrap();
            child.wait().unwrap();
        }
        if self.hold.is_none() {
            let udp = UdpSocket::bind(("127.0.0.1", self.port)).unwrap();
            let tcp = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
            self.hold = Some((udp, tcp));
        }
    }

    /// (Re)starts dnsmasq on the same port, with new SRV records.
    pub fn restart(&mut self, srv: &[&str]) {
        self.spawn(srv, false);
    }

    /// Restarts dnsmasq as a server that knows no names and has nowhere to forward
    /// them: it answers every query with REFUSED, a failure (not an empty answer).
    pub fn restart_refusing(&mut self) {
        self.spawn(&[], true);
    }

    fn spawn(&mut self, srv: &[&str], refuse: bool) {
        self.kill();
        self.hold = None;
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
            "--local-ttl=1",
        ]);
        cmd.arg(format!("--port={}", self.port));
        if !refuse {
            // `test` is ours alone: unknown names there are NXDOMAIN, never forwarded.
            cmd.arg("--local=/test/");
            cmd.arg(format!("--hostsdir={}", self.dir.join("hosts").display()));
        }
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
