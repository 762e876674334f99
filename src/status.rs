//! Live counters of a running server, for its status endpoint and log.

use crate::protocol::PassStats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// Counters updated by sessions, read by the status endpoint.
#[derive(Debug)]
pub struct ServerStats {
    pub started: Instant,
    pub clients: AtomicU64,
    pub sessions: AtomicU64,
    pub passes: AtomicU64,
    pub ops: AtomicU64,
    pub received: AtomicU64,
    pub reused: AtomicU64,
    pub last_change: Mutex<Option<SystemTime>>,
}

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            started: Instant::now(),
            clients: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            received: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            last_change: Mutex::new(None),
        }
    }
}

impl ServerStats {
    pub fn note_op(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
    }

    pub fn note_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn note_reused(&self, n: u64) {
        self.reused.fetch_add(n, Ordering::Relaxed);
    }

    pub fn note_pass(&self, _s: &PassStats) {
        self.passes.fetch_add(1, Ordering::Relaxed);
    }
}
