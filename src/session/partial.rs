//! Large files received in part, kept between passes so the next pass
//! resumes them instead of starting over: after a dropped connection, a
//! server shutdown, or a client that set a big file aside to let small
//! changes through first (`replica watch`).
//!
//! A partial is the file staged for its target plus which of its
//! chunks are written (each was hash-checked when written). It is resumed
//! only for the very same content (size and file id), and only after
//! its directory has been resolved again from DEST and found to hold the same
//! file: a directory moved out of DEST meanwhile is never written through.
//! Partials live in the server's memory; after a restart their temporary
//! files are stale and removed by the next pass.

use crate::chunk::Hash;
use crate::store::{Staged, Store};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Files smaller than this are simply sent again.
pub(crate) const RESUME_MIN: u64 = 8 << 20;
/// Most partials kept at once.
const MAX_PARTIALS: usize = 8;

struct Partial {
    tmp: Box<dyn Staged>,
    size: u64,
    hash: Hash,
    written: Vec<bool>,
    /// The pass that set it aside.
    pass: u64,
}

/// The server's partials, by target key.
#[derive(Default)]
pub struct Partials {
    map: Mutex<HashMap<String, Partial>>,
}

impl Partials {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Partial>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets aside a temporary file holding the `written` chunks of the file
    /// (`size`, `hash`) meant for `key`. Returns false (and lets the file be
    /// removed) when it is not worth keeping.
    pub(crate) fn keep(
        &self,
        key: &str,
        tmp: Box<dyn Staged>,
        size: u64,
        hash: Hash,
        written: Vec<bool>,
        pass: u64,
    ) -> bool {
        if size < RESUME_MIN || !written.iter().any(|w| *w) {
            return false;
        }
        let mut map = self.lock();
        if map.len() >= MAX_PARTIALS && !map.contains_key(key) {
            return false;
        }
        map.insert(
            key.to_string(),
            Partial {
                tmp,
                size,
                hash,
                written,
                pass,
            },
        );
        true
    }

    /// The partial for `key` if it holds part of exactly this content (and
    /// still sits in DEST where it was); any other partial for `key` is
    /// discarded.
    pub(crate) fn take(
        &self,
        store: &dyn Store,
        key: &str,
        size: u64,
        hash: &Hash,
        chunks: usize,
    ) -> Option<(Box<dyn Staged>, Vec<bool>)> {
        let p = self.lock().remove(key)?;
        if p.size != size || p.hash != *hash || p.written.len() != chunks {
            return None;
        }
        let tmp = store.resume(key, p.tmp).ok()?;
        Some((tmp, p.written))
    }

    /// Keys of the temporary files kept (not stale: the scan leaves them).
    pub(crate) fn temp_keys(&self) -> HashSet<String> {
        self.lock()
            .values()
            .map(|p| p.tmp.key().to_string())
            .collect()
    }

    /// After a pass over the whole tree: partials not set aside by that pass
    /// are of files that are now complete, gone or different.
    pub(crate) fn forget_older_than(&self, pass: u64) {
        self.lock().retain(|_, p| p.pass >= pass);
    }
}
