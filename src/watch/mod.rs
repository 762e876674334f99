//! Continuous sync: file-system events -> batches of changed paths ->
//! scoped passes, one worker per target.
//!
//! - The watcher ([`notify`]) watches each directory of the source on its
//!   own (non-recursive), so the set of watches is ours: a new directory
//!   gains a watch, a removed one loses it, and the count is logged.
//! - Events go through a bounded channel; when it overflows, when the
//!   watcher asks for a rescan, or when a watch cannot be added (inotify
//!   limit), the next batch is a full rescan. Overflow never drops a change.
//! - The batcher waits for a short quiet period (or a maximum delay), turns
//!   the paths into [`Scopes`] and hands the batch to every target's worker.
//!   Files still open for writing (Linux reports closes) are held back until
//!   closed, so a half-written file is never sent.
//! - A worker merges the batches queued for it and runs one pass; if its
//!   server is unreachable it keeps merging, retries with backoff, and on
//!   reconnection runs a full pass. One dead target never blocks another.

mod batcher;
mod events;
mod links;
mod root;
mod watches;
mod worker;

use crate::error::Result;
use crate::syncer::Syncer;
use crate::tree::{ScanOptions, Scopes};
use batcher::Batcher;
use links::LinkGroups;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use watches::Watches;

/// Timing of the watch loop.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time after the last event before a batch is sent.
    pub quiet: Duration,
    /// Longest a change waits while events keep coming.
    pub max_delay: Duration,
    /// Full rescan period (catches what no watcher reports).
    pub rescan_every: Duration,
    /// Longest a file still open for writing is held back.
    pub max_hold: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            quiet: Duration::from_millis(20),
            max_delay: Duration::from_millis(300),
            rescan_every: Duration::from_secs(300),
            max_hold: Duration::from_secs(10),
        }
    }
}

/// What a worker is asked to do.
#[derive(Debug, Clone)]
enum Batch {
    Scoped(Scopes),
    Full(String),
}

impl Batch {
    fn merge(self, other: Batch) -> Batch {
        match (self, other) {
            (Batch::Full(why), _) | (_, Batch::Full(why)) => Batch::Full(why),
            (Batch::Scoped(mut a), Batch::Scoped(b)) => {
                a.merge(b);
                Batch::Scoped(a)
            }
        }
    }
}

/// What the watcher sends the batcher.
enum Raw {
    Event(notify::Event),
    Rescan(String),
}

/// Runs until `stop` is set: an initial full pass per target, then passes
/// for every batch of changes.
pub fn watch(syncers: Vec<Syncer>, opts: WatchOptions, stop: Arc<AtomicBool>) -> Result<()> {
    let first = syncers.first().expect("at least one target");
    let root = first.src.clone();
    let scan_opts = ScanOptions {
        filter: first.filter().clone(),
        skip: syncers.iter().flat_map(|s| s.skip().to_vec()).collect(),
        counter: None,
    };
    let reporter = first.reporter.clone();
    let hold: Arc<Mutex<HashSet<String>>> = Arc::default();
    let links: Arc<Mutex<LinkGroups>> = Arc::default();

    let (tx, rx) = mpsc::sync_channel::<Raw>(65_536);
    let overflow = Arc::new(AtomicBool::new(false));
    let mut watches = Watches::start(tx, overflow.clone())?;
    watches.add_tree(&root, &root, &scan_opts, &reporter);
    watches.log_count(&reporter);

    let mut workers = Vec::new();
    // Each target's queue, and a flag telling its pass that newer changes wait.
    let mut queues: Vec<(mpsc::Sender<Batch>, Arc<AtomicBool>)> = Vec::new();
    for mut s in syncers {
        s.hold = Some(hold.clone());
        let waiting = Arc::new(AtomicBool::new(false));
        s.preempt = Some(waiting.clone());
        let (qtx, qrx) = mpsc::channel::<Batch>();
        queues.push((qtx, waiting));
        let stop = stop.clone();
        let scan_opts = scan_opts.clone();
        let links = links.clone();
        workers.push(std::thread::spawn(move || {
            worker::worker(s, qrx, scan_opts, links, stop)
        }));
    }
    for (q, _) in &queues {
        let _ = q.send(Batch::Full("initial pass".into()));
    }

    let mut batcher = Batcher::new(
        root, opts, scan_opts, reporter, watches, overflow, hold, links,
    );
    let tick = Duration::from_millis(10);
    while !stop.load(Ordering::Relaxed) {
        let raw = match rx.recv_timeout(tick) {
            Ok(raw) => Some(raw),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let Some(batch) = batcher.step(raw) else {
            continue;
        };
        for (q, waiting) in &queues {
            let _ = q.send(batch.clone());
            waiting.store(true, Ordering::Relaxed);
        }
    }
    drop(queues);
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}
