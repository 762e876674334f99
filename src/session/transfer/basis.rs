//! Bases for small-file deltas: the old version at a file's path, or for a
//! new file a replica file in the same directory with the same extension
//! and the closest size (pages of one site, modules of one crate… share
//! most of their text). The client may then send chunks as copies of the
//! basis's fine pieces plus literal bytes. None is offered over an
//! in-process link (a local sync), where no bytes travel.

use super::Transfer;
use crate::delta::{basis_of, piece_avg, AVG_MAX, BASIS_MAX_FILE, BASIS_MIN_FILE};
use crate::store::{read_exact_at, Store};
use crate::tree::Kind;
use std::collections::HashMap;

/// Replica files of basis size by class (directory and extension), sorted
/// by (size, key).
pub(super) type Siblings<'k> = HashMap<String, Vec<(u64, &'k str)>>;

impl<'c> Transfer<'c, '_> {
    /// The basis to offer for file `id`, if there is one: which replica
    /// file, how many of its bytes, and the piece size. Nothing is read
    /// here: [`prepare`] reads and cuts it (on the bases worker, see
    /// `bases.rs`).
    pub(super) fn choose_basis(&mut self, id: u32, has_old: bool) -> Option<BasisTask> {
        if self.ctx.link.is_in_process() {
            // No bytes travel: a delta would only cost both sides time.
            return None;
        }
        let key = self.key(id);
        let Kind::File { size: new_size } = self.entry(id).kind else {
            return None;
        };
        if !(BASIS_MIN_FILE..=BASIS_MAX_FILE).contains(&new_size) {
            return None;
        }
        let (basis_key, size) = if has_old {
            match self.view.get(key)?.kind {
                Kind::File { size } if (BASIS_MIN_FILE..=BASIS_MAX_FILE).contains(&size) => {
                    (key.to_string(), size)
                }
                _ => return None,
            }
        } else {
            self.similar_sibling(key, new_size)?
        };
        // Fine pieces pay for an old version (most of it matches); a sibling
        // matches far less and its text is often already in the connection's
        // compression window (sent earlier in the pass), so it gets the
        // coarsest pieces: a basis a sixth the size (docs initial copy:
        // 146 KB more server->client for 70 KB less client->server).
        let avg = if has_old { piece_avg(size) } else { AVG_MAX };
        Some(BasisTask {
            id,
            key: basis_key,
            size,
            avg,
        })
    }

    /// For a new file: the sibling of the closest size.
    fn similar_sibling(&mut self, key: &str, size: u64) -> Option<(String, u64)> {
        if self.siblings.is_none() {
            self.siblings = Some(self.list_siblings());
        }
        let same = self.siblings.as_ref()?.get(&sibling_class(key))?;
        // The closest sizes sit on either side of where `size` would go.
        let at = same.partition_point(|(s, _)| *s < size);
        let lo = same[..at].iter().rev().find(|(_, k)| *k != key);
        let hi = same[at..].iter().find(|(_, k)| *k != key);
        match (lo, hi) {
            (Some(a), Some(b)) => Some(if size - a.0 <= b.0 - size { a } else { b }),
            (a, b) => a.or(b),
        }
        .map(|(s, k)| (k.to_string(), *s))
    }

    fn list_siblings(&self) -> Siblings<'c> {
        let mut by_class: Siblings<'c> = HashMap::new();
        let (ctx, view) = (self.ctx, self.view);
        let unchanged = ctx
            .manifest
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let Kind::File { size } = e.kind else {
                    return None;
                };
                view.is_same(i as u32).then(|| (&ctx.keys[i], size))
            });
        let differing = view.differing().filter_map(|(k, e)| match e.kind {
            Kind::File { size } => Some((k.as_str(), size)),
            _ => None,
        });
        for (k, size) in unchanged.chain(differing) {
            if (BASIS_MIN_FILE..=BASIS_MAX_FILE).contains(&size) {
                by_class
                    .entry(sibling_class(k))
                    .or_default()
                    .push((size, k));
            }
        }
        for v in by_class.values_mut() {
            v.sort_unstable();
        }
        by_class
    }

    /// A file just published may be the basis of a later one.
    pub(super) fn note_sibling(&mut self, key: &'c str, size: u64) {
        let Some(siblings) = &mut self.siblings else {
            return;
        };
        if (BASIS_MIN_FILE..=BASIS_MAX_FILE).contains(&size) {
            let same = siblings.entry(sibling_class(key)).or_default();
            let item = (size, key);
            let at = same.partition_point(|x| *x < item);
            same.insert(at, item);
        }
    }
}

/// A basis chosen for a file, to be read and cut.
pub(super) struct BasisTask {
    pub id: u32,
    /// The replica file offered.
    pub key: String,
    /// Its size as the replica's view or this pass recorded it.
    pub size: u64,
    /// The average piece size.
    pub avg: u32,
}

/// A basis read and cut: the message for the client and the pieces the
/// server keeps.
pub(super) struct Prepared {
    pub avg: u32,
    /// Packed piece hashes (the `Basis` message's).
    pub hashes: Vec<u8>,
    /// The pieces (offset, len) in the basis file.
    pub places: Vec<(u64, u32)>,
}

/// Reads and cuts the basis `t` names: None if it cannot be read whole
/// (gone, or shorter than recorded: no basis is offered then).
pub(super) fn prepare(store: &dyn Store, t: &BasisTask) -> Option<Prepared> {
    let f = store.open(&t.key).ok()?;
    let mut data = vec![0u8; t.size.min(BASIS_MAX_FILE) as usize];
    read_exact_at(&*f, &mut data, 0).ok()?;
    let (places, hashes) = basis_of(&data, t.avg);
    Some(Prepared {
        avg: t.avg,
        hashes,
        places,
    })
}

/// Directory and extension of a key: files of one class are siblings.
fn sibling_class(key: &str) -> String {
    let (parent, name) = crate::store::split_key(key);
    let ext = name.rfind('.').map(|i| &name[i..]).unwrap_or("");
    format!("{parent}\0{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_share_directory_and_extension() {
        assert_eq!(sibling_class("a/b/c.html"), "a/b\0.html");
        assert_eq!(sibling_class("c.rs"), "\0.rs");
        assert_ne!(sibling_class("a/x.rs"), sibling_class("b/x.rs"));
        assert_eq!(sibling_class("a/Makefile"), "a\0");
    }
}
