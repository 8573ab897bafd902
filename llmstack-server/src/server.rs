//! Composition: discovery task, shared state, listener, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use llmstack_core::{BoxError, EndpointSet};
use llmstack_discovery::{probe, publish};
use llmstack_metrics::spawn_scraper;
use llmstack_proxy::Forward;
use llmstack_routing::{RouteLayer, RoutingLogic};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::ServerConfig;
use crate::discover::{FIRST_ANSWER_WAIT, FirstAnswer, Rediscover, first_answer, source};
use crate::kv::KvParts;
use crate::service::{self, Listener};
use crate::stack;
use crate::state::Shared;
use crate::telemetry;

/// A running router.
///
/// Dropping it stops everything at once; [`Server::shutdown`] then [`Server::wait`]
/// drain in-flight requests first.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    serve: JoinHandle<()>,
    discovery: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    scraper: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    keys_watch: JoinHandle<()>,
    admission_watch: JoinHandle<()>,
    dynamic_watch: Option<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
}

/// Why the router could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(BoxError),
    /// Discovery could not start (e.g. a DNS name that does not resolve at all).
    Discovery(BoxError),
    /// The listen address could not be bound.
    Bind(std::io::Error),
}

// === impl Server ===

impl Server {
    /// Binds the listener, starts discovery and serves until shut down.
    ///
    /// Fails when the discovery settings are invalid or the address cannot be bound.
    pub async fn start(config: ServerConfig) -> Result<Self, StartError> {
        config
            .discovery
            .validate()
            .map_err(|e| StartError::Config(e.into()))?;
        config
            .routing
            .validate()
            .map_err(|e| StartError::Config(e.into()))?;
        let source = probe(
            source(&config.discovery)
                .await
                .map_err(StartError::Config)?,
            config.discovery.probe.clone(),
        );
        let mut seed = EndpointSet::default();
        for model in config
            .discovery
            .static_models
            .iter()
            .chain(config.routing.static_aliases.values())
        {
            seed.remember(model);
        }
        let (set_tx, set_rx) = watch::channel(seed);
        let (stats, scraper) = spawn_scraper(set_rx.clone(), config.scrape.clone());
        let metrics = telemetry::recorder();
        let upkeep = tokio::spawn(telemetry::upkeep(metrics.clone()));
        // Whatever start-up returns early with, nothing it spawned keeps running.
        let mut spawned = Spawned(vec![scraper.abort_handle(), upkeep.abort_handle()]);
        let router = config.routing.router();
        let (router, kv) = match config.routing.routing_logic {
            RoutingLogic::Kvaware => {
                let kv_config = config.kv.clone().unwrap_or_default();
                let (router, kv) =
                    KvParts::start(&kv_config, router, set_rx.clone(), stats.clone())
                        .await
                        .map_err(|e| StartError::Config(format!("--tokenizer: {e}").into()))?;
                spawned.0.extend(kv.abort_handles());
                (router, Some(kv))
            }
            _ => (router, None),
        };
        let router = Arc::new(router);
        let kv = Arc::new(std::sync::RwLock::new(kv));
        let mut route = RouteLayer::new(Arc::clone(&router), set_rx.clone())
            .with_stats(stats.clone())
            .with_aliases(config.routing.static_aliases.clone());
        if let Some(key) = &config.routing.session_key {
            route = route.with_session_key(key);
        }
        let forward = Forward::new(config.proxy.clone());
        let keys = config
            .gateway
            .keys()
            .map_err(|e| StartError::Config(e.into()))?;
        let keys_watch = match &keys {
            Some(keys) => tokio::spawn(keys.watch(KEYS_FILE_POLL)),
            None => tokio::spawn(std::future::ready(())),
        };
        spawned.0.push(keys_watch.abort_handle());
        let outliers = llmstack_gateway::Outliers::new(config.gateway.outliers.clone());
        let cap = config.connection_cap(nofile());
        let admission =
            llmstack_gateway::AdmissionLayer::new(config.gateway.admission.clone(), set_rx.clone())
                .with_aliases(config.routing.static_aliases.clone())
                .with_stats(stats.clone());
        let admission_watch = tokio::spawn(admission.watch_endpoints());
        spawned.0.push(admission_watch.abort_handle());
        let dynamic = config
            .dynamic
            .as_ref()
            .map(|d| Arc::new(crate::dynamic::Status::new(d.path.clone())));
        let handle = route.handle();
        let shared = Arc::new(Shared {
            endpoints: set_rx.clone(),
            stats,
            metrics,
            main_port_metrics: config.main_port_metrics,
            route: handle.clone(),
            kv: Arc::clone(&kv),
            forward: forward.clone(),
            proxied: stack::proxied(
                route,
                forward.clone(),
                &config.proxy,
                stack::Gateway {
                    keys: keys.clone(),
                    admission: admission.clone(),
                    outliers: outliers.clone(),
                },
            ),
            admission: admission.clone(),
            outliers: outliers.clone(),
            connections: Arc::new(tokio::sync::Semaphore::new(cap)),
            max_connections: cap,
            keys,
            refused: stack::refused(),
            requests: Default::default(),
            errors: Default::default(),
            draining: Default::default(),
            dynamic: dynamic.clone(),
            root_path: config.root_path.as_deref().map(Arc::from),
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(StartError::Bind)?;
        let addr = listener.local_addr().map_err(StartError::Bind)?;
        if !config.routing.peers.is_empty() {
            let at = std::net::SocketAddr::new(config.listen.ip(), config.routing.peer_port);
            let sharing = router
                .in_flight()
                .clone()
                .share_with_peers(at, config.routing.peers.clone())
                .await
                .map_err(StartError::Bind)?;
            tracing::info!(addr = %at, peers = ?config.routing.peers, "sharing in-flight load with peer replicas");
            spawned.0.push(tokio::spawn(sharing).abort_handle());
        }
        let sweeper = tokio::spawn(forward.sweep_idle());
        let (answered_tx, answered) = tokio::sync::oneshot::channel();
        let on_change = {
            let handle = handle.clone();
            move |set: &EndpointSet| {
                metrics::counter!(llmstack_metrics::names::DISCOVERY_UPDATES).increment(1);
                let router = handle.router();
                router.retain(|id| set.get(id.as_str()).is_some());
                router.observe_asleep(set);
                forward.retain(|id| set.get(id.as_str()).is_some());
                outliers.retain(|id| set.get(id.as_str()).is_some());
            }
        };
        let rediscover_tx = set_tx.clone();
        let rediscover_on_change = on_change.clone();
        let mut discovery = tokio::spawn(publish(source, set_tx, on_change, Some(answered_tx)));
        spawned
            .0
            .extend([sweeper.abort_handle(), discovery.abort_handle()]);
        let dynamic_watch = dynamic.zip(config.dynamic.as_ref()).map(|(status, d)| {
            let discovery = Rediscover {
                set_tx: rediscover_tx,
                on_change: Box::new(move || Box::new(rediscover_on_change.clone())),
                running: discovery.abort_handle(),
            };
            let kv = crate::dynamic::KvSwitch {
                endpoints: set_rx.clone(),
                stats: shared.stats.clone(),
                slot: Arc::clone(&kv),
            };
            tokio::spawn(crate::dynamic::watch(
                status,
                (*d.flags).clone(),
                config.clone(),
                handle.clone(),
                discovery,
                kv,
            ))
        });
        if let Some(task) = &dynamic_watch {
            spawned.0.push(task.abort_handle());
        }
        let (stop, stop_rx) = watch::channel(false);
        let admin = match config.admin {
            Some(at) => {
                let admin = TcpListener::bind(at).await.map_err(StartError::Bind)?;
                let admin_addr = admin.local_addr().map_err(StartError::Bind)?;
                tracing::info!(addr = %admin_addr, "admin listener (/metrics, /health, /ready)");
                let task = tokio::spawn(serve_admin(admin, Arc::clone(&shared)));
                spawned.0.push(task.abort_handle());
                Some((admin_addr, task))
            }
            None => None,
        };
        let (admin_addr, admin) = admin.unzip();
        // DNS and Kubernetes answer after a round trip, and a new engine's models are
        // known after its first probe: serve once both happened (so a request is not
        // a 404 for a model about to appear), or after FIRST_ANSWER_WAIT with /ready at
        // 503 until engines are found. The admin listener already answers.
        match first_answer(answered, &mut set_rx.clone()).await {
            FirstAnswer::Failed(fatal) => return Err(StartError::Discovery(fatal)),
            FirstAnswer::Answered => {}
            FirstAnswer::Ended => {
                // The discovery task ended without a word: report how.
                if let Err(e) = (&mut discovery).await {
                    return Err(StartError::Discovery(e.into()));
                }
            }
            FirstAnswer::Silent => tracing::warn!(
                waited = ?FIRST_ANSWER_WAIT,
                "discovery has not answered yet; serving anyway (requests get 503 until engines are found)"
            ),
        }
        let serve = tokio::spawn(serve(listener, shared, stop_rx, config.shutdown_grace));
        tracing::info!(
            max_connections = cap,
            "client connections beyond the cap wait in the accept queue"
        );
        tracing::info!(%addr, policy = config.routing.routing_logic.as_str(), "router listening");
        // Started: the tasks are the server's now (stopped by its `Drop`).
        spawned.0.clear();
        Ok(Self {
            addr,
            stop,
            serve,
            discovery,
            sweeper,
            scraper,
            upkeep,
            keys_watch,
            admission_watch,
            dynamic_watch,
            admin,
            admin_addr,
        })
    }

    /// The address the router listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, when one was configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Starts a graceful shutdown: stop accepting, let in-flight requests and streams
    /// finish within the grace period, then stop.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the server has stopped (after [`Server::shutdown`], once drained).
    pub async fn wait(mut self) {
        if let Err(e) = (&mut self.serve).await {
            tracing::error!(error = %e, "server task failed");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.serve.abort();
        self.discovery.abort();
        self.sweeper.abort();
        self.scraper.abort();
        self.upkeep.abort();
        self.keys_watch.abort();
        self.admission_watch.abort();
        if let Some(task) = &self.dynamic_watch {
            task.abort();
        }
        if let Some(admin) = &self.admin {
            admin.abort();
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
            Self::Discovery(e) => write!(f, "discovery failed: {e}"),
            Self::Bind(e) => write!(f, "cannot listen: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Tasks [`Server::start`] spawned, aborted if it returns early.
struct Spawned(Vec<tokio::task::AbortHandle>);

impl Drop for Spawned {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The process's soft limit on open files (1024 when it cannot be read).
fn nofile() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// How often the `--api-keys-file` is checked for changes.
const KEYS_FILE_POLL: Duration = Duration::from_secs(1);

/// The admin listener: no graceful drain (it answers instantly); stopped with the server.
async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new());
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let service = service::hyper(Listener {
            shared: Arc::clone(&shared),
            admin: true,
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        conns.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    // Every connection task is owned here: aborted if the grace period runs out.
    let mut conns = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).keep_alive(true);
    let mut at_cap = false;
    loop {
        // At the cap, stop accepting until a connection closes: new ones wait in the
        // kernel's accept queue (backpressure, not an error).
        let permit = match Arc::clone(&shared.connections).try_acquire_owned() {
            Ok(permit) => {
                at_cap = false;
                permit
            }
            Err(_) => {
                if !at_cap {
                    tracing::warn!(
                        max = shared.max_connections,
                        "connection cap reached; new connections wait"
                    );
                    at_cap = true;
                }
                tokio::select! {
                    permit = Arc::clone(&shared.connections).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break, // closed: never happens
                    },
                    _stopped = async { stop.wait_for(|stop| *stop).await.is_ok() } => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "set_nodelay failed");
                }
                let service = service::hyper(Listener {
                    shared: Arc::clone(&shared),
                    admin: false,
                });
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                conns.spawn(async move {
                    let _permit = permit;
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
                // Reap finished connections so the set stays as large as the live ones.
                while conns.try_join_next().is_some() {}
            }
            // Ok: asked to stop; Err: the Server handle is gone. Both end serving.
            _stopped = async { stop.wait_for(|stop| *stop).await.is_ok() } => break,
        }
    }
    shared.draining.store(true, Ordering::Relaxed);
    drop(listener);
    let in_flight = shared.route.router().in_flight().total();
    tracing::info!(in_flight, "shutting down: no new connections; draining");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(in_flight = shared.route.router().in_flight().total(), "grace period over; closing the rest");
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}
