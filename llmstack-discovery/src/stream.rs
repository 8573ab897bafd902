//! A discovery stream fed by a background task.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use llmstack_core::{BoxError, Update};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Updates produced by a task this stream owns: dropping the stream aborts the task.
pub struct UpdateStream {
    rx: mpsc::Receiver<Result<Update, BoxError>>,
    task: Option<JoinHandle<()>>,
}

impl UpdateStream {
    /// A stream over `rx`, owning the task that feeds it (if any).
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<Update, BoxError>>,
        task: Option<JoinHandle<()>>,
    ) -> Self {
        Self { rx, task }
    }
}

impl Stream for UpdateStream {
    type Item = Result<Update, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for UpdateStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for UpdateStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateStream").finish_non_exhaustive()
    }
}
