//! The server's index of the replica's content, written in one
//! transaction per pass; writes are held in memory and reach redb in
//! sorted batches (`pending.rs`).

use super::pending::{sorted, Pending, MAX_HELD};
use super::{
    index_err, one_chunk, open_db, ChunkLoc, FileRecord, GroupLoc, CHECKPOINT_WRITES, CHUNKS,
    FILES, GROUPS, WHOLE,
};
use crate::chunk::{groups, offsets, ChunkRef, Hash, INLINE_CHUNKS};
use crate::error::{Error, Result};
use crate::tree::Version;
use redb::{Database, ReadableTable, WriteTransaction};
use std::path::{Path, PathBuf};

/// The server's index of the replica's content.
pub struct ReplicaIndex {
    db: Database,
    path: PathBuf,
    /// Set when the index was rebuilt on open; the reason, for the log.
    pub rebuilt: Option<String>,
}

impl ReplicaIndex {
    pub fn open(path: &Path) -> Result<Self> {
        let (db, rebuilt) = open_db(path)?;
        Ok(ReplicaIndex {
            db,
            path: path.to_path_buf(),
            rebuilt,
        })
    }

    /// A path beside the index for a pass's scratch database (`what`
    /// names it).
    pub fn scratch_path(&self, what: &str) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{what}"));
        self.path.with_file_name(name)
    }

    /// Starts the pass's transaction.
    pub fn begin(&self) -> Result<IndexTxn<'_>> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| index_err(&self.path, e))?;
        Ok(IndexTxn {
            index: self,
            txn: Some(txn),
            writes: 0,
            scratch: false,
            pending: Pending::default(),
            cached: std::cell::RefCell::new(None),
            last_whole: std::cell::RefCell::new(None),
        })
    }

    /// A transaction that is never committed (a dry run): it reads the
    /// index and its own writes, and keeps nothing.
    pub fn begin_scratch(&self) -> Result<IndexTxn<'_>> {
        let mut t = self.begin()?;
        t.scratch = true;
        Ok(t)
    }
}

/// A write transaction on the replica index.
pub struct IndexTxn<'a> {
    index: &'a ReplicaIndex,
    txn: Option<WriteTransaction>,
    writes: usize,
    /// Never committed (see [`ReplicaIndex::begin_scratch`]).
    scratch: bool,
    /// Writes not yet in `txn`; reads look here first.
    pending: Pending,
    /// The last record decoded for a group lookup (large files have many groups).
    cached: std::cell::RefCell<Option<(String, std::rc::Rc<FileRecord>)>>,
    /// The last whole-file lookup and its answer, until the next write: a
    /// one-chunk file's id is looked up as a file, then as a chunk.
    last_whole: std::cell::RefCell<Option<(Hash, Option<String>)>>,
}

impl IndexTxn<'_> {
    fn err(&self, e: impl std::fmt::Display) -> Error {
        index_err(&self.index.path, e)
    }

    fn txn(&self) -> &WriteTransaction {
        self.txn
            .as_ref()
            .expect("transaction is open until dropped")
    }

    pub fn file(&self, path: &str) -> Result<Option<FileRecord>> {
        if let Some(held) = self.pending.files.get(path) {
            return Ok(held.clone());
        }
        let t = self.txn().open_table(FILES).map_err(|e| self.err(e))?;
        let v = t.get(path).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| postcard::from_bytes(v.value()).ok()))
    }

    /// The chunk table's entry for `hash` (not one-chunk files).
    fn chunk_entry(&self, hash: &Hash) -> Result<Option<ChunkLoc>> {
        if let Some(held) = self.pending.chunks.get(hash) {
            return Ok(held.clone());
        }
        let t = self.txn().open_table(CHUNKS).map_err(|e| self.err(e))?;
        let v = t.get(&hash.0[..]).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| postcard::from_bytes(v.value()).ok()))
    }

    pub fn find_chunk(&self, hash: &Hash) -> Result<Option<ChunkLoc>> {
        let found = self.chunk_entry(hash)?;
        if found.is_some() {
            return Ok(found);
        }
        // One-chunk files are findable by their file id only.
        let Some(path) = self.find_whole(hash)? else {
            return Ok(None);
        };
        Ok(self
            .file(&path)?
            .and_then(|rec| match rec.digest.chunks[..] {
                [c] if c.hash == *hash => Some(ChunkLoc {
                    path,
                    offset: 0,
                    len: c.len,
                }),
                _ => None,
            }))
    }

    pub fn find_whole(&self, hash: &Hash) -> Result<Option<String>> {
        if let Some(held) = self.pending.whole.get(hash) {
            return Ok(held.clone());
        }
        if let Some((h, found)) = &*self.last_whole.borrow() {
            if h == hash {
                return Ok(found.clone());
            }
        }
        let found = {
            let t = self.txn().open_table(WHOLE).map_err(|e| self.err(e))?;
            let v = t.get(&hash.0[..]).map_err(|e| self.err(e))?;
            v.map(|v| v.value().to_string())
        };
        *self.last_whole.borrow_mut() = Some((*hash, found.clone()));
        Ok(found)
    }

    fn group_entry(&self, hash: &Hash) -> Result<Option<GroupLoc>> {
        if let Some(held) = self.pending.groups.get(hash) {
            return Ok(held.clone());
        }
        let t = self.txn().open_table(GROUPS).map_err(|e| self.err(e))?;
        let v = t.get(&hash.0[..]).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| postcard::from_bytes(v.value()).ok()))
    }

    /// The chunk list of a group, if some indexed file still holds it.
    pub fn find_group(&self, hash: &Hash) -> Result<Option<Vec<ChunkRef>>> {
        let Some(loc) = self.group_entry(hash)? else {
            return Ok(None);
        };
        let hit = self
            .cached
            .borrow()
            .as_ref()
            .filter(|(p, _)| *p == loc.path)
            .map(|(_, r)| r.clone());
        let rec = match hit {
            Some(r) => r,
            None => {
                let Some(rec) = self.file(&loc.path)? else {
                    return Ok(None);
                };
                let rec = std::rc::Rc::new(rec);
                *self.cached.borrow_mut() = Some((loc.path.clone(), rec.clone()));
                rec
            }
        };
        let (a, n) = (loc.first as usize, loc.count as usize);
        let Some(run) = rec.digest.chunks.get(a..a + n) else {
            return Ok(None);
        };
        Ok((crate::chunk::group_hash(run) == *hash).then(|| run.to_vec()))
    }

    /// Records a file and makes its chunks, groups and whole hash findable.
    pub fn put_file(&mut self, path: &str, rec: &FileRecord) -> Result<()> {
        self.remove_file(path)?;
        let held = &mut self.pending;
        held.files.insert(path.to_string(), Some(rec.clone()));
        if !one_chunk(rec) {
            let offs = offsets(&rec.digest.chunks);
            for (c, off) in rec.digest.chunks.iter().zip(offs) {
                let loc = ChunkLoc {
                    path: path.to_string(),
                    offset: off,
                    len: c.len,
                };
                held.chunks.insert(c.hash, Some(loc));
            }
        }
        held.whole.insert(rec.digest.hash, Some(path.to_string()));
        if rec.digest.chunks.len() > INLINE_CHUNKS {
            let mut first = 0u32;
            for g in groups(&rec.digest.chunks) {
                let loc = GroupLoc {
                    path: path.to_string(),
                    first,
                    count: g.count,
                };
                held.groups.insert(g.hash, Some(loc));
                first += g.count;
            }
        }
        self.writes += 1;
        self.flush_if_full()
    }

    /// Forgets a file, and every reverse entry that pointed into it.
    pub fn remove_file(&mut self, path: &str) -> Result<()> {
        *self.cached.borrow_mut() = None;
        *self.last_whole.borrow_mut() = None;
        let Some(rec) = self.file(path)? else {
            return Ok(());
        };
        self.pending.files.insert(path.to_string(), None);
        if !one_chunk(&rec) {
            for c in &rec.digest.chunks {
                if self.chunk_entry(&c.hash)?.is_some_and(|l| l.path == path) {
                    self.pending.chunks.insert(c.hash, None);
                }
            }
        }
        if self.find_whole(&rec.digest.hash)?.is_some_and(|p| p == path) {
            self.pending.whole.insert(rec.digest.hash, None);
        }
        *self.last_whole.borrow_mut() = None;
        self.writes += 1;
        self.flush_if_full()
    }

    /// Renames a file's record (after a rename on disk), keeping its digest.
    pub fn rename_file(
        &mut self,
        from: &str,
        to: &str,
        mut rec: FileRecord,
        version: Version,
    ) -> Result<()> {
        self.remove_file(from)?;
        rec.version = version;
        self.put_file(to, &rec)
    }

    /// The keys of the file records strictly below `prefix` (and `prefix`
    /// itself with `with_self`).
    fn keys_below(&mut self, prefix: &str, with_self: bool) -> Result<Vec<String>> {
        self.flush()?;
        let t = self.txn().open_table(FILES).map_err(|e| self.err(e))?;
        let start = format!("{prefix}/");
        let end = format!("{prefix}0"); // '0' follows '/'
        let mut keys: Vec<String> = t
            .range(start.as_str()..end.as_str())
            .map_err(|e| self.err(e))?
            .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
            .collect();
        if with_self && t.get(prefix).map_err(|e| self.err(e))?.is_some() {
            keys.push(prefix.to_string());
        }
        Ok(keys)
    }

    /// Removes every record at or below `prefix` (a removed directory).
    pub fn remove_tree(&mut self, prefix: &str) -> Result<()> {
        for k in self.keys_below(prefix, true)? {
            self.remove_file(&k)?;
        }
        Ok(())
    }

    /// Re-keys every record at or below `from` to the same place below `to`
    /// (after a directory rename on disk).
    pub fn rename_tree(&mut self, from: &str, to: &str) -> Result<()> {
        for k in self.keys_below(from, false)? {
            if let Some(rec) = self.file(&k)? {
                let new_key = format!("{to}{}", &k[from.len()..]);
                self.remove_file(&k)?;
                self.put_file(&new_key, &rec)?;
            }
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<()> {
        if self.pending.len() >= MAX_HELD {
            self.flush()?;
        }
        Ok(())
    }

    /// Moves the held writes into the redb transaction, table by table in
    /// key order.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.pending);
        let txn = self.txn.as_ref().expect("transaction is open until dropped");
        let e = |e: redb::Error| index_err(&self.index.path, e);
        if !held.files.is_empty() {
            let mut t = txn.open_table(FILES).map_err(|x| e(x.into()))?;
            for (k, v) in held.files {
                match v {
                    Some(rec) => {
                        let bytes = postcard::to_stdvec(&rec).expect("records encode");
                        t.insert(k.as_str(), bytes.as_slice())
                            .map_err(|x| e(x.into()))?;
                    }
                    None => {
                        t.remove(k.as_str()).map_err(|x| e(x.into()))?;
                    }
                }
            }
        }
        put_all(txn, CHUNKS, sorted(held.chunks), &e)?;
        if !held.whole.is_empty() {
            let mut t = txn.open_table(WHOLE).map_err(|x| e(x.into()))?;
            for (k, v) in sorted(held.whole) {
                match v {
                    Some(p) => t.insert(&k.0[..], p.as_str()).map(drop),
                    None => t.remove(&k.0[..]).map(drop),
                }
                .map_err(|x| e(x.into()))?;
            }
        }
        put_all(txn, GROUPS, sorted(held.groups), &e)?;
        Ok(())
    }

    /// Commits if many writes piled up since the last commit.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.writes >= CHECKPOINT_WRITES && !self.scratch {
            self.commit_and_continue()?;
        }
        Ok(())
    }

    fn commit_and_continue(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(t) = self.txn.take() {
            t.commit().map_err(|e| self.err(e))?;
        }
        let mut t = self.index.db.begin_write().map_err(|e| self.err(e))?;
        // Checkpoints bound the pages a transaction keeps dirty in memory;
        // they need not reach the disk: the end of the pass commits durably,
        // and a checkpoint lost in a crash only costs dedup hints.
        t.set_durability(redb::Durability::Eventual);
        self.txn = Some(t);
        self.writes = 0;
        Ok(())
    }

    /// Commits durably (the pass is over).
    pub fn commit(mut self) -> Result<()> {
        if self.scratch {
            return Ok(()); // dropped: aborted
        }
        self.flush()?;
        if let Some(mut t) = self.txn.take() {
            t.set_durability(redb::Durability::Immediate);
            t.commit().map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}

/// Writes one table's held entries (postcard-encoded values; `None`
/// removes).
fn put_all<V: serde::Serialize>(
    txn: &WriteTransaction,
    table: redb::TableDefinition<&[u8], &[u8]>,
    entries: Vec<(Hash, Option<V>)>,
    e: &dyn Fn(redb::Error) -> Error,
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut t = txn.open_table(table).map_err(|x| e(x.into()))?;
    for (k, v) in entries {
        match v {
            Some(v) => {
                let bytes = postcard::to_stdvec(&v).expect("locations encode");
                t.insert(&k.0[..], bytes.as_slice()).map(drop)
            }
            None => t.remove(&k.0[..]).map(drop),
        }
        .map_err(|x| e(x.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod held_tests;
