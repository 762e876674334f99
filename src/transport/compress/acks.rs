//! Acknowledgements under `--compress auto`: each side tells the other how
//! much of the other's frame stream it has read, so a writer can judge how
//! fast each way of sending really gets through (see [`super::choice`]).
//!
//! One [`Acks`] is shared by a side's reader and writer: the reader counts
//! the frame bytes it yields and wakes the writer every [`ACK_STEP`]; the
//! writer sends an acknowledgement segment; the peer's reader stores the
//! acknowledgements it receives, with the time each arrived, for the peer's
//! writer to take.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::Notify;

/// Frame bytes read between acknowledgements.
pub const ACK_STEP: u64 = 128 << 10;
/// Acknowledgements held for the writer; past this the oldest are dropped
/// (a writer that has not written for that long has nothing to judge).
const HELD: usize = 1024;

/// The state a side's reader and writer share.
#[derive(Debug, Default)]
pub struct Acks {
    /// Frame bytes of the peer's stream this side has read.
    read: AtomicU64,
    /// Where the reader wakes the writer next.
    wake_at: AtomicU64,
    /// Wakes the writer when an acknowledgement is due.
    due: Notify,
    /// The peer's acknowledgements of this side's stream: (bytes read,
    /// when the acknowledgement arrived), oldest first.
    got: Mutex<VecDeque<(u64, Instant)>>,
}

impl Acks {
    /// The reader yielded `n` more frame bytes.
    pub fn on_read(&self, n: usize) {
        let read = self.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if read >= self.wake_at.load(Ordering::Relaxed) {
            self.wake_at.store(read + ACK_STEP, Ordering::Relaxed);
            self.due.notify_one();
        }
    }

    /// Frame bytes read so far.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Resolves when an acknowledgement may be due.
    pub async fn due(&self) {
        self.due.notified().await
    }

    /// The peer acknowledged `at` bytes of this side's stream.
    pub fn on_ack(&self, at: u64) {
        let mut got = self.got.lock().unwrap_or_else(|e| e.into_inner());
        if got.len() >= HELD {
            got.pop_front();
        }
        got.push_back((at, Instant::now()));
    }

    /// Takes the acknowledgements received so far.
    pub fn take(&self) -> VecDeque<(u64, Instant)> {
        std::mem::take(&mut *self.got.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
