//! Large bases: for a file over [`BASIS_MAX_FILE`] (binaries, archives), the
//! old version at its path or, for a new file, the large replica file in
//! its directory whose name shares the longest prefix with it (a library
//! renamed by a version or a hash: `libLLVM.so.22.1-rust-1.95.0-stable` ->
//! `…-1.97.0-nightly`), as a [`basis_stream`]: coarse pieces, 4-byte
//! hashes, at most [`LARGE_MAX_PIECES`] of them, cut while the old file
//! streams by.
//!
//! A large basis is offered only once the chunks to ask are known, and
//! only when they are at least [`LARGE_PAYS`] times its hashes (a 1-byte
//! edit of a 1 GiB file asks for one chunk: a basis would cost 32 times
//! that). At most [`LARGE_SLOTS`] live at once (each at most 2 MiB of
//! piece places here and as many hashes on the client).

use super::Transfer;
use crate::delta::{
    basis_stream, large_avg, Place, BASIS_MAX_FILE, BASIS_MIN_FILE, LARGE_HASH_BYTES,
    LARGE_MAX_PIECES,
};
use crate::protocol::ServerMsg;
use crate::store::Reader;
use crate::tree::Kind;
use std::collections::HashMap;

/// Large bases offered at once, on this side (the client keeps the same
/// bound on its own).
pub const LARGE_SLOTS: usize = crate::delta::LARGE_LIVE;
/// The bytes asked must be at least this many times the basis's hashes.
const LARGE_PAYS: u64 = 32;

/// Large replica files by directory: (name, size, key).
pub(super) type LargeSiblings<'k> = HashMap<&'k str, Vec<(&'k str, u64, &'k str)>>;

impl<'c> Transfer<'c, '_> {
    /// Offers a large basis for file `id` (over [`BASIS_MAX_FILE`]) whose
    /// chunks of `asked` bytes are about to be asked, if one pays.
    pub(super) fn offer_large_basis(
        &mut self,
        id: u32,
        asked: u64,
    ) -> Option<(String, Vec<Place>)> {
        if self.ctx.link.is_in_process() || !self.pull {
            return None;
        }
        let jobs = &self.jobs;
        self.large_live
            .retain(|j| jobs.get(j).is_some_and(|j| j.basis.is_some()));
        if self.large_live.len() >= LARGE_SLOTS {
            return None;
        }
        let key = self.key(id);
        let has_old = self.jobs.get(&id)?.fetch.has_old;
        let (basis_key, old_size) = if has_old {
            match self.view.get(key)?.kind {
                Kind::File { size } if size >= BASIS_MIN_FILE => (key.to_string(), size),
                _ => return None,
            }
        } else {
            let Kind::File { size } = self.entry(id).kind else {
                return None;
            };
            self.large_sibling(key, size)?
        };
        let avg = large_avg(old_size);
        let pieces = (old_size / avg as u64).min(LARGE_MAX_PIECES as u64);
        if asked < LARGE_PAYS * pieces * LARGE_HASH_BYTES as u64 {
            return None;
        }
        let f = self.ctx.store.open(&basis_key).ok()?;
        let (places, hashes) = basis_stream(Reader::new(&*f), avg, LARGE_MAX_PIECES).ok()?;
        if places.is_empty() {
            return None;
        }
        self.ctx.link.send(ServerMsg::Basis { id, avg, hashes });
        self.large_live.push(id);
        Some((basis_key, places))
    }

    /// For a new large file: the large replica file of its directory whose
    /// name shares the longest prefix with its name, then has the same
    /// extension, then the closest size.
    fn large_sibling(&mut self, key: &str, size: u64) -> Option<(String, u64)> {
        if self.large_siblings.is_none() {
            self.large_siblings = Some(self.list_large());
        }
        let (parent, name) = crate::store::split_key(key);
        let ext = |n: &str| n.rfind('.').map(|i| n[i..].to_string());
        self.large_siblings
            .as_ref()?
            .get(parent)?
            .iter()
            .filter(|(_, _, k)| *k != key)
            .max_by_key(|(n, s, _)| {
                let common = n
                    .bytes()
                    .zip(name.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                (
                    common,
                    ext(n) == ext(name),
                    std::cmp::Reverse(s.abs_diff(size)),
                )
            })
            .map(|(_, s, k)| (k.to_string(), *s))
    }

    fn list_large(&self) -> LargeSiblings<'c> {
        let mut by_dir: LargeSiblings<'c> = HashMap::new();
        let (ctx, view) = (self.ctx, self.view);
        let unchanged = ctx
            .manifest
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.kind {
                Kind::File { size } if view.is_same(i as u32) => Some((&ctx.keys[i], size)),
                _ => None,
            });
        let differing = view.differing().filter_map(|(k, e)| match e.kind {
            Kind::File { size } => Some((k.as_str(), size)),
            _ => None,
        });
        for (k, size) in unchanged.chain(differing) {
            if size > BASIS_MAX_FILE {
                let (parent, name) = crate::store::split_key(k);
                by_dir.entry(parent).or_default().push((name, size, k));
            }
        }
        by_dir
    }
}
