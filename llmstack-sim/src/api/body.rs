//! Response bodies: a full body, or an SSE stream fed by the engine.
//!
//! The stream body is pulled by hyper: each poll drains the events the engine has produced
//! since the last one (one SSE chunk per engine step and choice) into one frame, so a slow
//! client never blocks the engine and never makes it buffer without bound (the engine's
//! output per sequence is bounded by `max_tokens`). Dropping the body (client gone) aborts
//! the sequences still running.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::api::output::Assembly;
use crate::engine::{Command, EngineShared};
use crate::scheduler::{FinishReason, SeqEvent};

/// The body of every simulator response.
#[derive(Debug)]
pub(crate) enum SimBody {
    /// A complete body (taken on first poll).
    Full(Option<Bytes>),
    /// A server-sent-event stream.
    Stream(Box<SseStream>),
}

impl SimBody {
    pub(crate) fn full(b: Bytes) -> Self {
        Self::Full(Some(b))
    }

    pub(crate) fn empty() -> Self {
        Self::Full(None)
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

/// Holds a request's engine sequences: aborts the unfinished ones when dropped and keeps
/// the engine's in-flight request and queued sequence counts.
#[derive(Debug)]
pub(crate) struct Flight {
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    pub(crate) shared: Arc<EngineShared>,
    pub(crate) first_id: u64,
    /// Per choice: still running in the engine.
    pub(crate) live: Vec<bool>,
    /// Sequences queued or running on the engine, this request's included.
    pub(crate) queued_after: usize,
}

impl Flight {
    /// Counts a request of `count` sequences in.
    pub(crate) fn new(
        tx: mpsc::UnboundedSender<Command>,
        shared: Arc<EngineShared>,
        first_id: u64,
        count: usize,
    ) -> Self {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let queued_after = shared.queued.fetch_add(count, Ordering::AcqRel) + count;
        Self {
            tx,
            shared,
            first_id,
            live: vec![true; count],
            queued_after,
        }
    }

    /// Ends choice `i` in the engine with `reason` (a stop string matched).
    pub(crate) fn end(&mut self, i: usize, reason: FinishReason) {
        if let Some(live) = self.live.get_mut(i)
            && std::mem::replace(live, false)
        {
            let _gone = self
                .tx
                .send(Command::Abort(vec![self.first_id + i as u64], reason));
        }
    }

    /// Applies one engine event to `out` and keeps the engine in step: a choice ended by
    /// a stop string is ended in the engine, one the engine finished is no longer live.
    /// Returns the event's choice index.
    pub(crate) fn apply(&mut self, out: &mut Assembly, ev: SeqEvent) -> usize {
        let i = ev.index as usize;
        let engine_done = ev.finish.is_some();
        if let Some(stopped) = out.apply(ev) {
            self.end(stopped, FinishReason::Stop);
        } else if engine_done && let Some(live) = self.live.get_mut(i) {
            *live = false;
        }
        i
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.shared
            .queued
            .fetch_sub(self.live.len(), Ordering::AcqRel);
        let ids: Vec<u64> = self
            .live
            .iter()
            .enumerate()
            .filter(|(_, live)| **live)
            .map(|(i, _)| self.first_id + i as u64)
            .collect();
        if !ids.is_empty() {
            let _gone = self.tx.send(Command::Abort(ids, FinishReason::Abort));
        }
    }
}

/// Largest number of engine events coalesced into one frame.
const MAX_EVENTS_PER_FRAME: usize = 256;

/// An SSE response in progress.
#[derive(Debug)]
pub(crate) struct SseStream {
    pub(crate) rx: mpsc::UnboundedReceiver<SeqEvent>,
    pub(crate) out: Assembly,
    pub(crate) flight: Flight,
    /// Fault: fail the connection after this many SSE events.
    pub(crate) close_after: Option<u32>,
    pub(crate) events_sent: u32,
    pub(crate) ended: bool,
    /// A delay still to elapse before the request reaches the engine (fault injection).
    pub(crate) delay: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The sequences to hand to the engine once `delay` has passed.
    pub(crate) submit: Option<Command>,
    /// Pause before cutting the connection (close-after-chunks fault).
    pub(crate) cut: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a close-after-chunks fault lets written chunks flush before cutting.
const CUT_FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

impl SseStream {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(limit) = self.close_after
            && self.events_sent >= limit
        {
            // Return Pending once so hyper flushes the chunks already written, then cut.
            let flush = self
                .cut
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_FLUSH_DELAY)));
            if flush.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.ended = true;
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "fault: close after chunks",
            ))));
        }
        if let Some(d) = &mut self.delay {
            if d.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.delay = None;
        }
        if let Some(cmd) = self.submit.take()
            && self.flight.tx.send(cmd).is_err()
        {
            let mut buf = Vec::new();
            self.out.abort_rest();
            self.out.write_error("Internal server error", &mut buf);
            self.ended = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
        }
        let mut buf = Vec::new();
        let mut drained = 0;
        while drained < MAX_EVENTS_PER_FRAME && !self.out.done() {
            if self.close_after.is_some_and(|l| self.events_sent >= l) {
                break;
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => {
                    drained += 1;
                    let was_done = self
                        .out
                        .choices
                        .get(ev.index as usize)
                        .is_some_and(|c| c.finish.is_some());
                    let i = self.flight.apply(&mut self.out, ev);
                    if !was_done {
                        self.events_sent += self.out.write_step(i, &mut buf) as u32;
                    }
                }
                Poll::Ready(None) => {
                    self.out.abort_rest();
                    self.out.write_error("Internal server error", &mut buf);
                    self.ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !self.ended && self.out.done() && self.close_after.is_none_or(|l| self.events_sent < l) {
            self.events_sent += self.out.write_end(&mut buf) as u32;
            self.ended = true;
        }
        if !buf.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
        }
        if self.ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
