//! Index writes held in memory until the next checkpoint: a transaction's
//! reads see them first, and they reach redb in one sorted batch per
//! table (each table opened once, neighbouring keys written together)
//! instead of one small write per table per file.
//!
//! A `None` value is a removal. Nothing here reaches the database file
//! before it is flushed into the write transaction, and a transaction
//! commits only after a flush: what a crash leaves is a committed prefix
//! of the pass's writes, as before.

use super::{ChunkLoc, FileRecord, GroupLoc};
use crate::chunk::Hash;
use std::collections::{BTreeMap, HashMap};

/// Held entries (chunk and group locations count one each, a file one)
/// beyond which a write flushes: a large file adds thousands of chunk
/// locations at once.
pub(super) const MAX_HELD: usize = 32_768;

#[derive(Default)]
pub(super) struct Pending {
    pub files: BTreeMap<String, Option<FileRecord>>,
    pub chunks: HashMap<Hash, Option<ChunkLoc>>,
    pub whole: HashMap<Hash, Option<String>>,
    pub groups: HashMap<Hash, Option<GroupLoc>>,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.files.len() + self.chunks.len() + self.whole.len() + self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A hash map's entries in key order (the order redb's tree is in).
pub(super) fn sorted<V>(m: HashMap<Hash, V>) -> Vec<(Hash, V)> {
    let mut v: Vec<(Hash, V)> = m.into_iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    v
}
