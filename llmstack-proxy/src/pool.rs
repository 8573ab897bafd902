//! Connections to the engines: an idle pool per endpoint, and the exchange of one request.
//!
//! Each engine connection is driven by the task of the client request that uses it,
//! not by a task of its own (as a general-purpose client would do): reading the engine's
//! socket, decoding chunks and writing them to the client happen in one task, so chunks
//! that arrive together leave together, and no cross-task wake-up is paid per chunk.
//! An idle connection is not polled at all; it is checked when taken from the pool.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use foldhash::fast::RandomState;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use llmstack_core::{Endpoint, EndpointId, Error, TimeoutPhase};
use tokio::net::TcpStream;
use tokio::time::Instant;

type Conn = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Connections idle longer than this are not reused: uvicorn (vLLM) closes idle
/// keep-alive connections after 5 s, and reusing one as it closes loses the request.
const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// Idle engine connections, per endpoint.
#[derive(Debug)]
pub(crate) struct Pools {
    idle: Mutex<HashMap<EndpointId, Vec<Idle>, RandomState>>,
    /// Idle connections over all endpoints (changed under the `idle` lock).
    idle_total: AtomicUsize,
    /// The most idle connections kept over all endpoints.
    max_idle: usize,
    connect_timeout: Duration,
    opened: AtomicU64,
}

#[derive(Debug)]
struct Idle {
    link: Link,
    since: Instant,
}

/// One HTTP/1 connection to an engine: the request handle and the connection state
/// machine, which whoever holds the link must poll.
#[derive(Debug)]
pub(crate) struct Link {
    sender: SendRequest<Full<Bytes>>,
    /// Boxed: the connection state is most of a link's size, and links move in and
    /// out of the pool and through the request's futures.
    conn: Pin<Box<Conn>>,
    /// The connection future finished (closed by either side, or failed).
    closed: bool,
    /// Whether the link came from the pool (a request lost on it may be retried).
    pub(crate) reused: bool,
    /// The address it is connected to: an endpoint that moves (same id, new URL) must
    /// not reuse links to its old address.
    to: http::uri::Authority,
}

// === impl Pools ===

impl Pools {
    pub(crate) fn new(connect_timeout: Duration, max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(HashMap::default()),
            idle_total: AtomicUsize::new(0),
            max_idle,
            connect_timeout,
            opened: AtomicU64::new(0),
        }
    }

    /// A live idle connection to `endpoint`, or a new one.
    pub(crate) async fn link(&self, endpoint: &Endpoint) -> Result<Link, Error> {
        if let Some(link) = self.checkout(endpoint) {
            return Ok(link);
        }
        self.connect(endpoint).await
    }

    fn checkout(&self, endpoint: &Endpoint) -> Option<Link> {
        let (id, to) = (&endpoint.id, endpoint.authority()?);
        let now = Instant::now();
        loop {
            // Pop under the lock; check the connection outside it.
            let Idle { mut link, .. } = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                let list = idle.get_mut(id)?;
                let top = list.pop()?;
                self.idle_total.fetch_sub(1, Ordering::Relaxed);
                if now.duration_since(top.since) > MAX_IDLE_AGE {
                    // Older ones are further down the stack: all stale.
                    self.idle_total.fetch_sub(list.len(), Ordering::Relaxed);
                    list.clear();
                    return None;
                }
                top
            };
            // Let the connection notice a close by the engine (EOF) without blocking.
            let mut cx = Context::from_waker(Waker::noop());
            link.drive(&mut cx);
            if !link.closed && link.sender.is_ready() && link.to == *to {
                link.reused = true;
                return Some(link);
            }
        }
    }

    /// Closes idle connections older than the reuse limit (run periodically, so a burst
    /// does not leave sockets open after the engine closed its side).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        for list in idle.values_mut() {
            // Oldest first: the stack is ordered by return time.
            let stale = list
                .iter()
                .take_while(|i| now.duration_since(i.since) > MAX_IDLE_AGE)
                .count();
            list.drain(..stale);
            self.idle_total.fetch_sub(stale, Ordering::Relaxed);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Connections opened so far (requests beyond that reused one).
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// A new connection to `endpoint`, within the connect timeout.
    pub(crate) async fn connect(&self, endpoint: &Endpoint) -> Result<Link, Error> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let id = &endpoint.id;
        let authority = endpoint.authority().ok_or_else(|| Error::Connect {
            endpoint: id.clone(),
            source: "the engine URL has no host".into(),
        })?;
        // IPv6 literals come bracketed in a URL authority, not in a socket address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = (host, authority.port_u16().unwrap_or(80));
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return Err(Error::Connect {
                        endpoint: id.clone(),
                        source: e.into(),
                    });
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        endpoint: id.clone(),
                        phase: TimeoutPhase::Connect,
                    });
                }
            };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Connect {
                endpoint: id.clone(),
                source: e.into(),
            })?;
        Ok(Link {
            sender,
            conn: Box::pin(conn),
            closed: false,
            reused: false,
            to: authority.clone(),
        })
    }

    /// Returns a link whose last response ended cleanly to the idle pool (or drops it
    /// when it cannot take another request).
    pub(crate) fn checkin(&self, id: &EndpointId, mut link: Link, cx: &mut Context<'_>) {
        // One more turn lets the connection finish the message and ask for the next.
        link.drive(cx);
        if link.closed || !link.sender.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Every idle connection holds a file descriptor: beyond the bound it closes.
        if self.idle_total.load(Ordering::Relaxed) >= self.max_idle {
            return;
        }
        let list = idle.entry(id.clone()).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                link,
                since: Instant::now(),
            });
            self.idle_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the idle connections of endpoints that no longer exist.
    pub(crate) fn retain(&self, mut exists: impl FnMut(&EndpointId) -> bool) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|id, _| exists(id));
        let total = idle.values().map(Vec::len).sum();
        self.idle_total.store(total, Ordering::Relaxed);
    }
}

// === impl Link ===

impl Link {
    /// Polls the connection: writes what is queued, reads and decodes what arrived.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) {
        if self.closed {
            return;
        }
        if let Poll::Ready(result) = self.conn.as_mut().poll(cx) {
            if let Err(e) = result {
                tracing::debug!(error = %e, "engine connection failed");
            }
            self.closed = true;
        }
    }

    /// Sends `req` and waits for the response head, driving the connection meanwhile.
    ///
    /// `Err(Some(req))` gives the request back when it was never written (the
    /// connection was not usable), so it can go on another connection.
    pub(crate) async fn exchange(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, (hyper::Error, Option<Request<Full<Bytes>>>)> {
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
        .map_err(|mut e| {
            let req = e.take_message();
            (e.into_error(), req)
        })
    }
}
