//! Scanning a source directory into a [`Manifest`]: a parallel walk that
//! never follows symlinks, skips special files with a warning and applies the
//! exclude rules (`--exclude` globs and the root's `.replicaignore`).

use super::{Entry, Kind, Manifest, Timestamp};
use crate::error::{describe_io, FileError};
use crate::filter::Filter;
use rayon::prelude::*;
use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};

/// What the scan needs besides the root.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub filter: Filter,
    /// Absolute paths never descended into (a replica sitting inside the source).
    pub skip: Vec<PathBuf>,
    /// Counts entries as they are found (for a progress display).
    pub counter: Option<std::sync::Arc<ScanCounter>>,
}

/// Files and bytes found so far by a running scan.
#[derive(Debug, Default)]
pub struct ScanCounter {
    pub files: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

/// Facts about a source entry that stay on this machine (quick check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalStat {
    /// The filesystem holding the entry (an inode number is unique only
    /// within one).
    pub dev: u64,
    pub ino: u64,
    /// Hard links to the entry (1 for most files; 0 where unknown).
    pub links: u32,
}

/// The result of scanning a source tree.
#[derive(Debug, Default)]
pub struct SourceScan {
    pub manifest: Manifest,
    /// Parallel to `manifest.entries`.
    pub local: Vec<LocalStat>,
    /// Reported, do not fail the pass (special files skipped).
    pub warnings: Vec<FileError>,
    /// Reported, and the pass exits non-zero (unreadable entries, bad names).
    pub errors: Vec<FileError>,
}

/// A walked subtree, in pre-order, as parallel arrays. An entry's `parent`
/// is the index of its parent in `entries`, or [`WALKED`] for children of
/// the directory walked.
#[derive(Default)]
pub(super) struct SubTree {
    entries: Vec<Entry>,
    local: Vec<LocalStat>,
    /// Directories whose children could not be listed (indexes in `entries`).
    opaque: Vec<u32>,
    pub(super) unreadable: bool,
    warnings: Vec<FileError>,
    pub(super) errors: Vec<FileError>,
}

/// `parent` of the children of the directory a [`SubTree`] was walked from.
const WALKED: u32 = u32::MAX;

/// Scans `root` (which must be a directory) into a manifest.
pub fn scan_source(root: &Path, opts: &ScanOptions) -> std::io::Result<SourceScan> {
    let meta = fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let root_entry = Entry {
        parent: 0,
        name: String::new(),
        kind: Kind::Dir,
        mode: mode_of(&meta),
        mtime: mtime_of(&meta),
    };
    let sub = walk(root, "", opts);
    if sub.unreadable {
        let e = fs::read_dir(root).err();
        return Err(e.unwrap_or_else(|| std::io::Error::other("cannot list directory")));
    }
    // The walk's arrays become the manifest's (no second copy of a
    // million entries): shifted by one for the root.
    let SubTree {
        mut entries,
        mut local,
        opaque,
        warnings,
        errors,
        ..
    } = sub;
    for e in &mut entries {
        e.parent = if e.parent == WALKED { 0 } else { e.parent + 1 };
    }
    entries.insert(0, root_entry);
    local.insert(0, local_of(&meta));
    let mut scan = SourceScan {
        local,
        warnings,
        errors,
        ..SourceScan::default()
    };
    scan.manifest.entries = entries;
    scan.manifest.opaque = opaque.into_iter().map(|i| i + 1).collect();
    Ok(scan)
}

/// Appends a walked subtree below entry `parent`.
pub(super) fn splice(scan: &mut SourceScan, sub: SubTree, parent: u32) {
    let base = scan.manifest.entries.len() as u32;
    scan.warnings.extend(sub.warnings);
    scan.errors.extend(sub.errors);
    scan.manifest
        .opaque
        .extend(sub.opaque.iter().map(|i| i + base));
    scan.manifest.entries.reserve(sub.entries.len());
    scan.manifest
        .entries
        .extend(sub.entries.into_iter().map(|mut e| {
            e.parent = if e.parent == WALKED {
                parent
            } else {
                e.parent + base
            };
            e
        }));
    scan.local.extend(sub.local);
}

/// Walks the children of `dir` (display path `rel`), subdirectories in parallel.
pub(super) fn walk(dir: &Path, rel: &str, opts: &ScanOptions) -> SubTree {
    let mut out = SubTree::default();
    let mut children = match read_children(dir, rel, &mut out) {
        Some(c) => c,
        None => return out,
    };
    children.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept = Vec::with_capacity(children.len());
    for (name, path, meta) in children {
        let child_rel = join_rel(rel, &name);
        if opts.filter.is_excluded(&child_rel, meta.is_dir()) {
            continue;
        }
        if child_rel.len() >= super::MAX_PATH_BYTES {
            out.errors.push(FileError::new(
                child_rel,
                "path longer than 4096 bytes; skipped",
            ));
            continue;
        }
        if meta.is_dir() && opts.skip.iter().any(|s| s == &path) {
            continue;
        }
        match entry_of(&path, &child_rel, name, &meta) {
            Ok(Some(entry)) => {
                if let (Some(c), Kind::File { size }) = (&opts.counter, &entry.kind) {
                    use std::sync::atomic::Ordering::Relaxed;
                    c.files.fetch_add(1, Relaxed);
                    c.bytes.fetch_add(*size, Relaxed);
                }
                kept.push((path, child_rel, entry, local_of(&meta)))
            }
            Ok(None) => out.warnings.push(FileError::new(
                child_rel,
                "special file (FIFO, socket or device) skipped",
            )),
            Err(e) => out.errors.push(e),
        }
    }
    let subtrees: Vec<Option<SubTree>> = kept
        .par_iter()
        .map(|(path, child_rel, entry, _)| entry.kind.is_dir().then(|| walk(path, child_rel, opts)))
        .collect();
    // Exact sizes: the arrays are copied once per level, never regrown.
    let total = kept.len()
        + subtrees
            .iter()
            .flatten()
            .map(|s| s.entries.len())
            .sum::<usize>();
    out.entries.reserve_exact(total);
    out.local.reserve_exact(total);
    for ((_, _, mut entry, local), sub) in kept.into_iter().zip(subtrees) {
        let pos = out.entries.len() as u32;
        entry.parent = WALKED;
        out.entries.push(entry);
        out.local.push(local);
        let Some(sub) = sub else { continue };
        if sub.unreadable {
            out.opaque.push(pos);
        }
        let base = pos + 1;
        out.warnings.extend(sub.warnings);
        out.errors.extend(sub.errors);
        out.opaque.extend(sub.opaque.iter().map(|i| i + base));
        out.entries.extend(sub.entries.into_iter().map(|mut e| {
            e.parent = if e.parent == WALKED {
                pos
            } else {
                e.parent + base
            };
            e
        }));
        out.local.extend(sub.local);
        // `sub`'s arrays are freed here, before the next sibling's are copied.
    }
    out
}

pub(super) fn read_children(
    dir: &Path,
    rel: &str,
    out: &mut SubTree,
) -> Option<Vec<(String, PathBuf, Metadata)>> {
    let shown = if rel.is_empty() { "." } else { rel };
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            out.errors.push(FileError::new(
                shown,
                format!("cannot read directory: {}", describe_io(&e)),
            ));
            out.unreadable = true;
            return None;
        }
    };
    let mut children = Vec::new();
    for item in rd {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                out.errors.push(FileError::new(
                    shown,
                    format!("cannot list directory: {}", describe_io(&e)),
                ));
                continue;
            }
        };
        let os_name = item.file_name();
        let Some(name) = os_name.to_str() else {
            out.errors.push(FileError::new(
                join_rel(rel, &os_name.to_string_lossy()),
                "name is not valid UTF-8; skipped",
            ));
            continue;
        };
        let path = item.path();
        match fs::symlink_metadata(&path) {
            Ok(meta) => children.push((name.to_string(), path, meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // vanished meanwhile
            Err(e) => out.errors.push(FileError::new(
                join_rel(rel, name),
                format!("cannot stat: {}", describe_io(&e)),
            )),
        }
    }
    Some(children)
}

pub(super) fn entry_of(
    path: &Path,
    rel: &str,
    name: String,
    meta: &Metadata,
) -> Result<Option<Entry>, FileError> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File { size: meta.len() }
    } else if ft.is_symlink() {
        let target = fs::read_link(path)
            .map_err(|e| FileError::new(rel, format!("cannot read link: {}", describe_io(&e))))?;
        let target = target
            .to_str()
            .ok_or_else(|| FileError::new(rel, "symlink target is not valid UTF-8; skipped"))?
            .to_string();
        Kind::Symlink { target }
    } else {
        return Ok(None);
    };
    Ok(Some(Entry {
        parent: 0,
        name,
        kind,
        mode: mode_of(meta),
        mtime: mtime_of(meta),
    }))
}

pub(super) fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Permission bits where the platform has them.
pub fn mode_of(meta: &Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(meta.permissions().mode() & 0o7777)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

pub fn mtime_of(meta: &Metadata) -> Timestamp {
    meta.modified()
        .map(Timestamp::from_system)
        .unwrap_or_default()
}

pub fn local_of(meta: &Metadata) -> LocalStat {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        LocalStat {
            dev: meta.dev(),
            ino: meta.ino(),
            links: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        LocalStat::default()
    }
}
