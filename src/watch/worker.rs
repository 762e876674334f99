//! One target's loop: merge the batches queued for it, run a pass, retry
//! on failure. Transient failures (unreachable, reset, busy) are retried
//! with backoff; a permanent one (refused for good, a usage mistake) is
//! reported, noted in the target's [`crate::syncer::TargetHealth`], and
//! stops the whole watch. One dead target never blocks another.

use super::links::LinkGroups;
use super::Batch;
use crate::report::PassReport;
use crate::syncer::Syncer;
use crate::tree::{scan_scoped, ScanOptions, Scopes};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// First wait after a failed pass; doubled on each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct Worker {
    s: Syncer,
    rx: mpsc::Receiver<Batch>,
    scan_opts: ScanOptions,
    links: Arc<Mutex<LinkGroups>>,
    stop: Arc<AtomicBool>,
    /// What the next pass covers.
    backlog: Option<Batch>,
    backoff: Duration,
    /// A pass stopped by a safety rail (an empty source, --max-delete), or
    /// a source that is gone: said once, and again when replication resumes.
    paused: bool,
}

fn lock(l: &Mutex<LinkGroups>) -> std::sync::MutexGuard<'_, LinkGroups> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one target until `stop` is set or the batches end.
pub(super) fn worker(
    s: Syncer,
    rx: mpsc::Receiver<Batch>,
    scan_opts: ScanOptions,
    links: Arc<Mutex<LinkGroups>>,
    stop: Arc<AtomicBool>,
) {
    let mut w = Worker {
        s,
        rx,
        scan_opts,
        links,
        stop,
        backlog: None,
        backoff: FIRST_BACKOFF,
        paused: false,
    };
    w.run();
    w.s.close();
}

impl Worker {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn push(&mut self, b: Batch) {
        self.backlog = Some(match self.backlog.take() {
            Some(prev) => prev.merge(b),
            None => b,
        });
    }

    fn run(&mut self) {
        let waiting = self.s.preempt.clone().unwrap_or_default();
        while !self.stopping() {
            let next = if self.backlog.is_some() {
                self.rx.try_recv().ok()
            } else {
                match self.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(b) => Some(b),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            // Everything queued so far goes into this pass; what arrives
            // during it sets the flag again.
            waiting.store(false, Ordering::Relaxed);
            if let Some(b) = next {
                self.push(b);
                while let Ok(more) = self.rx.try_recv() {
                    self.push(more);
                }
            }
            let Some(batch) = self.backlog.take() else {
                continue;
            };
            match self.pass(&batch) {
                Ok(report) => self.after_pass(&batch, &report),
                Err(_) if self.stopping() => {
                    // Stopped by a signal: nothing will resume what is in flight.
                    self.s.health.interrupt();
                    self.s.abandon();
                    break;
                }
                Err(e @ crate::Error::Source { .. }) => self.source_gone(&e),
                Err(e) if e.is_permanent() => {
                    let msg = format!("{}: {e}", self.s.target().describe());
                    self.s.reporter.error(&format!("{msg}; not retrying"));
                    self.s.health.fail_for_good(msg);
                    self.stop.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => self.retry_later(&e),
            }
        }
    }

    /// Scans what the batch covers and runs one pass. A full pass goes
    /// as pages (the tree is never held whole); the hard-link groups are
    /// learned from each page as it is read and replace what was known once
    /// the pass is over (a failed pass only adds what its pages found).
    fn pass(&mut self, batch: &Batch) -> crate::Result<PassReport> {
        let s = &mut self.s;
        match batch {
            Batch::Full(_) => {
                let fresh: Arc<Mutex<LinkGroups>> = Arc::default();
                let tap = fresh.clone();
                s.page_tap = Some(Arc::new(move |page: &crate::tree::SourceScan| {
                    lock(&tap).learn(page, false)
                }));
                let r = s.pass_paged(None, None);
                s.page_tap = None;
                let learned = std::mem::take(&mut *lock(&fresh));
                lock(&self.links).after_full_pass(learned, r.is_ok());
                r
            }
            Batch::Scoped(scopes) => match scan_scoped(&s.src, scopes, &self.scan_opts) {
                Ok(scan) => {
                    lock(&self.links).learn(&scan, false);
                    s.pass_with(&scan, None)
                }
                Err(e) => Err(crate::Error::source(&s.src, &e)),
            },
        }
    }

    fn after_pass(&mut self, batch: &Batch, report: &PassReport) {
        let s = &self.s;
        if s.health.recovered() {
            s.reporter
                .info(&format!("{}: reachable again", s.target().describe()));
        }
        self.backoff = FIRST_BACKOFF;
        let summary = &report.summary;
        if summary.stats.ops > 0 || summary.failed() || matches!(batch, Batch::Full(_)) {
            s.reporter.summary(report);
        }
        match (&summary.stats.stopped, self.paused) {
            (Some(why), false) => {
                s.reporter.error(&format!(
                    "replication to {} paused: {why}",
                    s.target().describe()
                ));
                self.paused = true;
            }
            (None, true) => {
                s.reporter
                    .info(&format!("replication to {} resumed", s.target().describe()));
                self.paused = false;
            }
            _ => {}
        }
        // Large files that stepped aside for newer changes go with them,
        // after them (the server resumes what it has).
        if !summary.preempted.is_empty() {
            let mut scopes = Scopes::default();
            for key in &summary.preempted {
                scopes.add_changed(key, false);
            }
            self.push(Batch::Scoped(scopes));
        }
    }

    /// The source root is gone: said once; a full pass is tried again
    /// every second (quietly), or at once when the watcher sends more (it
    /// rescans when the root is back).
    fn source_gone(&mut self, e: &crate::Error) {
        if !self.paused {
            self.s.reporter.error(&format!(
                "replication to {} paused: {e}",
                self.s.target().describe()
            ));
            self.paused = true;
        }
        let mut again = Batch::Full("the source is back".into());
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until && !self.stopping() {
            if let Ok(b) = self.rx.try_recv() {
                again = again.merge(b);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.backlog = Some(again);
    }

    /// A transient failure: wait (with backoff), then a full pass, since
    /// the replica's state is unknown after a failure.
    fn retry_later(&mut self, e: &crate::Error) {
        self.s.reporter.error(&format!(
            "{}: pass failed: {e}; retrying in {:.1} s",
            self.s.target().describe(),
            self.backoff.as_secs_f64()
        ));
        self.s.health.fail_for_now();
        self.backlog = Some(Batch::Full("reconnected".into()));
        let until = Instant::now() + self.backoff;
        while Instant::now() < until && !self.stopping() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
