//! The set of watched directories: one non-recursive watch per source
//! directory, so the set is ours (a new directory gains a watch, a removed
//! one loses it), and the events they send into a bounded queue.

use super::Raw;
use crate::report::Reporter;
use crate::tree::{path_to_key, ScanOptions};
use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

/// The set of watched directories.
pub(super) struct Watches {
    watcher: notify::RecommendedWatcher,
    /// Sorted, so a folder's subtree is one range (paths order by component).
    pub dirs: BTreeSet<PathBuf>,
    /// A watch could not be added: the tree is rescanned periodically.
    pub failed: bool,
    last_logged: usize,
}

impl Watches {
    /// Starts the watcher: its events go to `tx`; when the queue is full
    /// `overflow` is set instead (the next batch is a full rescan).
    pub fn start(tx: SyncSender<Raw>, overflow: Arc<AtomicBool>) -> crate::Result<Watches> {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let raw = match res {
                Ok(ev) if ev.need_rescan() => Raw::Rescan("the watcher asked for a rescan".into()),
                Ok(ev) => Raw::Event(ev),
                Err(e) => Raw::Rescan(format!("watcher error: {e}")),
            };
            if let Err(TrySendError::Full(_)) = tx.try_send(raw) {
                overflow.store(true, Ordering::Relaxed);
            }
        })
        .map_err(|e| crate::Error::Usage(format!("cannot start the file watcher: {e}")))?;
        Ok(Watches {
            watcher,
            dirs: BTreeSet::new(),
            failed: false,
            last_logged: 0,
        })
    }

    fn add(&mut self, dir: &Path, reporter: &Reporter) {
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
    pub fn remove_under(&mut self, path: &Path) {
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
    pub fn add_tree(&mut self, root: &Path, dir: &Path, opts: &ScanOptions, reporter: &Reporter) {
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
    pub fn forget_moved_away(&mut self, ev: &notify::Event) {
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
    pub fn clear(&mut self) {
        for d in std::mem::take(&mut self.dirs) {
            let _ = self.watcher.unwatch(&d);
        }
    }

    pub fn log_count(&mut self, reporter: &Reporter) {
        if self.dirs.len() != self.last_logged {
            self.last_logged = self.dirs.len();
            reporter.info(&format!("watching {} directories", self.dirs.len()));
        }
    }
}
