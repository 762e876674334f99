//! The session's end of a connection: typed messages in, typed messages
//! out, from plain blocking code. Whatever carries them (a socket with its
//! reader and writer tasks, see `transport::connection`, or an in-process
//! pair for a local sync) only builds a [`Link`]; the session never sees a
//! stream.
//!
//! Messages travel in batches: `send` queues locally, and the queue goes
//! out when it is full, when its oldest message has waited [`LINGER`], or
//! before the thread waits for the peer (`recv` with nothing received left
//! to handle) — one wake-up per batch instead of per message. A side busy
//! with a batch of the peer's messages answers them in one batch, not one
//! hand-over per message handled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub use crate::error::LinkError;

/// Bytes that crossed the socket, both ways.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

impl Counters {
    pub fn total(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

/// Where the carrier leaves the reason the incoming side ended.
pub type Broken = Arc<Mutex<Option<LinkError>>>;

/// One end of a session's connection.
pub struct Link<Out, In> {
    tx: mpsc::Sender<Vec<Out>>,
    /// Queued messages and when the oldest of them was queued.
    outbox: Mutex<(Vec<Out>, Option<Instant>)>,
    rx: Mutex<(mpsc::Receiver<Vec<In>>, VecDeque<In>)>,
    /// Why the incoming side ended, set by the carrier before it stops.
    broken: Broken,
    pub counters: Arc<Counters>,
    pub peer: String,
    /// The task writing to the socket (none for an in-process pair).
    writer: Option<tokio::task::JoinHandle<()>>,
}

/// Messages queued by `send` before they are handed over anyway.
const OUTBOX: usize = 64;
/// Longest a queued message waits while the thread handles what it received.
const LINGER: Duration = Duration::from_millis(2);

impl<Out, In> Link<Out, In> {
    /// A link over channels fed and drained by a carrier.
    pub fn new(
        tx: mpsc::Sender<Vec<Out>>,
        rx: mpsc::Receiver<Vec<In>>,
        broken: Broken,
        counters: Arc<Counters>,
        peer: String,
        writer: Option<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Link {
            tx,
            outbox: Mutex::new((Vec::new(), None)),
            rx: Mutex::new((rx, VecDeque::new())),
            broken,
            counters,
            peer,
            writer,
        }
    }
}

impl<Out: Send + 'static, In> Link<Out, In> {
    /// Queues a message from blocking code; false if the connection is gone.
    pub fn send(&self, msg: Out) -> bool {
        let full = {
            let mut out = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
            out.0.push(msg);
            out.1.get_or_insert_with(Instant::now);
            out.0.len() >= OUTBOX
        };
        if full {
            self.flush()
        } else {
            !self.tx.is_closed()
        }
    }

    /// Hands what `send` queued to the connection now (before a long piece
    /// of local work, so the peer is not kept waiting).
    pub fn flush(&self) -> bool {
        let batch = {
            let mut out = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
            out.1 = None;
            std::mem::take(&mut out.0)
        };
        batch.is_empty() || self.tx.blocking_send(batch).is_ok()
    }

    /// Whether messages pass as values between two threads of this process
    /// (a local sync): nothing is encoded or sent, so saving bytes (deltas
    /// against a basis) only costs time.
    pub fn is_in_process(&self) -> bool {
        self.writer.is_none()
    }

    /// A message already received and not yet handled, if any.
    fn take_received(&self) -> Option<In> {
        let mut guard = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let (rx, pending) = &mut *guard;
        if pending.is_empty() {
            if let Ok(batch) = rx.try_recv() {
                pending.extend(batch);
            }
        }
        pending.pop_front()
    }

    /// Flushes if the oldest queued message has waited [`LINGER`].
    fn flush_if_stale(&self) {
        let stale = {
            let out = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
            out.1.is_some_and(|t| t.elapsed() >= LINGER)
        };
        if stale {
            self.flush();
        }
    }

    /// Sends what is queued and closes the sending side; returns the writer
    /// task, which ends once everything is on the wire (None: nothing left
    /// to wait for).
    pub fn close(mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.flush();
        self.writer.take()
    }

    /// A message already received, without waiting (what is queued is
    /// sent if it has lingered too long).
    pub fn try_recv(&self) -> Option<In> {
        let m = self.take_received()?;
        self.flush_if_stale();
        Some(m)
    }

    /// Receives from blocking code; `Err` says why the link ended. What
    /// is queued is sent first when nothing received is left to handle
    /// (the thread may wait for the peer) or it has lingered too long.
    pub fn recv(&self) -> Result<In, LinkError> {
        if let Some(m) = self.try_recv() {
            return Ok(m);
        }
        self.flush();
        let mut guard = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let (rx, pending) = &mut *guard;
        match rx.blocking_recv() {
            Some(batch) => {
                pending.extend(batch);
                pending
                    .pop_front()
                    .ok_or_else(|| LinkError::Frame("empty batch".into()))
            }
            None => Err(self
                .broken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or(LinkError::Closed)),
        }
    }
}

impl<Out, In> Drop for Link<Out, In> {
    fn drop(&mut self) {
        // Whatever was queued still goes out (a final report, a goodbye).
        let batch = std::mem::take(&mut self.outbox.lock().unwrap_or_else(|e| e.into_inner()).0);
        if !batch.is_empty() {
            let _ = self.tx.try_send(batch);
        }
    }
}

/// Two ends of an in-process link (local sync): messages pass as values,
/// with no encoding, socket or byte count. `a_queue` bounds the batches the
/// first end may have in flight, `b_queue` the second's.
pub fn link_pair<A, B>(a_queue: usize, b_queue: usize, peer: &str) -> (Link<A, B>, Link<B, A>) {
    let (a_tx, a_rx) = mpsc::channel::<Vec<A>>(a_queue);
    let (b_tx, b_rx) = mpsc::channel::<Vec<B>>(b_queue);
    let broken = || Arc::new(Mutex::new(None));
    let counters = || Arc::new(Counters::default());
    (
        Link::new(a_tx, b_rx, broken(), counters(), peer.to_string(), None),
        Link::new(b_tx, a_rx, broken(), counters(), peer.to_string(), None),
    )
}
