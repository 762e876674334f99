//! What one file-system event means: the paths it touches (pending
//! changes), and files still open for writing, held back until closed so
//! a half-written file is never sent.

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Records the paths an event touches and tracks files open for writing.
pub(super) fn note_event(
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
pub(super) const SOFT_HOLD: Duration = Duration::from_millis(300);

/// Regular files below `dir` modified within `window`.
pub(super) fn recently_modified(dir: &Path, window: Duration) -> Vec<PathBuf> {
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

/// A regular file's id (device, inode) and link count (where the platform
/// has them).
pub(super) fn file_links(m: &std::fs::Metadata) -> Option<((u64, u64), u64)> {
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
