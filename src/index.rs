//! Persistent indexes, kept in redb databases outside the trees they describe.
//!
//! - [`ReplicaIndex`] (server side): for each replica file, the stat it had
//!   when indexed and its digest; plus reverse maps from chunk, group and
//!   whole-file hashes to a place in the replica that holds them. Entries are
//!   hints: every use re-checks the stat or the bytes, so a replica edited
//!   behind the server's back still converges.
//! - [`SourceIndex`] (client side): for each source file, the stat it had and
//!   its digest, so an unchanged file (same size, mtime and inode) is never
//!   read again.
//!
//! The replica index is written in one transaction per pass (checkpointed
//! every 2,000 writes, so a kill loses little); the source index by a
//! thread of its own while the pass goes on (committed every 50,000
//! records and at the end). A database that cannot
//! be opened, or was written by another format version, is rebuilt.

use crate::chunk::{groups, offsets, ChunkRef, Digest, Hash, CHUNKER_VERSION, INLINE_CHUNKS};
use crate::error::{Error, Result};
use crate::tree::{Timestamp, Version};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunks");
const WHOLE: TableDefinition<&[u8], &str> = TableDefinition::new("whole");
const GROUPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("groups");
const META: TableDefinition<&str, u32> = TableDefinition::new("meta");

/// Version of the index layout; a mismatch rebuilds the index.
const INDEX_VERSION: u32 = 2;

/// What an index knows about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    pub mtime: Timestamp,
    /// The file's identity on its side (its inode on a local disk).
    pub version: Version,
    pub digest: Digest,
}

impl FileRecord {
    /// Whether the file is still the one indexed (rsync's quick check plus its version).
    pub fn matches(&self, size: u64, mtime: Timestamp, version: Version) -> bool {
        self.size == size && self.mtime == mtime && self.version.may_equal(version)
    }
}

/// Where a chunk can be read in the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    pub path: String,
    pub offset: u64,
    pub len: u32,
}

/// Where a group of chunks sits in the replica: `count` chunks of the file
/// at `path`, starting at chunk `first`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLoc {
    pub path: String,
    pub first: u32,
    pub count: u32,
}

fn index_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Index {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Index writes per transaction: a transaction keeps the pages it changed
/// in memory until it commits.
const CHECKPOINT_WRITES: usize = 2000;

/// redb's page cache. Its default (1 GiB) would let a million-file index
/// grow the process to a gigabyte; lookups are mostly sequential, so a small
/// cache costs little speed.
const CACHE_BYTES: usize = 8 << 20;

fn create(path: &Path) -> std::result::Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
}

/// Opens (or creates, or rebuilds) a database at `path`. Returns the
/// database and, if it had to be rebuilt, why.
fn open_db(path: &Path) -> Result<(Database, Option<String>)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut rebuilt = None;
    let db = match create(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(index_err(path, "already in use by another replica process"))
        }
        Err(e) => {
            rebuilt = Some(format!("could not be opened ({e})"));
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            create(path).map_err(|e| index_err(path, e))?
        }
    };
    let want = INDEX_VERSION * 1000 + CHUNKER_VERSION as u32;
    let version = {
        let r = db.begin_read().map_err(|e| index_err(path, e))?;
        match r.open_table(META) {
            Ok(t) => t
                .get("version")
                .map_err(|e| index_err(path, e))?
                .map(|v| v.value()),
            Err(_) => None,
        }
    };
    let db = match version {
        Some(v) if v == want => return Ok((db, rebuilt)),
        Some(_) => {
            rebuilt = Some("was written by another format version".into());
            drop(db);
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            create(path).map_err(|e| index_err(path, e))?
        }
        None => db,
    };
    let w = db.begin_write().map_err(|e| index_err(path, e))?;
    {
        let mut t = w.open_table(META).map_err(|e| index_err(path, e))?;
        t.insert("version", want).map_err(|e| index_err(path, e))?;
    }
    w.commit().map_err(|e| index_err(path, e))?;
    Ok((db, rebuilt))
}

/// A file of one chunk: its chunk hash is its whole-file hash, so the
/// whole-file table alone finds it (half the index writes for small files).
fn one_chunk(rec: &FileRecord) -> bool {
    matches!(rec.digest.chunks[..], [c] if c.hash == rec.digest.hash)
}

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
        // One-chunk files are findable by their whole-file hash only.
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
        let t = self.txn().open_table(WHOLE).map_err(|e| self.err(e))?;
        let v = t.get(&hash.0[..]).map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.value().to_string()))
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

/// The client's index of source files it has already digested.
pub struct SourceIndex {
    db: std::sync::Arc<Database>,
    path: PathBuf,
}

/// Records written by a thread of their own while a pass goes on (so a
/// million new records neither wait for the end of the pass nor sit in
/// memory until then). [`SourceWriter::finish`] commits.
pub struct SourceWriter {
    tx: Option<std::sync::mpsc::SyncSender<Vec<(String, FileRecord)>>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

/// Records per write transaction of a [`SourceWriter`].
const SOURCE_COMMIT_EVERY: usize = 50_000;

impl SourceWriter {
    /// Queues a batch (blocks briefly if the writer is behind).
    pub fn push(&self, batch: Vec<(String, FileRecord)>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(batch);
        }
    }

    /// Waits for everything queued to be committed.
    pub fn finish(mut self) -> Result<()> {
        self.tx.take();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Index {
                path: PathBuf::new(),
                reason: "source index writer crashed".into(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for SourceWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl SourceIndex {
    pub fn open(path: &Path) -> Result<Self> {
        let (db, _) = open_db(path)?;
        Ok(SourceIndex {
            db: std::sync::Arc::new(db),
            path: path.to_path_buf(),
        })
    }

    /// Starts a writer thread for this pass's new records.
    pub fn writer(&self) -> SourceWriter {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(String, FileRecord)>>(16);
        let db = self.db.clone();
        let path = self.path.clone();
        let thread = std::thread::spawn(move || -> Result<()> {
            let e = |e: redb::Error| index_err(&path, e);
            let mut pending = 0usize;
            let mut w: Option<WriteTransaction> = None;
            for batch in rx {
                let txn = match &mut w {
                    Some(t) => t,
                    None => w.insert(db.begin_write().map_err(|x| e(x.into()))?),
                };
                {
                    let mut t = txn.open_table(FILES).map_err(|x| e(x.into()))?;
                    for (p, rec) in &batch {
                        t.insert(p.as_str(), postcard::to_stdvec(rec).unwrap().as_slice())
                            .map_err(|x| e(x.into()))?;
                    }
                }
                pending += batch.len();
                if pending >= SOURCE_COMMIT_EVERY {
                    if let Some(t) = w.take() {
                        t.commit().map_err(|x| e(x.into()))?;
                    }
                    pending = 0;
                }
            }
            if let Some(t) = w.take() {
                t.commit().map_err(|x| e(x.into()))?;
            }
            Ok(())
        });
        SourceWriter {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// How many records the index holds.
    pub fn count(&self) -> u64 {
        use redb::ReadableTableMetadata;
        self.db
            .begin_read()
            .ok()
            .and_then(|r| r.open_table(FILES).ok())
            .and_then(|t| t.len().ok())
            .unwrap_or(0)
    }

    /// The digest of `path` if its stat still matches what was indexed.
    pub fn lookup(
        &self,
        path: &str,
        size: u64,
        mtime: Timestamp,
        version: Version,
    ) -> Option<Digest> {
        let r = self.db.begin_read().ok()?;
        let t = r.open_table(FILES).ok()?;
        let v = t.get(path).ok()??;
        let rec: FileRecord = postcard::from_bytes(v.value()).ok()?;
        rec.matches(size, mtime, version).then_some(rec.digest)
    }

    /// Drops records for paths no longer in the source.
    pub fn retain(&self, keep: &std::collections::HashSet<&str>) -> Result<()> {
        let e = |e: redb::Error| index_err(&self.path, e);
        let w = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut t = w.open_table(FILES).map_err(|x| e(x.into()))?;
            t.retain(|k, _| keep.contains(k)).map_err(|x| e(x.into()))?;
        }
        w.commit().map_err(|x| e(x.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::digest_bytes;

    fn rec(data: &[u8]) -> FileRecord {
        FileRecord {
            size: data.len() as u64,
            mtime: Timestamp::default(),
            version: Version(1),
            digest: digest_bytes(data),
        }
    }

    #[test]
    fn put_find_remove() {
        let dir = tempfile::tempdir().unwrap();
        let idx = ReplicaIndex::open(&dir.path().join("i.redb")).unwrap();
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let r = rec(&data);
        let mut t = idx.begin().unwrap();
        t.put_file("a/b", &r).unwrap();
        assert_eq!(t.file("a/b").unwrap(), Some(r.clone()));
        assert_eq!(
            t.find_whole(&r.digest.hash).unwrap().as_deref(),
            Some("a/b")
        );
        let loc = t.find_chunk(&r.digest.chunks[1].hash).unwrap().unwrap();
        assert_eq!(loc.offset, r.digest.chunks[0].len as u64);
        t.commit().unwrap();
        let mut t = idx.begin().unwrap();
        t.remove_tree("a").unwrap();
        assert_eq!(t.file("a/b").unwrap(), None);
        assert_eq!(t.find_whole(&r.digest.hash).unwrap(), None);
        assert_eq!(t.find_chunk(&r.digest.chunks[1].hash).unwrap(), None);
        t.commit().unwrap();
    }

    /// A one-chunk file has no chunk-table entry but is found as a chunk.
    #[test]
    fn one_chunk_file_is_found_as_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let idx = ReplicaIndex::open(&dir.path().join("i.redb")).unwrap();
        let r = rec(b"small file");
        assert_eq!(r.digest.chunks.len(), 1);
        let mut t = idx.begin().unwrap();
        t.put_file("d/s", &r).unwrap();
        let loc = t.find_chunk(&r.digest.chunks[0].hash).unwrap().unwrap();
        assert_eq!((loc.path.as_str(), loc.offset, loc.len), ("d/s", 0, 10));
        t.remove_file("d/s").unwrap();
        assert_eq!(t.find_chunk(&r.digest.chunks[0].hash).unwrap(), None);
        t.commit().unwrap();
    }

    #[test]
    fn source_index_quick_check() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SourceIndex::open(&dir.path().join("s.redb")).unwrap();
        let r = rec(b"hello");
        let w = idx.writer();
        w.push(vec![("x".into(), r.clone())]);
        w.finish().unwrap();
        assert_eq!(
            idx.lookup("x", 5, Timestamp::default(), Version(1)),
            Some(r.digest.clone())
        );
        assert_eq!(idx.lookup("x", 6, Timestamp::default(), Version(1)), None);
        assert_eq!(idx.lookup("x", 5, Timestamp::default(), Version(2)), None);
    }
}
