//! The discovery source the settings describe, and its replacement while serving
//! (production-stack's dynamic configuration, `dynamic.rs`).

use std::time::Duration;

use llmstack_core::{BoxError, Discover, EndpointSet};
use llmstack_discovery::{
    DiscoveryConfig, DiscoveryKind, dns_discovery, probe, publish, reloading_static_discovery,
    static_discovery, static_endpoints,
};
use tokio::sync::{oneshot, watch};

/// How often a static list's `--config` file is checked for changes.
const STATIC_FILE_POLL: Duration = Duration::from_secs(1);

/// A discovery source of any kind.
pub(crate) type Source = Box<dyn Discover>;

/// What the dynamic configuration needs to replace the discovery source while serving:
/// the endpoint set's sender, the server's reaction to a new set, the running task.
pub(crate) struct Rediscover {
    /// The endpoint set's sender (a clone of the running source's).
    pub(crate) set_tx: watch::Sender<EndpointSet>,
    /// Makes the server's reaction to a new set, for each new source.
    pub(crate) on_change: Box<dyn Fn() -> OnChange + Send + Sync>,
    /// The running source's publish task.
    pub(crate) running: tokio::task::AbortHandle,
}

/// The server's reaction to a new endpoint set (frees what gone engines held).
pub(crate) type OnChange = Box<dyn FnMut(&EndpointSet) + Send>;

impl Rediscover {
    /// Starts discovery as `config` says (probed as it says) and has it replace the
    /// running one once it has answered and probed every engine it found (at most
    /// [`FIRST_ANSWER_WAIT`], as at start): until then requests go to the engines of the
    /// running source, so none meets a new engine before its probe has told its models
    /// and readiness. The running source is stopped before the new one's set is served.
    /// On error (a bad setting, a first answer that is an error), the running one is kept.
    pub(crate) async fn restart(&mut self, config: &DiscoveryConfig) -> Result<(), String> {
        config.validate().map_err(|e| e.to_string())?;
        let source = probe(
            source(config).await.map_err(|e| e.to_string())?,
            config.probe.clone(),
        );
        let (ready_tx, ready) = oneshot::channel();
        let (go_tx, go) = oneshot::channel();
        let task = tokio::spawn(stage_then_serve(
            source,
            ready_tx,
            go,
            self.set_tx.clone(),
            (self.on_change)(),
        ));
        let outcome = ready.await.unwrap_or_else(|_| {
            Err("the new discovery source stopped before its first answer".into())
        });
        if let Err(e) = outcome {
            task.abort();
            return Err(e);
        }
        let old = std::mem::replace(&mut self.running, task.abort_handle());
        old.abort();
        // An aborted task may be inside a poll on another worker: let it end, so that
        // no update of the old source lands on the new set.
        while !old.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The task ended if it is not waiting for this any more (it is then aborted).
        let _ignored = go_tx.send(());
        Ok(())
    }
}

/// Longest wait for a discovery source's first answer and then its first probes, at
/// start and when the dynamic config switches sources; the router goes on after it.
pub(crate) const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// How a discovery source's first answer went ([`first_answer`]).
pub(crate) enum FirstAnswer {
    /// It answered, and every engine it found was probed (or the wait ran out, logged).
    Answered,
    /// Its first answer was an error.
    Failed(BoxError),
    /// Its publisher ended without a word.
    Ended,
    /// No answer within [`FIRST_ANSWER_WAIT`].
    Silent,
}

/// Waits at most [`FIRST_ANSWER_WAIT`] for a source's first answer (`answered`, as
/// [`publish`] sends it), then for every engine in the set it publishes (`set`) to be
/// probed: DNS and Kubernetes answer after a round trip, and a new engine's models are
/// known after its first probe.
pub(crate) async fn first_answer(
    answered: oneshot::Receiver<Result<(), BoxError>>,
    set: &mut watch::Receiver<EndpointSet>,
) -> FirstAnswer {
    let deadline = tokio::time::Instant::now() + FIRST_ANSWER_WAIT;
    match tokio::time::timeout_at(deadline, answered).await {
        Ok(Ok(Err(e))) => FirstAnswer::Failed(e),
        Ok(Err(_)) => FirstAnswer::Ended,
        Err(_) => FirstAnswer::Silent,
        Ok(Ok(Ok(()))) => {
            let probed = set.wait_for(|set| {
                set.iter()
                    .all(|ep| ep.state != llmstack_core::EndpointState::Pending)
            });
            if tokio::time::timeout_at(deadline, probed).await.is_err() {
                tracing::warn!(waited = ?FIRST_ANSWER_WAIT, "engines not probed yet; going on");
            }
            FirstAnswer::Answered
        }
    }
}

/// Runs `source` into an endpoint set of its own until it has answered and every engine
/// it found has been probed (or [`FIRST_ANSWER_WAIT`] passed), tells `ready` (with the
/// source's error, if its first answer is one), and once told to `go` keeps the served
/// set (`set_tx`) equal to its own, calling `on_change` before each change. Ends when
/// `ready` or `go` is dropped unanswered.
async fn stage_then_serve(
    source: impl Discover,
    ready: oneshot::Sender<Result<(), String>>,
    go: oneshot::Receiver<()>,
    set_tx: watch::Sender<EndpointSet>,
    mut on_change: OnChange,
) {
    let (staged_tx, mut staged) = watch::channel(EndpointSet::default());
    let (answered_tx, answered) = oneshot::channel();
    let publisher = publish(source, staged_tx, |_: &EndpointSet| {}, Some(answered_tx));
    let serve = async move {
        let outcome = match first_answer(answered, &mut staged).await {
            FirstAnswer::Answered => Ok(()),
            FirstAnswer::Failed(e) => Err(e.to_string()),
            FirstAnswer::Ended => Err("the new discovery source ended without an answer".into()),
            FirstAnswer::Silent => {
                tracing::warn!(waited = ?FIRST_ANSWER_WAIT, "new discovery source has not answered yet; switching anyway");
                Ok(())
            }
        };
        let failed = outcome.is_err();
        if ready.send(outcome).is_err() || failed || go.await.is_err() {
            return;
        }
        loop {
            let set = staged.borrow_and_update().clone();
            on_change(&set);
            set_tx.send_replace(set);
            if staged.changed().await.is_err() {
                return;
            }
        }
    };
    // Serving ends when the publisher does (its source ended: the last set stays
    // served), or first, when the switch is off: then the publisher is dropped with it.
    tokio::pin!(serve);
    tokio::select! {
        () = publisher => serve.await,
        () = &mut serve => {}
    }
}

impl Drop for Rediscover {
    /// The discovery task started last stops with the watcher (the server's `Drop`).
    fn drop(&mut self) {
        self.running.abort();
    }
}

/// The discovery source `config` describes (not yet probed); the error is the
/// configuration's (a bad static list, no Kubernetes API access).
pub(crate) async fn source(config: &DiscoveryConfig) -> Result<Source, BoxError> {
    Ok(match config.service_discovery {
        DiscoveryKind::Static => {
            let endpoints = static_endpoints(config)?;
            match &config.static_file {
                Some(path) => Box::new(reloading_static_discovery(
                    path.clone(),
                    STATIC_FILE_POLL,
                    endpoints,
                    crate::config::static_endpoints_in,
                )),
                None => Box::new(static_discovery(endpoints)),
            }
        }
        DiscoveryKind::Dns => Box::new(dns_discovery(config.dns.clone())),
        DiscoveryKind::K8s => k8s_source(config).await?,
    })
}

#[cfg(feature = "kube")]
async fn k8s_source(config: &DiscoveryConfig) -> Result<Source, BoxError> {
    let client = llmstack_discovery::k8s::client(&config.k8s)
        .await
        .map_err(|e| {
            format!("no Kubernetes API access (in-cluster ServiceAccount or KUBECONFIG): {e}")
        })?;
    Ok(Box::new(llmstack_discovery::k8s::k8s_discovery(
        client,
        config.k8s.clone(),
    )))
}

#[cfg(not(feature = "kube"))]
async fn k8s_source(_: &DiscoveryConfig) -> Result<Source, BoxError> {
    Err(
        "--service-discovery k8s needs a build with the `kube` feature (cargo build --features kube)"
            .into(),
    )
}
