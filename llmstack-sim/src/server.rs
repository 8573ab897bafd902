//! Listeners and the public handle on running engines.
//!
//! Each engine listens on its own address (HTTP/1.1 with keep-alive, `TCP_NODELAY`).
//! The listener can be taken down and brought back (a fault the router must survive):
//! going down closes the port and drops every open connection, as a crashed server would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::api::{EngineApp, ListenerCmd};
use crate::config::{EngineConfig, FaultConfig};
use crate::engine::{self, Command, EngineShared, EngineState};
use crate::kv_events;

/// Why engines could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(String),
    /// The HTTP port could not be bound.
    Bind(SocketAddr, std::io::Error),
    /// The KV-event socket could not be set up.
    KvEvents(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
            Self::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            Self::KvEvents(e) => write!(f, "cannot publish KV events: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind(_, e) => Some(e),
            _ => None,
        }
    }
}

/// A running simulated engine. Dropping the handle stops it.
#[derive(Debug)]
pub struct SimEngine {
    addr: SocketAddr,
    shared: Arc<EngineShared>,
    tx: mpsc::UnboundedSender<Command>,
    listener: mpsc::UnboundedSender<ListenerCmd>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimEngine {
    /// Starts one engine listening on `addr` (port 0 picks a free port). `index` offsets a
    /// fixed KV-event port, as separate servers on one host would be configured; each
    /// engine is its own server, so its events and metrics say rank/engine 0.
    pub async fn start(
        mut config: EngineConfig,
        addr: SocketAddr,
        index: u32,
    ) -> Result<Self, StartError> {
        if !config.lora_modules.is_empty() {
            config.enable_lora = true;
        }
        config.validate().map_err(StartError::Config)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Bind(addr, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(addr, e))?;
        let mut tasks = Vec::new();
        let publisher = match &config.kv_events {
            Some(kv) => {
                let mut kv = kv.clone();
                kv.endpoint = offset_port(&kv.endpoint, index);
                kv.replay_endpoint = kv.replay_endpoint.as_deref().map(|e| offset_port(e, index));
                let started = tokio::time::timeout(
                    kv_events::ATTACH_TIMEOUT,
                    kv_events::spawn_publisher(&kv, 0),
                )
                .await
                .map_err(|_| StartError::KvEvents(format!("timed out attaching {}", kv.endpoint)))?
                .map_err(|e| StartError::KvEvents(format!("{}: {e}", kv.endpoint)))?;
                let (publisher, endpoints, task) = started;
                tasks.push(task);
                Some((publisher, endpoints))
            }
            None => None,
        };
        let (shared, tx, task) = engine::build(config, publisher);
        tasks.push(tokio::spawn(task.run()));
        let (ltx, lrx) = mpsc::unbounded_channel();
        let app = Arc::new(EngineApp::new(shared.clone(), tx.clone(), ltx.clone()));
        tasks.push(tokio::spawn(listen(app, listener, addr, lrx)));
        tracing::info!(%addr, model = %shared.config.primary_name(), profile = %shared.config.profile.name, "engine listening");
        Ok(Self {
            addr,
            shared,
            tx,
            listener: ltx,
            tasks,
        })
    }

    /// The address the engine listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The KV-event PUB endpoint in use (port resolved), when publishing.
    pub fn kv_events_endpoint(&self) -> Option<&str> {
        self.shared
            .kv_endpoints
            .as_ref()
            .map(|e| e.endpoint.as_str())
    }

    /// The KV-event replay endpoint in use, when configured.
    pub fn kv_events_replay_endpoint(&self) -> Option<&str> {
        self.shared
            .kv_endpoints
            .as_ref()
            .and_then(|e| e.replay_endpoint.as_deref())
    }

    /// Current faults.
    pub fn faults(&self) -> FaultConfig {
        self.shared.faults()
    }

    /// Replaces the injected faults (same as `POST /sim/faults`).
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), String> {
        faults.validate()?;
        *self
            .shared
            .faults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
        Ok(())
    }

    /// Queue, batch and cache state (same as `GET /sim/state?blocks=true`).
    pub async fn state(&self) -> Option<EngineState> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::State {
                blocks: true,
                reply,
            })
            .ok()?;
        rx.await.ok()
    }

    /// Closes the port and every connection for `duration`, then listens again on the
    /// same address (same as `POST /sim/down?ms=`).
    pub fn go_down(&self, duration: Duration) {
        let _stopped = self.listener.send(ListenerCmd::Down(duration));
    }
}

impl Drop for SimEngine {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Several engines started together (`--engines N`).
#[derive(Debug)]
pub struct SimCluster {
    engines: Vec<SimEngine>,
}

impl SimCluster {
    /// Starts one engine per config on `host`, at `port + i` (all on free ports when
    /// `port` is 0).
    pub async fn start(
        configs: Vec<EngineConfig>,
        host: std::net::IpAddr,
        port: u16,
    ) -> Result<Self, StartError> {
        let mut engines = Vec::with_capacity(configs.len());
        for (i, c) in configs.into_iter().enumerate() {
            let p = if port == 0 {
                0
            } else {
                u16::try_from(usize::from(port) + i)
                    .map_err(|_| StartError::Config(format!("port {port} + {i} exceeds 65535")))?
            };
            engines.push(SimEngine::start(c, SocketAddr::new(host, p), i as u32).await?);
        }
        Ok(Self { engines })
    }

    /// Starts `n` engines with the same config on `127.0.0.1`, free ports.
    pub async fn local(n: usize, config: EngineConfig) -> Result<Self, StartError> {
        Self::start(vec![config; n], std::net::IpAddr::from([127, 0, 0, 1]), 0).await
    }

    /// The engines.
    pub fn engines(&self) -> &[SimEngine] {
        &self.engines
    }

    /// Base URLs of all engines.
    pub fn urls(&self) -> Vec<String> {
        self.engines.iter().map(SimEngine::base_url).collect()
    }
}

/// Adds `rank` to the port of a `tcp://host:port` endpoint (unless the port is 0), as
/// vLLM does per data-parallel rank.
fn offset_port(endpoint: &str, rank: u32) -> String {
    if rank == 0 {
        return endpoint.to_owned();
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u32>() {
            Ok(p) if p != 0 => format!("{host}:{}", p + rank),
            _ => endpoint.to_owned(),
        },
        None => endpoint.to_owned(),
    }
}

async fn listen(
    app: Arc<EngineApp>,
    first: TcpListener,
    addr: SocketAddr,
    mut ctl: mpsc::UnboundedReceiver<ListenerCmd>,
) {
    let mut listener = Some(first);
    loop {
        let (kill_tx, kill_rx) = watch::channel(false);
        let Some(l) = listener.take() else { return };
        let down = loop {
            tokio::select! {
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => spawn_connection(app.clone(), stream, kill_rx.clone()),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                cmd = ctl.recv() => match cmd {
                    Some(ListenerCmd::Down(d)) => break d,
                    None => return,
                },
            }
        };
        drop(l);
        let _none = kill_tx.send(true);
        tracing::info!(%addr, ms = down.as_millis() as u64, "engine down (fault)");
        tokio::time::sleep(down).await;
        // The port was ours a moment ago; retry briefly in case the kernel lags.
        for attempt in 0..50 {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) if attempt == 49 => {
                    tracing::error!(%addr, error = %e, "cannot listen again after going down");
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        tracing::info!(%addr, "engine up again");
    }
}

fn spawn_connection(app: Arc<EngineApp>, stream: TcpStream, mut kill: watch::Receiver<bool>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    tokio::spawn(async move {
        let idle = app.shared.config.keep_alive_timeout;
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .timer(TokioTimer::new())
            // Runs while waiting for a request head, i.e. while the connection idles.
            .header_read_timeout(idle)
            .serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            res = conn => if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            },
            _ = kill.changed() => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_ports_offset_by_rank() {
        assert_eq!(offset_port("tcp://*:5557", 0), "tcp://*:5557");
        assert_eq!(offset_port("tcp://*:5557", 2), "tcp://*:5559");
        assert_eq!(offset_port("tcp://127.0.0.1:0", 3), "tcp://127.0.0.1:0");
    }
}
