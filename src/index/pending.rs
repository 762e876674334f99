//! Index writes held in memory until the next checkpoint: a transaction's
//! reads see them first, and they reach redb in one sorted batch per
//! table (each table opened once, neighbouring keys written together)
//! instead of one small write per table per file.
//!
//! A `None` value is a removal. Batches are written and committed in the
//! order they were made, each as a whole: what a crash leaves is the index
//! as of some checkpoint of the pass, as before.

use super::{index_err, ChunkLoc, FileRecord, GroupLoc, CHUNKS, FILES, GROUPS, WHOLE};
use crate::chunk::Hash;
use crate::error::{Error, Result};
use redb::WriteTransaction;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Held entries (chunk and group locations count one each, a file one)
/// beyond which a write hands the batch over: a large file adds thousands
/// of chunk locations at once.
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
fn sorted<V: Clone>(m: &HashMap<Hash, Option<V>>) -> Vec<(&Hash, &Option<V>)> {
    let mut v: Vec<(&Hash, &Option<V>)> = m.iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v
}

/// Writes a batch into `txn`, table by table in key order; with
/// `tombstones` a removal is written as an empty value (a dry run's
/// overlay, see `replica.rs`).
pub(super) fn write_held(
    txn: &WriteTransaction,
    held: &Pending,
    path: &Path,
    tombstones: bool,
) -> Result<()> {
    let e = |e: redb::Error| index_err(path, e);
    if !held.files.is_empty() {
        let mut t = txn.open_table(FILES).map_err(|x| e(x.into()))?;
        for (k, v) in &held.files {
            match v {
                Some(rec) => {
                    let bytes = postcard::to_stdvec(rec).expect("records encode");
                    t.insert(k.as_str(), bytes.as_slice()).map(drop)
                }
                None if tombstones => t.insert(k.as_str(), &b""[..]).map(drop),
                None => t.remove(k.as_str()).map(drop),
            }
            .map_err(|x| e(x.into()))?;
        }
    }
    put_all(txn, CHUNKS, sorted(&held.chunks), tombstones, &e)?;
    if !held.whole.is_empty() {
        let mut t = txn.open_table(WHOLE).map_err(|x| e(x.into()))?;
        for (k, v) in sorted(&held.whole) {
            match v {
                Some(p) => t.insert(&k.0[..], p.as_str()).map(drop),
                None if tombstones => t.insert(&k.0[..], "").map(drop),
                None => t.remove(&k.0[..]).map(drop),
            }
            .map_err(|x| e(x.into()))?;
        }
    }
    put_all(txn, GROUPS, sorted(&held.groups), tombstones, &e)
}

/// Writes one table's held entries (postcard-encoded values; `None`
/// removes).
fn put_all<V: serde::Serialize + Clone>(
    txn: &WriteTransaction,
    table: redb::TableDefinition<&[u8], &[u8]>,
    entries: Vec<(&Hash, &Option<V>)>,
    tombstones: bool,
    e: &dyn Fn(redb::Error) -> Error,
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut t = txn.open_table(table).map_err(|x| e(x.into()))?;
    for (k, v) in entries {
        match v {
            Some(v) => {
                let bytes = postcard::to_stdvec(v).expect("locations encode");
                t.insert(&k.0[..], bytes.as_slice()).map(drop)
            }
            None if tombstones => t.insert(&k.0[..], &b""[..]).map(drop),
            None => t.remove(&k.0[..]).map(drop),
        }
        .map_err(|x| e(x.into()))?;
    }
    Ok(())
}
