//! A model's places: the permit an admitted request holds until its response ends,
//! and a waiter's place in the queue; both give themselves back when dropped.

use std::sync::Arc;

use llmstack_core::Priority;

use super::Shared;

/// One admitted request of a model: gives its place back when dropped.
pub(super) struct Permit {
    pub(super) shared: Arc<Shared>,
    pub(super) model: Arc<str>,
    /// False once given back by hand (a waiter that left before taking it).
    pub(super) armed: bool,
}

/// A waiter's place in its model's queue, removed when dropped.
pub(super) struct Place {
    pub(super) shared: Arc<Shared>,
    pub(super) model: Arc<str>,
    pub(super) class: usize,
    pub(super) id: u64,
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut models = self.shared.lock();
        if let Some(queue) = models.get_mut(&self.model) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
        }
        self.shared.grant(&mut models, &self.model);
    }
}

// === impl Place ===

impl Drop for Place {
    fn drop(&mut self) {
        let mut models = self.shared.lock();
        if let Some(queue) = models.get_mut(&self.model) {
            queue.waiting[self.class].retain(|w| w.id != self.id);
        }
    }
}

// === impl Priority (index) ===

pub(super) trait Index {
    fn index(self) -> usize;
}

impl Index for Priority {
    fn index(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}
