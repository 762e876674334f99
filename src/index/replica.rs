//! The server's index of the replica's content, written in one
//! transaction per pass.

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
        let t = self.txn().open_table(FILES).map_err(|e| self.err(e))?;
        let v = t.get(path).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| postcard::from_bytes(v.value()).ok()))
    }

    pub fn find_chunk(&self, hash: &Hash) -> Result<Option<ChunkLoc>> {
        let found = {
            let t = self.txn().open_table(CHUNKS).map_err(|e| self.err(e))?;
            let v = t.get(&hash.0[..]).map_err(|e| self.err(e))?;
            v.and_then(|v| postcard::from_bytes(v.value()).ok())
        };
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

    /// The chunk list of a group, if some indexed file still holds it.
    pub fn find_group(&self, hash: &Hash) -> Result<Option<Vec<ChunkRef>>> {
        let loc: Option<GroupLoc> = {
            let t = self.txn().open_table(GROUPS).map_err(|e| self.err(e))?;
            let v = t.get(&hash.0[..]).map_err(|e| self.err(e))?;
            v.and_then(|v| postcard::from_bytes(v.value()).ok())
        };
        let Some(loc) = loc else { return Ok(None) };
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
        *self.cached.borrow_mut() = None;
        *self.last_whole.borrow_mut() = None;
        self.remove_file(path)?;
        let txn = self.txn.as_ref().unwrap();
        let e = |e: redb::Error| index_err(&self.index.path, e);
        {
            let mut files = txn.open_table(FILES).map_err(|x| e(x.into()))?;
            files
                .insert(path, postcard::to_stdvec(rec).unwrap().as_slice())
                .map_err(|x| e(x.into()))?;
        }
        if !one_chunk(rec) {
            let mut chunks = txn.open_table(CHUNKS).map_err(|x| e(x.into()))?;
            let offs = offsets(&rec.digest.chunks);
            for (c, off) in rec.digest.chunks.iter().zip(offs) {
                let loc = ChunkLoc {
                    path: path.to_string(),
                    offset: off,
                    len: c.len,
                };
                chunks
                    .insert(&c.hash.0[..], postcard::to_stdvec(&loc).unwrap().as_slice())
                    .map_err(|x| e(x.into()))?;
            }
        }
        {
            let mut whole = txn.open_table(WHOLE).map_err(|x| e(x.into()))?;
            whole
                .insert(&rec.digest.hash.0[..], path)
                .map_err(|x| e(x.into()))?;
        }
        if rec.digest.chunks.len() > INLINE_CHUNKS {
            let mut gt = txn.open_table(GROUPS).map_err(|x| e(x.into()))?;
            let mut first = 0u32;
            for g in groups(&rec.digest.chunks) {
                let loc = GroupLoc {
                    path: path.to_string(),
                    first,
                    count: g.count,
                };
                gt.insert(&g.hash.0[..], postcard::to_stdvec(&loc).unwrap().as_slice())
                    .map_err(|x| e(x.into()))?;
                first += g.count;
            }
        }
        self.writes += 1;
        Ok(())
    }

    /// Forgets a file, and every reverse entry that pointed into it.
    pub fn remove_file(&mut self, path: &str) -> Result<()> {
        *self.cached.borrow_mut() = None;
        *self.last_whole.borrow_mut() = None;
        let Some(rec) = self.file(path)? else {
            return Ok(());
        };
        let txn = self.txn.as_ref().unwrap();
        let e = |e: redb::Error| index_err(&self.index.path, e);
        txn.open_table(FILES)
            .map_err(|x| e(x.into()))?
            .remove(path)
            .map_err(|x| e(x.into()))?;
        if !one_chunk(&rec) {
            let mut chunks = txn.open_table(CHUNKS).map_err(|x| e(x.into()))?;
            for c in &rec.digest.chunks {
                let points_here = chunks
                    .get(&c.hash.0[..])
                    .map_err(|x| e(x.into()))?
                    .and_then(|v| postcard::from_bytes::<ChunkLoc>(v.value()).ok())
                    .is_some_and(|l| l.path == path);
                if points_here {
                    chunks.remove(&c.hash.0[..]).map_err(|x| e(x.into()))?;
                }
            }
        }
        {
            let mut whole = txn.open_table(WHOLE).map_err(|x| e(x.into()))?;
            let here = whole
                .get(&rec.digest.hash.0[..])
                .map_err(|x| e(x.into()))?
                .is_some_and(|v| v.value() == path);
            if here {
                whole
                    .remove(&rec.digest.hash.0[..])
                    .map_err(|x| e(x.into()))?;
            }
        }
        self.writes += 1;
        Ok(())
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

    /// Removes every record at or below `prefix` (a removed directory).
    pub fn remove_tree(&mut self, prefix: &str) -> Result<()> {
        let keys: Vec<String> = {
            let t = self.txn().open_table(FILES).map_err(|e| self.err(e))?;
            let start = format!("{prefix}/");
            let end = format!("{prefix}0"); // '0' follows '/'
            let mut keys: Vec<String> = t
                .range(start.as_str()..end.as_str())
                .map_err(|e| self.err(e))?
                .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
                .collect();
            if t.get(prefix).map_err(|e| self.err(e))?.is_some() {
                keys.push(prefix.to_string());
            }
            keys
        };
        for k in keys {
            self.remove_file(&k)?;
        }
        Ok(())
    }

    /// Re-keys every record at or below `from` to the same place below `to`
    /// (after a directory rename on disk).
    pub fn rename_tree(&mut self, from: &str, to: &str) -> Result<()> {
        let keys: Vec<String> = {
            let t = self.txn().open_table(FILES).map_err(|e| self.err(e))?;
            let start = format!("{from}/");
            let end = format!("{from}0");
            t.range(start.as_str()..end.as_str())
                .map_err(|e| self.err(e))?
                .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
                .collect()
        };
        for k in keys {
            if let Some(rec) = self.file(&k)? {
                let new_key = format!("{to}{}", &k[from.len()..]);
                self.remove_file(&k)?;
                self.put_file(&new_key, &rec)?;
            }
        }
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
        if let Some(mut t) = self.txn.take() {
            t.set_durability(redb::Durability::Immediate);
            t.commit().map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}
