//! Live counters of a running server, and the ways to read them: an HTTP
//! endpoint ([`http`]: a live page at `GET /`, `GET /status` as JSON,
//! `GET /metrics` in Prometheus text format) and a status request over the
//! replica protocol itself.
//!
//! Sessions update [`ServerStats`]; readers take a [`StatusSnapshot`] (the
//! counters, also sent over the protocol) or a [`LiveStatus`] (the
//! snapshot plus the throughput history and recent operations of
//! [`live`], for the page).

pub mod http;
pub mod live;

use crate::protocol::{OpReport, PassStats};
use live::{RecentOp, Ring, Second, HISTORY_SECONDS, RECENT_OPS};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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
    pub replica_files: AtomicU64,
    pub replica_bytes: AtomicU64,
    /// Content bytes received per second, over the last second.
    pub speed: AtomicU64,
    pub last_change: Mutex<Option<SystemTime>>,
    pub dest: Mutex<String>,
    /// Throughput second by second, oldest first.
    pub history: Mutex<Ring<Second>>,
    /// The most recent operations, oldest first.
    pub recent: Mutex<Ring<RecentOp>>,
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
            replica_files: AtomicU64::new(0),
            replica_bytes: AtomicU64::new(0),
            speed: AtomicU64::new(0),
            last_change: Mutex::new(None),
            dest: Mutex::new(String::new()),
            history: Mutex::new(Ring::new(HISTORY_SECONDS)),
            recent: Mutex::new(Ring::new(RECENT_OPS)),
        }
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub dest: String,
    pub uptime_seconds: u64,
    pub connected_clients: u64,
    pub sessions: u64,
    pub passes: u64,
    pub operations: u64,
    pub replica_files: u64,
    pub replica_bytes: u64,
    pub last_change: Option<String>,
    pub bytes_received: u64,
    pub bytes_saved_by_dedup: u64,
    pub transfer_bytes_per_second: u64,
    pub free_bytes: Option<u64>,
}

/// What the live page polls: the snapshot, plus throughput and recent
/// operations (kept out of the protocol's status reply, which is bounded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveStatus {
    #[serde(flatten)]
    pub snapshot: StatusSnapshot,
    /// Bytes per second over the last minutes, oldest first, one entry per
    /// second (fewer right after start).
    pub throughput: Vec<Second>,
    /// The most recent operations, newest last.
    pub recent: Vec<RecentOp>,
}

impl ServerStats {
    pub fn note_op(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
    }

    /// Records an operation carried out (or failed) on the replica.
    pub fn note_report(&self, r: &OpReport) {
        self.note_op();
        let op = RecentOp::of(r, crate::report::now_rfc3339());
        lock(&self.recent).push(op);
    }

    pub fn note_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn note_reused(&self, n: u64) {
        self.reused.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a finished pass; `totals` (files, bytes) when it covered the whole tree.
    pub fn note_pass(&self, _s: &PassStats, totals: Option<(u64, u64)>) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        if let Some((files, bytes)) = totals {
            self.replica_files.store(files, Ordering::Relaxed);
            self.replica_bytes.store(bytes, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let dest = self.dest.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let last = *self.last_change.lock().unwrap_or_else(|e| e.into_inner());
        StatusSnapshot {
            free_bytes: fs4::available_space(&dest).ok(),
            dest,
            uptime_seconds: self.started.elapsed().as_secs(),
            connected_clients: self.clients.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            passes: self.passes.load(Ordering::Relaxed),
            operations: self.ops.load(Ordering::Relaxed),
            replica_files: self.replica_files.load(Ordering::Relaxed),
            replica_bytes: self.replica_bytes.load(Ordering::Relaxed),
            last_change: last.map(|t| {
                time::OffsetDateTime::from(t)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            }),
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_saved_by_dedup: self.reused.load(Ordering::Relaxed),
            transfer_bytes_per_second: self.speed.load(Ordering::Relaxed),
        }
    }

    /// The snapshot with the page's history and recent operations.
    pub fn live(&self) -> LiveStatus {
        LiveStatus {
            snapshot: self.snapshot(),
            throughput: lock(&self.history).to_vec(),
            recent: lock(&self.recent).to_vec(),
        }
    }

    /// Keeps `speed` and the throughput history current, once a second
    /// (call from a spawned task).
    pub async fn track_speed(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is at once
        let mut last = (
            self.received.load(Ordering::Relaxed),
            self.reused.load(Ordering::Relaxed),
        );
        loop {
            tick.tick().await;
            last = self.sample(last);
        }
    }

    /// Records the traffic since `last` (received, reused) as one second;
    /// returns the new totals.
    pub fn sample(&self, last: (u64, u64)) -> (u64, u64) {
        let now = (
            self.received.load(Ordering::Relaxed),
            self.reused.load(Ordering::Relaxed),
        );
        let second = Second {
            received: now.0.saturating_sub(last.0),
            reused: now.1.saturating_sub(last.1),
        };
        self.speed.store(second.received, Ordering::Relaxed);
        lock(&self.history).push(second);
        now
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LiveStatus {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("status serialises")
    }
}

impl StatusSnapshot {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("status serialises")
    }

    /// Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP replica_{name} {help}\n# TYPE replica_{name} {kind}\nreplica_{name} {v}\n"
            ));
        };
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            self.uptime_seconds,
        );
        metric(
            "connected_clients",
            "gauge",
            "Open client connections.",
            self.connected_clients,
        );
        metric(
            "sessions_total",
            "counter",
            "Sessions served.",
            self.sessions,
        );
        metric("passes_total", "counter", "Passes completed.", self.passes);
        metric(
            "operations_total",
            "counter",
            "Operations carried out on the replica.",
            self.operations,
        );
        metric(
            "replica_files",
            "gauge",
            "Regular files in the replica after the last full pass.",
            self.replica_files,
        );
        metric(
            "replica_bytes",
            "gauge",
            "Bytes in the replica's files after the last full pass.",
            self.replica_bytes,
        );
        metric(
            "received_bytes_total",
            "counter",
            "Content bytes received from clients.",
            self.bytes_received,
        );
        metric(
            "dedup_saved_bytes_total",
            "counter",
            "Content bytes rebuilt from the replica instead of received.",
            self.bytes_saved_by_dedup,
        );
        metric(
            "transfer_bytes_per_second",
            "gauge",
            "Content bytes received over the last second.",
            self.transfer_bytes_per_second,
        );
        if let Some(f) = self.free_bytes {
            metric(
                "free_bytes",
                "gauge",
                "Free space on the destination's filesystem.",
                f,
            );
        }
        out
    }

    /// A few lines for a person.
    pub fn to_human(&self) -> String {
        use crate::report::human_bytes;
        format!(
            "destination:      {}\nuptime:           {} s\nclients:          {} connected, {} sessions, {} passes\nreplica:          {} files, {}\nlast change:      {}\nreceived:         {}\nsaved by dedup:   {}\ntransfer speed:   {}/s\nfree space:       {}\n",
            self.dest,
            self.uptime_seconds,
            self.connected_clients,
            self.sessions,
            self.passes,
            self.replica_files,
            human_bytes(self.replica_bytes),
            self.last_change.as_deref().unwrap_or("none yet"),
            human_bytes(self.bytes_received),
            human_bytes(self.bytes_saved_by_dedup),
            human_bytes(self.transfer_bytes_per_second),
            self.free_bytes.map(human_bytes).unwrap_or_else(|| "unknown".into()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_carry_the_counts() {
        let s = ServerStats::default();
        s.note_received(100);
        s.note_reused(50);
        s.note_op();
        s.note_pass(&PassStats::default(), Some((3, 300)));
        let snap = s.snapshot();
        assert_eq!(
            (
                snap.bytes_received,
                snap.bytes_saved_by_dedup,
                snap.replica_files,
                snap.operations
            ),
            (100, 50, 3, 1)
        );
        let json: serde_json::Value = serde_json::from_str(&snap.to_json()).unwrap();
        assert_eq!(json["replica_bytes"], 300);
        assert!(snap
            .to_prometheus()
            .contains("replica_received_bytes_total 100\n"));
        assert!(snap.to_human().contains("3 files"));
    }

    #[test]
    fn the_live_status_holds_seconds_and_recent_operations() {
        use crate::protocol::{Op, Reason};
        let s = ServerStats::default();
        s.note_received(1000);
        let last = s.sample((0, 0));
        s.note_reused(10);
        s.sample(last);
        let r = OpReport {
            op: Op::Created,
            path: "d/a.txt".into(),
            from: None,
            reason: Reason::New,
            received: 1000,
            reused: 0,
            detail: None,
        };
        s.note_report(&r);
        let live = s.live();
        assert_eq!(
            live.throughput,
            vec![
                Second {
                    received: 1000,
                    reused: 0
                },
                Second {
                    received: 0,
                    reused: 10
                }
            ]
        );
        assert_eq!(live.recent.len(), 1);
        assert_eq!(
            (live.recent[0].op.as_str(), live.recent[0].path.as_str()),
            ("created", "d/a.txt")
        );
        assert_eq!(live.snapshot.operations, 1);
        let json: serde_json::Value = serde_json::from_str(&live.to_json()).unwrap();
        assert_eq!(
            json["bytes_received"], 1000,
            "the snapshot's fields at the top level"
        );
        assert_eq!(json["throughput"][0]["received"], 1000);
    }
}
