//! Directory renames: a directory the source renamed shows up as a new
//! directory plus a removed one. When the new directory's whole subtree
//! (names, types, sizes, mtimes, link targets) equals that of a directory
//! this pass removes, the server renames the old one into place instead of
//! moving its files one by one: no digest, no content, one operation.
//! Equality is the same quick check (size and mtime) that decides whether a
//! file needs to be sent at all.

use crate::plan::{Plan, ReplicaView};
use crate::session::deferred::Deferred;
use crate::store::{child_key, Store};
use crate::tree::{Kind, Manifest, Timestamp};
use std::collections::HashMap;

pub(crate) type Sig = [u8; 32];

fn add_entry(
    h: &mut blake3::Hasher,
    name: &str,
    kind: &Kind,
    mtime: Timestamp,
    child: Option<&Sig>,
) {
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    match kind {
        Kind::Dir => {
            h.update(b"d");
            h.update(child.expect("directories have a signature"));
        }
        Kind::File { size } => {
            h.update(b"f");
            h.update(&size.to_le_bytes());
            h.update(&mtime.secs.to_le_bytes());
            h.update(&mtime.nanos.to_le_bytes());
        }
        Kind::Symlink { target } => {
            h.update(b"l");
            h.update(&(target.len() as u64).to_le_bytes());
            h.update(target.as_bytes());
        }
    }
}

/// Signatures of every source directory (children are sorted in a manifest).
/// Directories with no file anywhere below them get no signature, nor do
/// those with an opaque directory below them (its content is not listed).
fn source_sigs(m: &Manifest) -> Vec<Option<Sig>> {
    let n = m.entries.len();
    let opaque: std::collections::HashSet<u32> = m.opaque.iter().copied().collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in m.entries.iter().enumerate().skip(1) {
        children[e.parent as usize].push(i);
    }
    let mut sigs: Vec<Option<Sig>> = vec![None; n];
    let mut has_file = vec![false; n];
    for i in (0..n).rev() {
        if !m.entries[i].kind.is_dir() {
            continue;
        }
        let mut h = blake3::Hasher::new();
        let mut complete = true;
        for &c in &children[i] {
            let e = &m.entries[c];
            if e.kind.is_dir()
                && (opaque.contains(&(c as u32)) || (sigs[c].is_none() && !children[c].is_empty()))
            {
                complete = false;
            }
            has_file[i] |= matches!(e.kind, Kind::File { .. }) || has_file[c];
            let empty = blake3::hash(b"empty");
            let child = sigs[c].unwrap_or(*empty.as_bytes());
            add_entry(&mut h, &e.name, &e.kind, e.mtime, Some(&child));
        }
        if complete && has_file[i] {
            sigs[i] = Some(*h.finalize().as_bytes());
        }
    }
    sigs
}

/// Signature of a replica directory, walking it (None if unreadable or empty of files).
fn replica_sig(store: &dyn Store, key: &str) -> Option<(Sig, bool)> {
    replica_sigs(store, key, &mut |_, _| {})
}

/// The same, telling `each` the signature of every directory of the
/// subtree that has one (`key` included).
pub(crate) fn replica_sigs(
    store: &dyn Store,
    key: &str,
    each: &mut dyn FnMut(&Sig, &str),
) -> Option<(Sig, bool)> {
    let mut names = store.list(key).ok()?;
    names.sort();
    let mut h = blake3::Hasher::new();
    let mut has_file = false;
    for name in names {
        let child_key = child_key(key, &name);
        let e = store.stat(&child_key).ok()??;
        let child = if e.kind.is_dir() {
            match replica_sigs(store, &child_key, each) {
                Some((s, f)) => {
                    has_file |= f;
                    s
                }
                None => *blake3::hash(b"empty").as_bytes(),
            }
        } else {
            has_file |= matches!(e.kind, Kind::File { .. });
            [0; 32]
        };
        add_entry(&mut h, &name, &e.kind, e.mtime, Some(&child));
    }
    let sig = *h.finalize().as_bytes();
    if has_file {
        each(&sig, key);
    }
    has_file.then_some((sig, true))
}

/// Pairs (old key, new key) of directories to rename.
pub(crate) fn detect(
    m: &Manifest,
    keys: &crate::plan::Keys,
    p: &Plan,
    view: &ReplicaView,
    store: &dyn Store,
) -> Vec<(String, String)> {
    let doomed_dirs: Vec<&String> = p
        .remove
        .iter()
        .filter(|k| matches!(view.get(k), Some(e) if e.kind.is_dir()))
        .collect();
    if doomed_dirs.is_empty() || p.mkdirs.is_empty() {
        return Vec::new();
    }
    let mut by_sig: HashMap<Sig, Vec<String>> = HashMap::new();
    for k in doomed_dirs {
        if let Some((s, _)) = replica_sig(store, k) {
            by_sig.entry(s).or_default().push(k.clone());
        }
    }
    if by_sig.is_empty() {
        return Vec::new();
    }
    let sigs = source_sigs(m);
    let new: std::collections::HashSet<u32> = p.mkdirs.iter().copied().collect();
    let mut out = Vec::new();
    for &id in &p.mkdirs {
        let parent = m.entries[id as usize].parent;
        if new.contains(&parent) && id != 0 {
            continue; // only the top-most new directory of a subtree
        }
        let Some(sig) = sigs[id as usize] else {
            continue;
        };
        if let Some(olds) = by_sig.get_mut(&sig) {
            if let Some(old) = olds.pop() {
                out.push((old, keys[id as usize].to_string()));
            }
        }
    }
    out
}

/// Pairs (old key, new key) of directories to rename from those earlier
/// pages of a paged pass deferred (each found by its signature, taken
/// once), for this page's top-most new directories not in `taken`.
pub(crate) fn detect_deferred(
    m: &Manifest,
    keys: &crate::plan::Keys,
    p: &Plan,
    deferred: &mut Deferred,
    taken: &std::collections::HashSet<&str>,
) -> crate::error::Result<Vec<(String, String)>> {
    if p.mkdirs.is_empty() || !deferred.has_dirs() {
        return Ok(Vec::new());
    }
    let sigs = source_sigs(m);
    let new: std::collections::HashSet<u32> = p.mkdirs.iter().copied().collect();
    let mut out = Vec::new();
    for &id in &p.mkdirs {
        let parent = m.entries[id as usize].parent;
        if id == 0 || new.contains(&parent) || taken.contains(&keys[id as usize]) {
            continue;
        }
        let Some(sig) = sigs[id as usize] else {
            continue;
        };
        if let Some(old) = deferred.take_dir(&sig)? {
            out.push((old, keys[id as usize].to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Entry;

    fn e(parent: u32, name: &str, kind: Kind) -> Entry {
        Entry {
            parent,
            name: name.into(),
            kind,
            mode: None,
            mtime: Timestamp { secs: 5, nanos: 0 },
        }
    }

    #[test]
    fn equal_subtrees_have_equal_signatures_and_names_matter() {
        let m = Manifest {
            entries: vec![
                e(0, "", Kind::Dir),
                e(0, "a", Kind::Dir),
                e(1, "f", Kind::File { size: 3 }),
                e(0, "b", Kind::Dir),
                e(3, "f", Kind::File { size: 3 }),
                e(0, "c", Kind::Dir),
                e(5, "g", Kind::File { size: 3 }),
                e(0, "empty", Kind::Dir),
            ],
            opaque: vec![],
            partial: vec![],
        };
        let s = source_sigs(&m);
        assert_eq!(s[1], s[3]);
        assert_ne!(s[1], s[5]);
        assert!(s[7].is_none(), "no signature without files");
    }
}
