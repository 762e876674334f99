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

mod links;

use crate::error::Result;
use crate::syncer::Syncer;
use crate::tree::{path_to_key, scan_scoped, ScanOptions, Scopes};
use links::{LinkGroups, Widen};
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

enum Raw {
    Event(notify::Event),
    Rescan(String),
}

/// The set of watched directories.
struct Watches {
    watcher: notify::RecommendedWatcher,
    /// Sorted, so a folder's subtree is one range (paths order by component).
    dirs: BTreeSet<PathBuf>,
    failed: bool,
    last_logged: usize,
}

impl Watches {
    fn add(&mut self, dir: &Path, reporter: &crate::report::Reporter) {
        if self.dirs.contains(dir) {
            return;
        }
        match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.dirs.insert(dir.to_path_buf());
            }
            Err(e) => {
                if !self.failed {
                    let hint = if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                        "; the inotify watch limit is reached: raise it with `sudo sysctl fs.inotify.max_user_watches=1048576` (and in /etc/sysctl.conf); meanwhile the tree is rescanned periodically"
                    } else {
                        "; that part is rescanned periodically instead"
                    };
                    reporter.error(&format!("cannot watch {}: {e}{hint}", dir.display()));
                }
                self.failed = true;
            }
        }
    }

    /// Drops the watches of `path` and of every folder below it.
    fn remove_under(&mut self, path: &Path) {
        let gone: Vec<PathBuf> = self
            .dirs
            .range::<Path, _>((std::ops::Bound::Included(path), std::ops::Bound::Unbounded))
            .take_while(|d| d.starts_with(path))
            .cloned()
            .collect();
        for d in gone {
            let _ = self.watcher.unwatch(&d);
            self.dirs.remove(&d);
        }
    }

    /// Watches every directory below `dir` (inclusive) that the filter keeps.
    fn add_tree(
        &mut self,
        root: &Path,
        dir: &Path,
        opts: &ScanOptions,
        reporter: &crate::report::Reporter,
    ) {
        if dir != root {
            let rel = dir.strip_prefix(root).ok().and_then(path_to_key);
            if rel.is_none_or(|r| opts.filter.is_excluded(&r, true))
                || opts.skip.iter().any(|s| dir.starts_with(s))
            {
                return;
            }
        }
        self.add(dir, reporter);
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for item in rd.flatten() {
            let p = item.path();
            let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir || opts.skip.contains(&p) {
                continue;
            }
            let rel = p.strip_prefix(root).ok().and_then(path_to_key);
            if rel
                .as_deref()
                .is_some_and(|r| opts.filter.is_excluded(r, true))
            {
                continue;
            }
            self.add_tree(root, &p, opts, reporter);
        }
    }

    /// A folder that moved away or was deleted has lost its watch, and so
    /// have the folders below it (the watcher drops them): forget them now,
    /// so that a folder made again under the same name is watched anew
    /// (it was not: the set still listed the name, and files created in
    /// the new folder were missed).
    fn forget_moved_away(&mut self, ev: &notify::Event) {
        use notify::event::RenameMode;
        let gone: &[PathBuf] = match ev.kind {
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                &ev.paths
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                &ev.paths[..1.min(ev.paths.len())]
            }
            EventKind::Modify(ModifyKind::Name(_)) => {
                for p in &ev.paths {
                    if !p.is_dir() {
                        self.remove_under(p);
                    }
                }
                return;
            }
            _ => return,
        };
        for p in gone {
            self.remove_under(p);
        }
    }

    /// Drops every watch (the root was replaced: they watch the old one).
    fn clear(&mut self) {
        for d in std::mem::take(&mut self.dirs) {
            let _ = self.watcher.unwatch(&d);
        }
    }

    fn log_count(&mut self, reporter: &crate::report::Reporter) {
        if self.dirs.len() != self.last_logged {
            self.last_logged = self.dirs.len();
            reporter.info(&format!("watching {} directories", self.dirs.len()));
        }
    }
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
    let watcher = {
        let tx = tx.clone();
        let overflow = overflow.clone();
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let raw = match res {
                Ok(ev) if ev.need_rescan() => Raw::Rescan("the watcher asked for a rescan".into()),
                Ok(ev) => Raw::Event(ev),
                Err(e) => Raw::Rescan(format!("watcher error: {e}")),
            };
            if let Err(TrySendError::Full(_)) = tx.try_send(raw) {
                overflow.store(true, Ordering::Relaxed);
            }
        })
        .map_err(|e| crate::Error::Usage(format!("cannot start the file watcher: {e}")))?
    };
    let mut watches = Watches {
        watcher,
        dirs: BTreeSet::new(),
        failed: false,
        last_logged: 0,
    };
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
            worker(s, qrx, scan_opts, links, stop)
        }));
    }
    for (q, _) in &queues {
        let _ = q.send(Batch::Full("initial pass".into()));
    }

    let mut pending: HashSet<PathBuf> = HashSet::new();
    let mut writing: HashMap<PathBuf, Instant> = HashMap::new();
    // Entries of `writing` that are only suspected (files found fresh in a new directory).
    let mut soft: HashSet<PathBuf> = HashSet::new();
    let mut rescan: Option<String> = None;
    let mut first_event: Option<Instant> = None;
    let mut last_event = Instant::now();
    let mut last_full = Instant::now();
    let tick = Duration::from_millis(10);
    let mut root_state = RootState::new(&root);
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(tick) {
            Ok(Raw::Event(ev)) => {
                watches.forget_moved_away(&ev);
                note_event(&ev, &mut pending, &mut writing, &mut soft);
                first_event.get_or_insert_with(Instant::now);
                last_event = Instant::now();
            }
            Ok(Raw::Rescan(why)) => {
                rescan = Some(why);
                first_event.get_or_insert_with(Instant::now);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if overflow.swap(false, Ordering::Relaxed) {
            rescan = Some("too many events at once (event queue overflow)".into());
            first_event.get_or_insert_with(Instant::now);
        }
        if watches.failed && last_full.elapsed() >= Duration::from_secs(10) {
            rescan.get_or_insert_with(|| "some directories could not be watched".into());
            first_event.get_or_insert_with(Instant::now);
        }
        if last_full.elapsed() >= opts.rescan_every {
            rescan.get_or_insert_with(|| "periodic safety rescan".into());
            first_event.get_or_insert_with(Instant::now);
        }
        match root_state.check(&root, watches.failed || watches.dirs.contains(&root)) {
            RootChange::Same => {}
            RootChange::Gone => {
                reporter.error(&format!(
                    "source {} is gone (unmounted, moved or deleted?): replication paused, the replica is left as it is",
                    root.display()
                ));
            }
            RootChange::Back(why) => {
                reporter.info(&format!("source {}: {why}; rescanning", root.display()));
                watches.clear();
                watches.add_tree(&root, &root, &scan_opts, &reporter);
                rescan = Some(why.to_string());
                first_event = Some(Instant::now());
            }
        }
        if root_state.gone {
            // Nothing to send until the root is back (its return rescans).
            pending.clear();
            writing.clear();
            first_event = None;
            continue;
        }
        let Some(t0) = first_event else { continue };
        let quiet = last_event.elapsed() >= opts.quiet;
        if !(quiet || t0.elapsed() >= opts.max_delay) {
            continue;
        }
        // Files still open for writing wait for their close (or max_hold).
        writing.retain(|_, since| since.elapsed() < opts.max_hold);
        soft.retain(|p| writing.contains_key(p));
        {
            let mut h = hold.lock().unwrap_or_else(|e| e.into_inner());
            h.clear();
            h.extend(
                writing
                    .keys()
                    .filter_map(|p| p.strip_prefix(&root).ok().and_then(path_to_key)),
            );
        }
        let batch = if let Some(why) = rescan.take() {
            reporter.info(&format!("rescanning the whole tree: {why}"));
            // The rescan covers every change except the files it holds
            // back: those stay pending until their hold ends.
            pending.retain(|p| writing.contains_key(p));
            last_full = Instant::now();
            watches.failed = false;
            watches.add_tree(&root, &root, &scan_opts, &reporter);
            let gone: Vec<PathBuf> = watches
                .dirs
                .iter()
                .filter(|d| !d.is_dir())
                .cloned()
                .collect();
            for d in gone {
                watches.remove_under(&d);
            }
            Batch::Full(why)
        } else {
            let ready: Vec<PathBuf> = pending
                .iter()
                .filter(|p| !writing.contains_key(*p))
                .cloned()
                .collect();
            if ready.is_empty() {
                first_event = if pending.is_empty() {
                    None
                } else {
                    Some(Instant::now())
                };
                continue;
            }
            let mut scopes = Scopes::default();
            // New directories are watched first and the batch goes out one round
            // later, so files still being written inside them are seen as such
            // (their first writes happened before the watch existed). The whole
            // batch waits, so a rename's two halves stay together.
            let mut fresh = false;
            for p in &ready {
                if !watches.dirs.contains(p)
                    && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
                {
                    watches.add_tree(&root, p, &scan_opts, &reporter);
                    if watches.dirs.contains(p) {
                        fresh = true;
                        // Files modified just now may still be open: hold them
                        // briefly; a write event (now watched) makes it a real hold.
                        for f in recently_modified(p, Duration::from_millis(500)) {
                            let backdated =
                                Instant::now().checked_sub(opts.max_hold.saturating_sub(SOFT_HOLD));
                            writing
                                .entry(f.clone())
                                .or_insert(backdated.unwrap_or_else(Instant::now));
                            soft.insert(f.clone());
                            pending.insert(f);
                        }
                    }
                }
            }
            if fresh {
                first_event = Some(Instant::now());
                last_event = Instant::now();
                continue;
            }
            let mut unknown_links = false;
            for p in &ready {
                pending.remove(p);
                let meta = std::fs::symlink_metadata(p).ok();
                let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
                if is_dir {
                    watches.add_tree(&root, p, &scan_opts, &reporter);
                } else {
                    watches.remove_under(p);
                }
                if scan_opts.skip.iter().any(|s| p.starts_with(s)) {
                    continue;
                }
                let Some(rel) = p.strip_prefix(&root).ok().and_then(path_to_key) else {
                    continue;
                };
                match meta.as_ref().and_then(file_links) {
                    Some((id, n)) if n > 1 => {
                        let mut groups = links.lock().unwrap_or_else(|e| e.into_inner());
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
                rescan =
                    Some("a hard-linked file changed and its other names are not known yet".into());
                first_event = Some(t0);
                continue;
            }
            Batch::Scoped(scopes)
        };
        watches.log_count(&reporter);
        first_event = if pending.is_empty() {
            None
        } else {
            Some(Instant::now())
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

/// The source root's identity: device and inode where the platform has
/// them; `None` when it is missing or not a directory.
fn root_id(root: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(root).ok().filter(|m| m.is_dir())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        Some((0, 0))
    }
}

/// Watches the source root itself: gone (an unmount, a deleted or moved
/// folder) pauses replication; back, or replaced by another directory (a
/// remount), re-watches the tree and rescans it.
struct RootState {
    id: Option<(u64, u64)>,
    gone: bool,
    last_check: Instant,
}

enum RootChange {
    Same,
    Gone,
    Back(&'static str),
}

impl RootState {
    /// How often the root is looked at (one stat).
    const EVERY: Duration = Duration::from_millis(250);

    fn new(root: &Path) -> Self {
        RootState {
            id: root_id(root),
            gone: false,
            last_check: Instant::now(),
        }
    }

    /// `watched`: whether the root still has its watch (it loses it when
    /// it is moved away, even if it comes back before it is looked at).
    fn check(&mut self, root: &Path, watched: bool) -> RootChange {
        if self.last_check.elapsed() < Self::EVERY {
            return RootChange::Same;
        }
        self.last_check = Instant::now();
        match root_id(root) {
            None if !self.gone => {
                self.gone = true;
                RootChange::Gone
            }
            None => RootChange::Same,
            Some(id) if self.gone => {
                self.gone = false;
                self.id = Some(id);
                RootChange::Back("it is back")
            }
            Some(id) if Some(id) != self.id => {
                self.id = Some(id);
                RootChange::Back("it was replaced by another directory (remounted?)")
            }
            Some(_) if !watched => RootChange::Back("it is back"),
            Some(_) => RootChange::Same,
        }
    }
}

/// A regular file's id (device, inode) and link count (where the platform
/// has them).
fn file_links(m: &std::fs::Metadata) -> Option<((u64, u64), u64)> {
    if !m.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(((m.dev(), m.ino()), m.nlink()))
    }
    #[cfg(not(unix))]
    None
}

/// Records the paths an event touches and tracks files open for writing.
fn note_event(
    ev: &notify::Event,
    pending: &mut HashSet<PathBuf>,
    writing: &mut HashMap<PathBuf, Instant>,
    soft: &mut HashSet<PathBuf>,
) {
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            for p in &ev.paths {
                writing.remove(p);
            }
        }
        EventKind::Access(_) => return,
        EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_))
            if cfg!(target_os = "linux") =>
        {
            for p in &ev.paths {
                // Symlinks and hard links are created whole: nothing to wait for.
                if opened_for_writing(p) {
                    if soft.remove(p) {
                        writing.insert(p.clone(), Instant::now());
                    } else {
                        writing.entry(p.clone()).or_insert_with(Instant::now);
                    }
                }
            }
        }
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => {
            for p in &ev.paths {
                writing.remove(p);
            }
        }
        _ => {}
    }
    pending.extend(ev.paths.iter().cloned());
}

/// Whether a file reported as created or written may still be open for
/// writing (a regular file with a single name; links are created whole).
fn opened_for_writing(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_file() => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                m.nlink() <= 1
            }
            #[cfg(not(unix))]
            true
        }
        _ => false,
    }
}

/// How long a file suspected of being written (fresh in a new directory,
/// no event seen yet) is held back.
const SOFT_HOLD: Duration = Duration::from_millis(300);

/// Regular files below `dir` modified within `window`.
fn recently_modified(dir: &Path, window: Duration) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let now = std::time::SystemTime::now();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for item in rd.flatten() {
            let Ok(m) = item.metadata() else { continue };
            if m.is_dir() {
                stack.push(item.path());
            } else if m.is_file()
                && m.modified()
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() < window)
            {
                out.push(item.path());
            }
        }
    }
    out
}

/// One target's loop: merge queued batches, run a pass, retry on failure.
/// Transient failures (unreachable, reset, busy) are retried with backoff;
/// a permanent one (refused for good, a usage mistake) is reported, noted
/// in the target's [`crate::syncer::TargetHealth`], and stops the whole watch.
fn worker(
    mut s: Syncer,
    rx: mpsc::Receiver<Batch>,
    scan_opts: ScanOptions,
    links: Arc<Mutex<LinkGroups>>,
    stop: Arc<AtomicBool>,
) {
    let learn = |scan: &crate::tree::SourceScan, full: bool| {
        links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .learn(scan, full)
    };
    let waiting = s.preempt.clone().unwrap_or_default();
    let health = s.health.clone();
    let mut backlog: Option<Batch> = None;
    let mut backoff = Duration::from_millis(250);
    // A pass stopped by a safety rail (an empty source, --max-delete):
    // said once, and again when replication resumes.
    let mut paused = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let next = if backlog.is_some() {
            rx.try_recv().ok()
        } else {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(b) => Some(b),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        // Everything queued so far goes into this pass; what arrives during
        // it sets the flag again.
        waiting.store(false, Ordering::Relaxed);
        if let Some(b) = next {
            backlog = Some(match backlog.take() {
                Some(prev) => prev.merge(b),
                None => b,
            });
            while let Ok(more) = rx.try_recv() {
                backlog = Some(backlog.take().unwrap().merge(more));
            }
        }
        let Some(batch) = backlog.take() else {
            continue;
        };
        let result = match &batch {
            Batch::Full(_) => s.scan().and_then(|scan| {
                learn(&scan, true);
                s.pass_with(&scan, None)
            }),
            Batch::Scoped(scopes) => match scan_scoped(&s.src, scopes, &scan_opts) {
                Ok(scan) => {
                    learn(&scan, false);
                    s.pass_with(&scan, None)
                }
                Err(e) => Err(crate::Error::source(&s.src, &e)),
            },
        };
        match result {
            Ok(report) => {
                if health.recovered() {
                    s.reporter
                        .info(&format!("{}: reachable again", s.target().describe()));
                }
                backoff = Duration::from_millis(250);
                let summary = &report.summary;
                if summary.stats.ops > 0 || summary.failed() || matches!(batch, Batch::Full(_)) {
                    s.reporter.summary(&report);
                }
                match (&summary.stats.stopped, paused) {
                    (Some(why), false) => {
                        s.reporter.error(&format!(
                            "replication to {} paused: {why}",
                            s.target().describe()
                        ));
                        paused = true;
                    }
                    (None, true) => {
                        s.reporter
                            .info(&format!("replication to {} resumed", s.target().describe()));
                        paused = false;
                    }
                    _ => {}
                }
                // Large files that stepped aside for newer changes go with
                // them, after them (the server resumes what it has).
                if !summary.preempted.is_empty() {
                    let mut scopes = Scopes::default();
                    for key in &summary.preempted {
                        scopes.add_changed(key, false);
                    }
                    let again = Batch::Scoped(scopes);
                    backlog = Some(match backlog.take() {
                        Some(prev) => prev.merge(again),
                        None => again,
                    });
                }
            }
            Err(_) if stop.load(Ordering::Relaxed) => {
                // Stopped by a signal: nothing will resume what is in flight.
                health.interrupt();
                s.abandon();
                break;
            }
            Err(e @ crate::Error::Source { .. }) => {
                // The source root is gone: said once; a full pass is tried
                // again every second (quietly), or at once when the watcher
                // sends more (it rescans when the root is back).
                if !paused {
                    s.reporter.error(&format!(
                        "replication to {} paused: {e}",
                        s.target().describe()
                    ));
                    paused = true;
                }
                let mut again = Batch::Full("the source is back".into());
                let until = Instant::now() + Duration::from_secs(1);
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    if let Ok(b) = rx.try_recv() {
                        again = again.merge(b);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                backlog = Some(again);
            }
            Err(e) if e.is_permanent() => {
                let msg = format!("{}: {e}", s.target().describe());
                s.reporter.error(&format!("{msg}; not retrying"));
                health.fail_for_good(msg);
                stop.store(true, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                s.reporter.error(&format!(
                    "{}: pass failed: {e}; retrying in {:.1} s",
                    s.target().describe(),
                    backoff.as_secs_f64()
                ));
                health.fail_for_now();
                // After a failure the replica's state is unknown: the next pass is a full one.
                backlog = Some(Batch::Full("reconnected".into()));
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    s.close();
}
