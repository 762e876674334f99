//! What a tree is: entries, the manifest that lists them, and scanning a
//! directory into one.
//!
//! A [`Manifest`] lists a tree in pre-order (a directory before its
//! children, siblings sorted by name). Entry 0 is the root. Every other entry
//! names its parent by index and carries one path component, so a path is a
//! sequence of validated components, never a string glued with `/`.

mod extras;
mod hardlinks;
mod name;
mod pages;
pub mod scan;
mod scoped;
pub mod xattr;

pub use extras::Extras;
pub use hardlinks::{hard_links, FarLink, HardLink, PageLinks};
pub use name::{validate_name, windows_can_hold, NameError, NameRules};
pub use pages::{PageTap, Pages};
pub use scan::{scan_source, LocalStat, ScanCounter, ScanOptions, SourceScan};
pub use scoped::{scan_scoped, Scopes};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A modification time to the nanosecond, as seconds and nanoseconds since
/// the Unix epoch (seconds may be negative).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        let nanos = Duration::from_nanos(self.nanos.min(999_999_999) as u64);
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.secs as u64) + nanos
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs()) + nanos
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Dir,
    File {
        size: u64,
    },
    /// The link's target text, never followed.
    Symlink {
        target: String,
    },
}

impl Kind {
    pub fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir)
    }
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Index of the parent directory in the manifest (0 for children of the root).
    pub parent: u32,
    /// One path component (empty only for the root).
    pub name: String,
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`) where the platform has them.
    pub mode: Option<u32>,
    pub mtime: Timestamp,
}

/// Longest relative path accepted from a peer, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// A whole tree, in pre-order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<Entry>,
    /// Directories whose contents could not be read: the replica keeps
    /// whatever it holds below them.
    pub opaque: Vec<u32>,
    /// Directories that list only some of their children: the replica
    /// keeps the children not listed.
    pub partial: Vec<u32>,
}

impl Manifest {
    /// The `/`-joined key of entry `i` (`""` for the root and for an index
    /// outside the manifest), as [`crate::plan::keys_of`] computes them all.
    pub fn key(&self, i: usize) -> String {
        if i >= self.entries.len() {
            return String::new();
        }
        self.components(i).join("/")
    }

    /// The components of entry `i`'s path relative to the root.
    pub fn components(&self, i: usize) -> Vec<&str> {
        let mut out = Vec::new();
        let mut cur = i;
        while cur != 0 {
            let e = &self.entries[cur];
            out.push(e.name.as_str());
            cur = e.parent as usize;
        }
        out.reverse();
        out
    }

    /// The `/`-joined display form of entry `i`'s path (also the index key).
    pub fn display(&self, i: usize) -> String {
        self.components(i).join("/")
    }

    /// Entry `i`'s path as a relative platform path.
    pub fn rel_path(&self, i: usize) -> PathBuf {
        self.components(i).iter().collect()
    }

    /// Checks the structure a peer sent: root first, parents are earlier
    /// directories, names are valid single components, no duplicate names.
    pub fn validate(&self) -> Result<(), String> {
        let Some(root) = self.entries.first() else {
            return Err("empty manifest".into());
        };
        if !root.kind.is_dir() || !root.name.is_empty() {
            return Err("manifest does not start with the root directory".into());
        }
        let not_dir = |&i: &u32| {
            !self
                .entries
                .get(i as usize)
                .is_some_and(|e| e.kind.is_dir())
        };
        if self.opaque.iter().any(not_dir) || self.partial.iter().any(not_dir) {
            return Err("opaque entry is not a directory".into());
        }
        let mut seen = std::collections::HashSet::new();
        let mut path_len = vec![0usize; self.entries.len()];
        for (i, e) in self.entries.iter().enumerate().skip(1) {
            let p = e.parent as usize;
            if p >= i || !self.entries[p].kind.is_dir() {
                return Err(format!("entry {i} has an invalid parent"));
            }
            validate_name(&e.name).map_err(|err| format!("entry {i}: {err}"))?;
            path_len[i] = path_len[p] + e.name.len() + 1;
            if path_len[i] > MAX_PATH_BYTES {
                return Err(format!(
                    "entry {i}: path longer than {MAX_PATH_BYTES} bytes"
                ));
            }
            if !seen.insert((e.parent, e.name.as_str())) {
                return Err(format!("duplicate name {:?}", self.display(i)));
            }
        }
        Ok(())
    }

    /// The entries a replica following `rules` cannot hold: each refused
    /// name with the reason, and a mask of those entries and everything
    /// below them. Empty (and free) under [`NameRules::Unix`].
    pub fn unholdable(&self, rules: NameRules) -> Unholdable {
        let mut out = Unholdable::default();
        if rules == NameRules::Unix {
            return out;
        }
        let mut mask = vec![false; self.entries.len()];
        for (i, e) in self.entries.iter().enumerate().skip(1) {
            if mask[e.parent as usize] {
                mask[i] = true;
            } else if let Some(why) = rules.refuse(&e.name) {
                mask[i] = true;
                out.refused.push((i as u32, why));
            }
        }
        if !out.refused.is_empty() {
            out.mask = mask;
        }
        out
    }

    /// Total bytes of the regular files (saturating: sizes come from peers).
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                Kind::File { size } => size,
                _ => 0,
            })
            .fold(0u64, u64::saturating_add)
    }
}

/// Manifest entries a replica cannot hold (see [`Manifest::unholdable`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unholdable {
    /// By manifest id: refused, or below a refused directory. Empty when
    /// nothing is refused.
    pub mask: Vec<bool>,
    /// The refused entries themselves (top-most only), with the reason.
    pub refused: Vec<(u32, &'static str)>,
}

impl Unholdable {
    pub fn is_empty(&self) -> bool {
        self.refused.is_empty()
    }

    /// Whether entry `id` is refused or lies below a refused directory.
    pub fn covers(&self, id: u32) -> bool {
        self.mask.get(id as usize).copied().unwrap_or(false)
    }
}

/// Splits a `/`-joined index key back into a relative platform path.
pub fn key_to_path(key: &str) -> PathBuf {
    key.split('/').filter(|c| !c.is_empty()).collect()
}

/// Joins the components of a relative path into its `/`-joined key form.
/// Returns `None` if a component is not valid UTF-8 or not a normal component.
pub fn path_to_key(rel: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_before_and_after_epoch() {
        for (s, n) in [
            (0i64, 0u32),
            (1, 5),
            (-1, 999_999_999),
            (-100, 1),
            (1_700_000_000, 123_456_789),
        ] {
            let t = Timestamp { secs: s, nanos: n };
            assert_eq!(Timestamp::from_system(t.to_system()), t);
        }
    }

    fn entry(parent: u32, name: &str, kind: Kind) -> Entry {
        Entry {
            parent,
            name: name.into(),
            kind,
            mode: None,
            mtime: Timestamp::default(),
        }
    }

    #[test]
    fn manifest_paths_and_validation() {
        let m = Manifest {
            entries: vec![
                entry(0, "", Kind::Dir),
                entry(0, "a", Kind::Dir),
                entry(1, "b.txt", Kind::File { size: 3 }),
            ],
            opaque: vec![],
            partial: vec![],
        };
        assert_eq!(m.display(2), "a/b.txt");
        assert_eq!(m.rel_path(2), Path::new("a").join("b.txt"));
        assert!(m.validate().is_ok());
        let mut bad = m.clone();
        bad.entries[2].parent = 2;
        assert!(bad.validate().is_err());
        let mut bad = m.clone();
        bad.entries[2].name = "..".into();
        assert!(bad.validate().is_err());
        let mut deep = Manifest {
            entries: vec![entry(0, "", Kind::Dir)],
            opaque: vec![],
            partial: vec![],
        };
        for i in 0..3000u32 {
            deep.entries.push(entry(i, "ab", Kind::Dir));
        }
        assert!(deep.validate().unwrap_err().contains("path longer"));
        let mut bad = m;
        bad.entries.push(entry(1, "b.txt", Kind::Dir));
        assert!(bad.validate().is_err());
    }

    #[test]
    fn names_a_windows_replica_cannot_hold_are_masked_with_their_subtrees() {
        let m = Manifest {
            entries: vec![
                entry(0, "", Kind::Dir),
                entry(0, "C:", Kind::Dir),
                entry(1, "inside", Kind::File { size: 1 }),
                entry(0, "fine", Kind::File { size: 1 }),
                entry(0, "CON", Kind::File { size: 1 }),
                entry(0, "back\\slash", Kind::File { size: 1 }),
            ],
            opaque: vec![],
            partial: vec![],
        };
        assert!(m.validate().is_ok(), "odd names are valid on the wire");
        assert!(m.unholdable(NameRules::Unix).is_empty());
        let u = m.unholdable(NameRules::Windows);
        let refused: Vec<u32> = u.refused.iter().map(|r| r.0).collect();
        assert_eq!(refused, vec![1, 4, 5]);
        let covered: Vec<u32> = (0..6).filter(|&i| u.covers(i)).collect();
        assert_eq!(covered, vec![1, 2, 4, 5]);
    }
}

/// An entry's identity as its store sees it (an inode number on a local
/// disk): two reads showing the same version saw the same file. Opaque to
/// everything but the store; [`Version::UNKNOWN`] matches any version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version(pub u64);

impl Version {
    /// No identity known (a platform or store without one).
    pub const UNKNOWN: Version = Version(0);

    /// Whether two versions may be of the same file (unknown matches all).
    pub fn may_equal(self, other: Version) -> bool {
        self == other || self == Version::UNKNOWN || other == Version::UNKNOWN
    }
}
