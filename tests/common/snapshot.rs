//! Strict tree snapshots: every entry below a root (the root included,
//! never following a link) with its type, content, symlink text, mode and
//! mtime to the nanosecond, so empty directories and metadata count; exact
//! comparison, a tolerant variant for trees that change while read, and
//! polling until two trees are equal.

use super::DEADLINE;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
#[cfg(not(unix))]
use std::time::UNIX_EPOCH;
use std::time::{Duration, Instant};

/// What a snapshot saw at one path.
#[derive(Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// FIFO, socket, device.
    Special,
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Dir => write!(f, "dir"),
            Kind::File(b) if b.len() <= 32 => write!(f, "file {:?}", String::from_utf8_lossy(b)),
            Kind::File(b) => write!(
                f,
                "file of {} bytes (blake3 {})",
                b.len(),
                &blake3::hash(b).to_hex()[..12]
            ),
            Kind::Symlink(t) => write!(f, "symlink -> {t:?}"),
            Kind::Special => write!(f, "special file"),
        }
    }
}

/// One entry of a snapshot (`lstat`, never following a link).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// `mode & 0o7777` (0 where the platform has none).
    pub mode: u32,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Inode number (not compared by [`assert_trees_equal`]).
    pub ino: u64,
}

/// Everything below `root`, keyed by `/`-joined relative path; the root
/// itself is `"."`.
pub type Snapshot = BTreeMap<String, Node>;

/// The snapshot entry of one path (panics if it cannot be read).
pub fn node_of(p: &Path) -> Node {
    try_node(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

/// Snapshots a whole tree, root included (panics if it cannot be read).
pub fn snapshot(root: &Path) -> Snapshot {
    try_snapshot(root).unwrap_or_else(|e| panic!("snapshot {}: {e}", root.display()))
}

/// The differences between two snapshots (inodes ignored), one line each.
pub fn diff_snapshots(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut diffs = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => diffs.push(format!("{k}: only in the first tree ({:?})", x.kind)),
            (None, Some(y)) => diffs.push(format!("{k}: only in the second tree ({:?})", y.kind)),
            (Some(x), Some(y)) => {
                if x.kind != y.kind {
                    diffs.push(format!("{k}: {:?} != {:?}", x.kind, y.kind));
                    continue;
                }
                if x.mode != y.mode {
                    diffs.push(format!("{k}: mode {:o} != {:o}", x.mode, y.mode));
                }
                if x.mtime != y.mtime {
                    diffs.push(format!(
                        "{k}: mtime {}.{:09} != {}.{:09}",
                        x.mtime.0, x.mtime.1, y.mtime.0, y.mtime.1
                    ));
                }
            }
            (None, None) => unreachable!(),
        }
    }
    diffs
}

#[track_caller]
pub fn assert_snapshots_equal(a: &Snapshot, b: &Snapshot) {
    let diffs = diff_snapshots(a, b);
    assert!(diffs.is_empty(), "trees differ:\n  {}", diffs.join("\n  "));
}

/// Asserts two trees are exactly equal: the same paths, entry types, file
/// bytes, symlink target texts, permission bits and mtimes to the
/// nanosecond (root directory included; empty directories count).
#[track_caller]
pub fn assert_trees_equal(a: &Path, b: &Path) {
    assert_snapshots_equal(&snapshot(a), &snapshot(b));
}

/// Asserts nothing in the tree changed: also inode numbers (no file was
/// rewritten or replaced).
#[track_caller]
pub fn assert_untouched(before: &Snapshot, after: &Snapshot) {
    assert_snapshots_equal(before, after);
    for (k, n) in before {
        let m = &after[k];
        assert_eq!(
            n.ino, m.ino,
            "{k} was replaced (inode {} -> {})",
            n.ino, m.ino
        );
    }
}

fn try_node(p: &Path) -> std::io::Result<Node> {
    let md = fs::symlink_metadata(p)?;
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink(fs::read_link(p)?.to_string_lossy().into_owned())
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File(fs::read(p)?)
    } else {
        Kind::Special
    };
    #[cfg(unix)]
    let (mode, mtime, ino) = {
        use std::os::unix::fs::MetadataExt;
        (
            md.mode() & 0o7777,
            (md.mtime(), md.mtime_nsec() as u32),
            md.ino(),
        )
    };
    #[cfg(not(unix))]
    let (mode, mtime, ino) = {
        let (secs, nanos) = match md.modified()?.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(_) => (0, 0),
        };
        (0u32, (secs, nanos), 0u64)
    };
    Ok(Node {
        kind,
        mode,
        mtime,
        ino,
    })
}

fn try_walk(dir: &Path, rel: &str, out: &mut Snapshot) -> std::io::Result<()> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir)? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    for name in names {
        let p = dir.join(&name);
        let key = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let n = try_node(&p)?;
        let is_dir = n.kind == Kind::Dir;
        out.insert(key.clone(), n);
        if is_dir {
            try_walk(&p, &key, out)?;
        }
    }
    Ok(())
}

/// A snapshot like `common::snapshot`, but an error (an entry vanishing
/// while it is read) is returned instead of panicking.
pub fn try_snapshot(root: &Path) -> std::io::Result<Snapshot> {
    let mut out = Snapshot::new();
    out.insert(".".into(), try_node(root)?);
    try_walk(root, "", &mut out)?;
    Ok(out)
}

/// The differences between the trees, or a description of why one could
/// not be read.
pub fn tree_diffs(src: &Path, dst: &Path, ignore_in_src: &[&str]) -> Vec<String> {
    let a = match try_snapshot(src) {
        Ok(mut s) => {
            s.retain(|k, _| !ignore_in_src.contains(&k.as_str()));
            s
        }
        Err(e) => return vec![format!("cannot read the source: {e}")],
    };
    match try_snapshot(dst) {
        Ok(b) => diff_snapshots(&a, &b),
        Err(e) => vec![format!("cannot read the replica: {e}")],
    }
}

/// Polls until `dst` is exactly `src` (minus `ignore_in_src`); on timeout
/// panics with the remaining differences and `context()`.
#[track_caller]
pub fn wait_equal_except(
    src: &Path,
    dst: &Path,
    ignore_in_src: &[&str],
    deadline: Duration,
    context: impl Fn() -> String,
) {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        let diffs = tree_diffs(src, dst, ignore_in_src);
        if diffs.is_empty() {
            return;
        }
        if Instant::now() >= end {
            panic!(
                "the replica did not converge within {deadline:?}:\n  {}\n{}",
                diffs.join("\n  "),
                context()
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Polls until `dst` is exactly `src`.
#[track_caller]
pub fn wait_equal(src: &Path, dst: &Path, deadline: Duration, context: impl Fn() -> String) {
    wait_equal_except(src, dst, &[], deadline, context)
}

/// Relative paths of every `.replica-tmp-*` entry below `root` (names
/// only; entries may come and go meanwhile).
pub fn temp_files(root: &Path) -> Vec<String> {
    let mut out = names_below(root, |_| true);
    out.retain(|k| is_temp(k));
    out
}

/// Relative paths of the regular files below `root` (names only, cheap).
pub fn file_names(root: &Path) -> Vec<String> {
    names_below(root, |t| t.is_file())
}

/// Relative paths of the entries below `root` whose type `keep` accepts
/// (a tolerant walk: entries may vanish meanwhile).
fn names_below(root: &Path, keep: impl Fn(&fs::FileType) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in rd.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            match item.file_type() {
                Ok(t) if t.is_dir() => {
                    if keep(&t) {
                        out.push(key.clone());
                    }
                    stack.push((item.path(), key))
                }
                Ok(t) if keep(&t) => out.push(key),
                _ => {}
            }
        }
    }
    out
}

/// Whether a relative path names a `.replica-tmp-*` entry.
pub fn is_temp(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with(".replica-tmp-"))
}

/// Checks that every regular file under its final name in `dest` is
/// byte-identical to the file of the same name in `src`; returns how many
/// bytes those files hold.
pub fn assert_published_files_whole(src: &Path, dest: &Path) -> u64 {
    let mut bytes = 0;
    for key in file_names(dest) {
        if is_temp(&key) {
            continue;
        }
        let Ok(got) = std::fs::read(dest.join(&key)) else {
            continue;
        };
        let want = std::fs::read(src.join(&key))
            .unwrap_or_else(|e| panic!("{key} is in the replica but not in the source: {e}"));
        assert!(
            got == want,
            "{key} is under its final name but is not the source's content ({} of {} bytes)",
            got.len(),
            want.len()
        );
        bytes += got.len() as u64;
    }
    bytes
}
