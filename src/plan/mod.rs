//! Planning: source manifest x replica view -> the operations that make the
//! replica equal to the source. Pure: no I/O, exhaustively tested, and the
//! same plan drives a real pass and a dry run.

use crate::protocol::Reason;
use crate::tree::{Kind, Manifest, Timestamp, Unholdable};
use std::collections::{HashMap, HashSet};

/// What the server found at one replica path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEntry {
    pub kind: Kind,
    pub mode: Option<u32>,
    pub mtime: Timestamp,
    /// The store's identity of what is there (see [`crate::store`]).
    pub version: crate::tree::Version,
}

/// The replica entries the server looked at. Only paths the source manifest
/// covers are listed: children of fully listed directories and the listed
/// children of partial ones. An entry [`identical`] to the manifest entry at
/// its path (most of them, in a pass with few changes) is one bit, by
/// manifest id; every other entry is kept whole, by `/`-joined path (the
/// root is `""`).
#[derive(Debug, Clone, Default)]
pub struct ReplicaView {
    differing: HashMap<String, ReplicaEntry>,
    same: Vec<u64>,
    same_count: usize,
}

impl ReplicaView {
    /// An empty view for a manifest of `len` entries.
    pub fn new(len: usize) -> Self {
        ReplicaView {
            differing: HashMap::new(),
            same: vec![0; len.div_ceil(64)],
            same_count: 0,
        }
    }

    /// Records an entry kept whole (differing from the source, or not in it).
    pub fn insert(&mut self, key: String, entry: ReplicaEntry) {
        self.differing.insert(key, entry);
    }

    /// Records that the replica entry at manifest entry `id`'s path is
    /// identical to it.
    pub fn mark_same(&mut self, id: u32) {
        let (w, b) = (id as usize / 64, id % 64);
        if let Some(word) = self.same.get_mut(w) {
            if *word & (1 << b) == 0 {
                *word |= 1 << b;
                self.same_count += 1;
            }
        }
    }

    /// Whether the replica holds exactly manifest entry `id`.
    pub fn is_same(&self, id: u32) -> bool {
        self.same
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// An entry kept whole (never one of the identical ones).
    pub fn get(&self, key: &str) -> Option<&ReplicaEntry> {
        self.differing.get(key)
    }

    /// The entries kept whole.
    pub fn differing(&self) -> impl Iterator<Item = (&String, &ReplicaEntry)> {
        self.differing.iter()
    }

    /// How many entries the view holds, identical ones included.
    pub fn len(&self) -> usize {
        self.differing.len() + self.same_count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a replica entry needs nothing to equal the manifest entry `e`
/// (same type; files: size, mtime and mode; directories: mode and mtime;
/// symlinks: target and mtime) — exactly when [`plan`] would leave it alone
/// without `--checksum`.
pub fn identical(e: &crate::tree::Entry, r: &ReplicaEntry) -> bool {
    match (&e.kind, &r.kind) {
        (Kind::File { size: a }, Kind::File { size: b }) => {
            a == b && e.mtime == r.mtime && e.mode == r.mode
        }
        (Kind::Dir, Kind::Dir) => e.mtime == r.mtime && e.mode == r.mode,
        (Kind::Symlink { target: a }, Kind::Symlink { target: b }) => a == b && e.mtime == r.mtime,
        _ => false,
    }
}

/// A file whose content must be checked or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub id: u32,
    pub reason: Reason,
    /// Whether a regular file is already at that path (compare hashes first).
    pub has_old: bool,
}

/// The operations of one pass, in the order they are carried out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Replica entries in the way of an entry of another type: removed first.
    pub clear: Vec<String>,
    /// Directories to create, parents first.
    pub mkdirs: Vec<u32>,
    /// Symlinks to create or replace.
    pub symlinks: Vec<u32>,
    /// Files whose content must be fetched or verified.
    pub fetch: Vec<Fetch>,
    /// Entries whose content is right but whose mode or mtime is not.
    pub metadata: Vec<u32>,
    /// Replica entries the source lacks (top-most only), removed last.
    pub remove: Vec<String>,
    /// Every directory of the manifest, deepest first: their mode and mtime
    /// are (re)applied at the end of the pass.
    pub dirs_deepest_first: Vec<u32>,
}

/// Whether a pass checks content even when size and mtime agree.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    pub checksum: bool,
}

/// Every manifest entry's `/`-joined key, by id, in one buffer: a million
/// keys cost their bytes plus 8 bytes each, not a `String` each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    text: String,
    ends: Vec<usize>,
}

impl Keys {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| &self[i])
    }
}

impl std::ops::Index<usize> for Keys {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        self.get(i).expect("key index within the manifest")
    }
}

/// Computes the `/`-joined key of every entry.
pub fn keys_of(source: &Manifest) -> Keys {
    let mut keys = Keys {
        text: String::new(),
        ends: Vec::with_capacity(source.entries.len()),
    };
    // The parent's key is copied through a scratch buffer (the text cannot
    // be read while it is appended to).
    let mut parent = String::new();
    for (i, e) in source.entries.iter().enumerate() {
        if i > 0 {
            let p = e.parent as usize;
            let start = if p == 0 { 0 } else { keys.ends[p - 1] };
            let end = keys.ends[p];
            if end > start {
                parent.clear();
                parent.push_str(&keys.text[start..end]);
                keys.text.push_str(&parent);
                keys.text.push('/');
            }
            keys.text.push_str(&e.name);
        }
        keys.ends.push(keys.text.len());
    }
    keys.text.shrink_to_fit();
    keys
}

/// Plans one pass.
/// `keys` are the manifest's keys ([`keys_of`]).
pub fn plan(source: &Manifest, keys: &Keys, replica: &ReplicaView, opts: PlanOptions) -> Plan {
    let mut p = Plan::default();
    let mut matched = 0usize;
    let mut depth = vec![0u32; source.entries.len()];
    for (i, e) in source.entries.iter().enumerate() {
        let id = i as u32;
        if i > 0 {
            depth[i] = depth[e.parent as usize] + 1;
        }
        if e.kind.is_dir() {
            p.dirs_deepest_first.push(id);
        }
        if replica.is_same(id) {
            matched += 1;
            continue;
        }
        let old = replica.get(&keys[i]);
        matched += usize::from(old.is_some());
        if i == 0 {
            if old.is_some_and(|o| o.mode != e.mode || o.mtime != e.mtime) {
                p.metadata.push(id);
            }
            continue;
        }
        let old = match old {
            Some(o) if same_type(&o.kind, &e.kind) => Some(o),
            Some(_) => {
                p.clear.push(keys[i].to_string());
                None
            }
            None => None,
        };
        let type_changed = old.is_none() && replica.get(&keys[i]).is_some();
        match (&e.kind, old) {
            (Kind::Dir, None) => p.mkdirs.push(id),
            (Kind::Dir, Some(o)) => {
                if o.mode != e.mode || o.mtime != e.mtime {
                    p.metadata.push(id);
                }
            }
            (Kind::Symlink { .. }, None) => p.symlinks.push(id),
            (Kind::Symlink { target }, Some(o)) => match &o.kind {
                Kind::Symlink { target: t } if t == target => {
                    if o.mtime != e.mtime {
                        p.metadata.push(id);
                    }
                }
                _ => p.symlinks.push(id),
            },
            (Kind::File { .. }, None) => p.fetch.push(Fetch {
                id,
                reason: if type_changed {
                    Reason::TypeChanged
                } else {
                    Reason::New
                },
                has_old: false,
            }),
            (Kind::File { size }, Some(o)) => {
                let same_size = matches!(o.kind, Kind::File { size: s } if s == *size);
                if opts.checksum || !same_size || o.mtime != e.mtime {
                    p.fetch.push(Fetch {
                        id,
                        reason: Reason::ContentChanged,
                        has_old: true,
                    });
                } else if o.mode != e.mode {
                    p.metadata.push(id);
                }
            }
        }
    }
    // Every replica entry matched a source entry: nothing to remove (and no
    // need for a set of a million source keys to find out).
    if matched < replica.len() {
        let source_keys: HashSet<&str> = keys.iter().collect();
        let mut extra: Vec<String> = replica
            .differing()
            .map(|(k, _)| k)
            .filter(|k| !source_keys.contains(k.as_str()))
            .cloned()
            .collect();
        extra.sort();
        p.remove = extra;
    }
    p.dirs_deepest_first
        .sort_by_key(|&id| std::cmp::Reverse(depth[id as usize]));
    p
}

impl Plan {
    /// Drops every operation on the entries `skip` covers (names the
    /// replica cannot hold: they are reported per file instead), and every
    /// removal at or below them: the replica keeps what it holds there.
    pub fn skip(&mut self, skip: &Unholdable, keys: &Keys) {
        if skip.is_empty() {
            return;
        }
        let keep = |id: &u32| !skip.covers(*id);
        self.mkdirs.retain(keep);
        self.symlinks.retain(keep);
        self.metadata.retain(keep);
        self.dirs_deepest_first.retain(keep);
        self.fetch.retain(|f| keep(&f.id));
        let covered: HashSet<String> = (0..keys.len() as u32)
            .filter(|&id| skip.covers(id))
            .map(|id| keys[id as usize].to_string())
            .collect();
        self.clear.retain(|k| !covered.contains(k));
        self.remove.retain(|k| !is_below_any(k, &covered));
    }
}

fn same_type(a: &Kind, b: &Kind) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Whether `key` is one of `doomed` or lies below one of them.
pub fn is_below_any(key: &str, doomed: &HashSet<String>) -> bool {
    let mut cur = key;
    loop {
        if doomed.contains(cur) {
            return true;
        }
        match cur.rfind('/') {
            Some(i) => cur = &cur[..i],
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests;
