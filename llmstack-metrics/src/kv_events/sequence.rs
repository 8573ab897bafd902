//! The sequence rules of one publisher: which batches to apply, which are duplicates,
//! when the source's state must be thrown away and what to ask the replay socket for.
//!
//! Pure bookkeeping, no I/O: the follower feeds it sequence numbers and does what it
//! says.

/// Why a source's state was thrown away (the `reason` label of the resets metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResetReason {
    /// Batches were lost and could not be replayed.
    Gap,
    /// The sequence went back: a new publisher process (an engine restart).
    Restart,
    /// A batch could not be decoded.
    DecodeError,
    /// Discovery found the rank publishing somewhere else.
    Moved,
}

/// What to do with a batch that arrived on the live (SUB) socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    /// It follows the last one: apply it, after resetting the source if `reset`.
    Apply { reset: Option<ResetReason> },
    /// A replay already applied it: skip it.
    Duplicate,
    /// Batches before it are missing: reset the source if `reset`, replay from `from`
    /// (when there is a replay socket), then ask [`Track::catch_up`] about it again.
    /// `from` is 0 when catching up with a publisher seen for the first time (or anew
    /// after a restart), else the first missing sequence number (a gap).
    Fill {
        from: u64,
        reset: Option<ResetReason>,
    },
}

/// What to do with a replayed batch, or with the live batch that asked for a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatchUp {
    /// Apply it, after resetting the source if `reset` (the batches between the last
    /// applied one and it are gone for good).
    Apply { reset: Option<ResetReason> },
    /// Already applied: skip it.
    Skip,
}

/// One publisher's position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Track {
    /// The last batch applied (or skipped for an error after a reset).
    last: Option<u64>,
    /// The sequence number the live socket should deliver next: the one after the last
    /// it delivered on this connection.
    live_next: Option<u64>,
}

// === impl ResetReason ===

impl ResetReason {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Gap => "gap",
            Self::Restart => "restart",
            Self::DecodeError => "decode_error",
            Self::Moved => "moved",
        }
    }
}

// === impl Track ===

impl Track {
    /// The last batch applied.
    pub(crate) fn last(&self) -> Option<u64> {
        self.last
    }

    /// A new live connection: its first batch may have any number.
    pub(crate) fn reconnected(&mut self) {
        self.live_next = None;
    }

    /// Batch `seq` was applied, or dropped after a reset (a decode error): the next
    /// one follows it.
    pub(crate) fn applied(&mut self, seq: u64) {
        self.last = Some(seq);
    }

    /// A batch arrived live.
    pub(crate) fn live(&mut self, seq: u64) -> Live {
        // The live socket delivers one publisher's batches in order, so the one after
        // the previous live batch is never a restart: a replay applied it already.
        let in_stream = self.live_next == Some(seq);
        self.live_next = seq.checked_add(1);
        match self.last {
            None if seq == 0 => Live::Apply { reset: None },
            None => Live::Fill {
                from: 0,
                reset: None,
            },
            Some(last) if Some(seq) == last.checked_add(1) => Live::Apply { reset: None },
            Some(last) if seq <= last => {
                if in_stream {
                    return Live::Duplicate;
                }
                self.last = None;
                let reset = Some(ResetReason::Restart);
                if seq == 0 {
                    Live::Apply { reset }
                } else {
                    Live::Fill { from: 0, reset }
                }
            }
            // seq > last + 1, so last + 1 does not overflow.
            Some(last) => Live::Fill {
                from: last + 1,
                reset: None,
            },
        }
    }

    /// A batch arrived from a replay, or a replay (answered, failed or not possible)
    /// is over and the live batch that asked for it is due.
    pub(crate) fn catch_up(&mut self, seq: u64) -> CatchUp {
        match self.last {
            None => CatchUp::Apply { reset: None },
            Some(last) if seq <= last => CatchUp::Skip,
            Some(last) if Some(seq) == last.checked_add(1) => CatchUp::Apply { reset: None },
            Some(_) => CatchUp::Apply {
                reset: Some(ResetReason::Gap),
            },
        }
    }
}

#[cfg(test)]
mod tests;
