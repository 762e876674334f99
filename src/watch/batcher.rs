//! Events -> batches. The batcher collects the paths events touch, waits
//! for a short quiet period (or a maximum delay), holds back files still
//! open for writing, and turns the rest into [`Scopes`] for the workers;
//! or into a full rescan when the watcher lost track (overflow, a rescan
//! request, a directory it could not watch, the periodic safety rescan, a
//! hard-linked file whose other names are unknown, the root coming back).

use super::events::{file_links, note_event, recently_modified, SOFT_HOLD};
use super::links::{LinkGroups, Widen};
use super::root::{RootChange, RootState};
use super::watches::Watches;
use super::{Batch, Raw, WatchOptions};
use crate::report::Reporter;
use crate::tree::{path_to_key, ScanOptions, Scopes};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) struct Batcher {
    pub root: PathBuf,
    pub opts: WatchOptions,
    pub scan_opts: ScanOptions,
    pub reporter: Arc<Reporter>,
    pub watches: Watches,
    /// Set by the watcher when its queue overflowed.
    pub overflow: Arc<AtomicBool>,
    /// Source keys the passes must not send yet (open for writing).
    pub hold: Arc<Mutex<HashSet<String>>>,
    pub links: Arc<Mutex<LinkGroups>>,
    /// Paths touched since the last batch.
    pending: HashSet<PathBuf>,
    /// Files open for writing, since when.
    writing: HashMap<PathBuf, Instant>,
    /// Entries of `writing` that are only suspected (files found fresh in
    /// a new directory).
    soft: HashSet<PathBuf>,
    /// Why the next batch is a full rescan, if it is.
    rescan: Option<String>,
    first_event: Option<Instant>,
    last_event: Instant,
    last_full: Instant,
    root_state: RootState,
}

impl Batcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: PathBuf,
        opts: WatchOptions,
        scan_opts: ScanOptions,
        reporter: Arc<Reporter>,
        watches: Watches,
        overflow: Arc<AtomicBool>,
        hold: Arc<Mutex<HashSet<String>>>,
        links: Arc<Mutex<LinkGroups>>,
    ) -> Batcher {
        let root_state = RootState::new(&root);
        Batcher {
            root,
            opts,
            scan_opts,
            reporter,
            watches,
            overflow,
            hold,
            links,
            pending: HashSet::new(),
            writing: HashMap::new(),
            soft: HashSet::new(),
            rescan: None,
            first_event: None,
            last_event: Instant::now(),
            last_full: Instant::now(),
            root_state,
        }
    }

    /// Takes in what the watcher sent (if anything), and returns the batch
    /// to hand to the workers when one is due.
    pub fn step(&mut self, raw: Option<Raw>) -> Option<Batch> {
        match raw {
            Some(Raw::Event(ev)) => {
                self.watches.forget_moved_away(&ev);
                note_event(&ev, &mut self.pending, &mut self.writing, &mut self.soft);
                self.first_event.get_or_insert_with(Instant::now);
                self.last_event = Instant::now();
            }
            Some(Raw::Rescan(why)) => self.full_rescan(why),
            None => {}
        }
        self.check_rescan_triggers();
        self.check_root();
        if self.root_state.gone {
            // Nothing to send until the root is back (its return rescans).
            self.pending.clear();
            self.writing.clear();
            self.first_event = None;
            return None;
        }
        let t0 = self.first_event?;
        let quiet = self.last_event.elapsed() >= self.opts.quiet;
        if !(quiet || t0.elapsed() >= self.opts.max_delay) {
            return None;
        }
        self.update_holds();
        let batch = match self.rescan.take() {
            Some(why) => self.full_batch(why),
            None => self.scoped_batch(t0)?,
        };
        self.watches.log_count(&self.reporter);
        self.first_event = if self.pending.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        Some(batch)
    }

    /// Asks for a full rescan (the latest reason is the one said).
    fn full_rescan(&mut self, why: String) {
        self.rescan = Some(why);
        self.first_event.get_or_insert_with(Instant::now);
    }

    fn check_rescan_triggers(&mut self) {
        if self.overflow.swap(false, Ordering::Relaxed) {
            self.full_rescan("too many events at once (event queue overflow)".into());
        }
        let since_full = self.last_full.elapsed();
        let why = if self.watches.failed && since_full >= Duration::from_secs(10) {
            "some directories could not be watched"
        } else if since_full >= self.opts.rescan_every {
            "periodic safety rescan"
        } else {
            return;
        };
        self.rescan.get_or_insert_with(|| why.into());
        self.first_event.get_or_insert_with(Instant::now);
    }

    fn check_root(&mut self) {
        let watched = self.watches.failed || self.watches.dirs.contains(&self.root);
        match self.root_state.check(&self.root, watched) {
            RootChange::Same => {}
            RootChange::Gone => {
                self.reporter.error(&format!(
                    "source {} is gone (unmounted, moved or deleted?): replication paused, the replica is left as it is",
                    self.root.display()
                ));
            }
            RootChange::Back(why) => {
                self.reporter.info(&format!(
                    "source {}: {why}; rescanning",
                    self.root.display()
                ));
                self.watches.clear();
                self.watches
                    .add_tree(&self.root, &self.root, &self.scan_opts, &self.reporter);
                self.rescan = Some(why.to_string());
                self.first_event = Some(Instant::now());
            }
        }
    }

    /// Files still open for writing wait for their close (or max_hold);
    /// the passes learn which through `hold`.
    fn update_holds(&mut self) {
        let max_hold = self.opts.max_hold;
        self.writing.retain(|_, since| since.elapsed() < max_hold);
        let writing = &self.writing;
        self.soft.retain(|p| writing.contains_key(p));
        let mut h = self.hold.lock().unwrap_or_else(|e| e.into_inner());
        h.clear();
        h.extend(
            writing
                .keys()
                .filter_map(|p| p.strip_prefix(&self.root).ok().and_then(path_to_key)),
        );
    }

    fn full_batch(&mut self, why: String) -> Batch {
        self.reporter
            .info(&format!("rescanning the whole tree: {why}"));
        // The rescan covers every change except the files it holds back:
        // those stay pending until their hold ends.
        let writing = &self.writing;
        self.pending.retain(|p| writing.contains_key(p));
        self.last_full = Instant::now();
        self.watches.failed = false;
        self.watches
            .add_tree(&self.root, &self.root, &self.scan_opts, &self.reporter);
        let gone: Vec<PathBuf> = self
            .watches
            .dirs
            .iter()
            .filter(|d| !d.is_dir())
            .cloned()
            .collect();
        for d in gone {
            self.watches.remove_under(&d);
        }
        Batch::Full(why)
    }

    /// The pending paths not held back, as scopes; `None` when nothing is
    /// ready yet or the batch must wait a round.
    fn scoped_batch(&mut self, t0: Instant) -> Option<Batch> {
        let ready: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|p| !self.writing.contains_key(*p))
            .cloned()
            .collect();
        if ready.is_empty() {
            self.first_event = if self.pending.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
            return None;
        }
        if self.watch_fresh_dirs(&ready) {
            self.first_event = Some(Instant::now());
            self.last_event = Instant::now();
            return None;
        }
        let mut scopes = Scopes::default();
        let mut unknown_links = false;
        for p in &ready {
            self.pending.remove(p);
            let meta = std::fs::symlink_metadata(p).ok();
            let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
            if is_dir {
                self.watches
                    .add_tree(&self.root, p, &self.scan_opts, &self.reporter);
            } else {
                self.watches.remove_under(p);
            }
            if self.scan_opts.skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let Some(rel) = p.strip_prefix(&self.root).ok().and_then(path_to_key) else {
                continue;
            };
            match meta.as_ref().and_then(file_links) {
                Some((id, n)) if n > 1 => {
                    let mut groups = self.links.lock().unwrap_or_else(|e| e.into_inner());
                    match groups.widen(&rel, id, n) {
                        Widen::Names(names) => {
                            for name in names {
                                scopes.add_changed(&name, false);
                            }
                        }
                        Widen::Rescan => unknown_links = true,
                    }
                }
                _ => scopes.add_changed(&rel, is_dir),
            }
        }
        if unknown_links {
            self.rescan =
                Some("a hard-linked file changed and its other names are not known yet".into());
            self.first_event = Some(t0);
            return None;
        }
        Some(Batch::Scoped(scopes))
    }

    /// New directories are watched first and the batch goes out one round
    /// later, so files still being written inside them are seen as such
    /// (their first writes happened before the watch existed). The whole
    /// batch waits, so a rename's two halves stay together. True when
    /// some directory was new.
    fn watch_fresh_dirs(&mut self, ready: &[PathBuf]) -> bool {
        let mut fresh = false;
        for p in ready {
            if self.watches.dirs.contains(p)
                || !std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
            {
                continue;
            }
            self.watches
                .add_tree(&self.root, p, &self.scan_opts, &self.reporter);
            if !self.watches.dirs.contains(p) {
                continue;
            }
            fresh = true;
            // Files modified just now may still be open: hold them briefly;
            // a write event (now watched) makes it a real hold.
            for f in recently_modified(p, Duration::from_millis(500)) {
                let backdated = Instant::now()
                    .checked_sub(self.opts.max_hold.saturating_sub(SOFT_HOLD))
                    .unwrap_or_else(Instant::now);
                self.writing.entry(f.clone()).or_insert(backdated);
                self.soft.insert(f.clone());
                self.pending.insert(f);
            }
        }
        fresh
    }
}
