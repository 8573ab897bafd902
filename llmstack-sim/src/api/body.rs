//! Response bodies: a full body, an SSE stream fed by the engine, or SSE events known in
//! advance; and the guards that keep a request counted while its body is alive.
//!
//! The engine stream is pulled by hyper: each poll drains the events the engine has
//! produced since the last one (one SSE chunk per engine step and choice) into one frame,
//! so a slow client never blocks the engine and never makes it buffer without bound (the
//! engine's output per sequence is bounded by `max_tokens`). Dropping the body (client
//! gone) aborts the sequences still running.
//!
//! Both stream kinds obey the close-after-chunks fault the same way: exactly K events go
//! out, hyper flushes them, then the body fails, so hyper drops the connection without the
//! chunked terminator and a client or proxy sees a body error.

use std::collections::VecDeque;
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
use crate::finish::FinishReason;
use crate::scheduler::SeqEvent;

/// The body of every simulator response.
#[derive(Debug)]
pub(crate) enum SimBody {
    /// A complete body (taken on first poll).
    Full(Option<Bytes>),
    /// A server-sent-event stream fed by the engine.
    Stream(Box<SseStream>),
    /// Server-sent events known in advance (routes answered without the scheduler).
    Events(Box<EventStream>),
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
            Self::Events(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) | Self::Events(_) => SizeHint::default(),
        }
    }
}

/// Counts one request in the engine's in-flight gauge (`/load`, vLLM's
/// `load_aware_call`) until dropped; a streamed answer keeps it in its body.
#[derive(Debug)]
pub(crate) struct LoadGuard(Arc<EngineShared>);

impl LoadGuard {
    /// Counts a request in.
    pub(crate) fn new(shared: Arc<EngineShared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
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
    _load: LoadGuard,
}

impl Flight {
    /// Reserves `count` queued sequences for a request counted in by `load`.
    pub(crate) fn new(
        tx: mpsc::UnboundedSender<Command>,
        shared: Arc<EngineShared>,
        first_id: u64,
        count: usize,
        load: LoadGuard,
    ) -> Self {
        let queued_after = shared.queued.fetch_add(count, Ordering::AcqRel) + count;
        Self {
            tx,
            _load: load,
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

/// How long a close-after-chunks fault lets written chunks flush before cutting.
const CUT_FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// The close-after-chunks fault of one stream: counts the SSE events sent and cuts the
/// connection once the limit is reached.
#[derive(Debug, Default)]
pub(crate) struct Cutter {
    /// Fail the connection after this many SSE events.
    pub(crate) limit: Option<u32>,
    /// SSE events sent so far.
    pub(crate) sent: u32,
    /// Pause before cutting, so hyper flushes what was written.
    flush: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Cutter {
    /// A cutter for the fault's limit (`None`: never cut).
    pub(crate) fn new(limit: Option<u32>) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Whether the limit has been reached.
    fn reached(&self) -> bool {
        self.limit.is_some_and(|l| self.sent >= l)
    }

    /// Once the limit is reached: `Pending` until the flush delay has passed, then the
    /// error that makes hyper drop the connection. `None` while events may still go out.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Error>> {
        if !self.reached() {
            return None;
        }
        // Return Pending once so hyper flushes the chunks already written, then cut.
        let flush = self
            .flush
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_FLUSH_DELAY)));
        if flush.as_mut().poll(cx).is_pending() {
            return Some(Poll::Pending);
        }
        Some(Poll::Ready(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "fault: close after chunks",
        )))
    }

    /// Counts `events` just written at the end of `buf`, dropping those past the limit.
    /// Returns whether any were dropped.
    fn count(&mut self, buf: &mut Vec<u8>, events: usize) -> bool {
        let events = u32::try_from(events).unwrap_or(u32::MAX);
        let Some(limit) = self.limit else {
            self.sent = self.sent.saturating_add(events);
            return false;
        };
        let allowed = limit.saturating_sub(self.sent);
        if events <= allowed {
            self.sent += events;
            return false;
        }
        truncate_events(buf, allowed as usize);
        self.sent = limit;
        true
    }
}

/// Keeps the first `keep` SSE events of `buf` (each ends with a blank line; JSON data
/// never contains one).
fn truncate_events(buf: &mut Vec<u8>, keep: usize) {
    let mut end = 0;
    for _ in 0..keep {
        match buf[end..].windows(2).position(|w| w == b"\n\n") {
            Some(p) => end += p + 2,
            None => return,
        }
    }
    buf.truncate(end);
}

/// An SSE response in progress.
#[derive(Debug)]
pub(crate) struct SseStream {
    pub(crate) rx: mpsc::UnboundedReceiver<SeqEvent>,
    pub(crate) out: Assembly,
    pub(crate) flight: Flight,
    /// The close-after-chunks fault.
    pub(crate) cutter: Cutter,
    /// Whether the events that open the stream (before any token) went out.
    pub(crate) started: bool,
    pub(crate) ended: bool,
    /// A delay still to elapse before the request reaches the engine (fault injection).
    pub(crate) delay: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The sequences to hand to the engine once `delay` has passed.
    pub(crate) submit: Option<Command>,
}

impl SseStream {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(cut) = self.cutter.poll_cut(cx) {
            return cut.map(|e| {
                self.ended = true;
                Some(Err(e))
            });
        }
        let mut buf = Vec::new();
        if !std::mem::replace(&mut self.started, true) {
            let n = self.out.write_start(&mut buf);
            self.cutter.count(&mut buf, n);
        }
        if let Some(d) = &mut self.delay {
            if d.as_mut().poll(cx).is_pending() {
                return Self::frame(buf, false);
            }
            self.delay = None;
        }
        if let Some(cmd) = self.submit.take()
            && self.flight.tx.send(cmd).is_err()
        {
            self.out.abort_rest();
            self.out.write_error("Internal server error", &mut buf);
            self.ended = true;
            return Self::frame(buf, true);
        }
        let mut drained = 0;
        while drained < MAX_EVENTS_PER_FRAME && !self.out.done() && !self.cutter.reached() {
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
                        let n = self.out.write_step(i, &mut buf);
                        self.cutter.count(&mut buf, n);
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
        if !self.ended && self.out.done() && !self.cutter.reached() {
            let n = self.out.write_end(&mut buf);
            // Cut short by the fault: the next poll fails the connection instead.
            self.ended = !self.cutter.count(&mut buf, n) && !self.cutter.reached();
        }
        Self::frame(buf, self.ended)
    }

    /// `buf` as a frame if it holds anything, else the end or `Pending`.
    fn frame(buf: Vec<u8>, ended: bool) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if !buf.is_empty() {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
        } else if ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// SSE events known in advance, one frame each, for routes answered without the
/// scheduler; counted in flight until the last one is sent.
#[derive(Debug)]
pub(crate) struct EventStream {
    events: VecDeque<Bytes>,
    cutter: Cutter,
    ended: bool,
    load: Option<LoadGuard>,
}

impl EventStream {
    /// A stream of `events` (each a complete SSE event) under the close-after fault.
    pub(crate) fn new(events: Vec<Bytes>, close_after: Option<u32>, load: LoadGuard) -> Self {
        Self {
            events: events.into(),
            cutter: Cutter::new(close_after),
            ended: false,
            load: Some(load),
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(cut) = self.cutter.poll_cut(cx) {
            return cut.map(|e| {
                self.ended = true;
                self.load = None;
                Some(Err(e))
            });
        }
        match self.events.pop_front() {
            Some(ev) => {
                self.cutter.sent += 1;
                Poll::Ready(Some(Ok(Frame::data(ev))))
            }
            None => {
                self.ended = true;
                self.load = None;
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutter_keeps_exactly_the_limit() {
        let mut c = Cutter::new(Some(3));
        let mut buf = b"data: 1\n\n".to_vec();
        assert!(!c.count(&mut buf, 1));
        let mut buf =
            b"event: a\ndata: {}\n\nevent: b\ndata: {}\n\nevent: c\ndata: {}\n\n".to_vec();
        assert!(c.count(&mut buf, 3));
        assert_eq!(buf, b"event: a\ndata: {}\n\nevent: b\ndata: {}\n\n");
        assert!(c.reached());
        let mut free = Cutter::new(None);
        assert!(!free.count(&mut buf, 2));
        assert!(!free.reached());
    }
}
