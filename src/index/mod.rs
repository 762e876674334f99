//! Persistent indexes, kept in redb databases outside the trees they describe.
//!
//! - [`ReplicaIndex`] (server side): for each replica file, the stat it had
//!   when indexed and its digest; plus reverse maps from chunk hashes,
//!   group hashes and file ids to a place in the replica that holds them. Entries are
//!   hints: every use re-checks the stat or the bytes, so a replica edited
//!   behind the server's back still converges.
//! - [`SourceIndex`] (client side): for each source file, the stat it had and
//!   its digest, so an unchanged file (same size, mtime and inode) is never
//!   read again.
//!
//! The replica index's writes are held in memory and handed every 2,000
//! writes to a thread of its own, which writes each batch sorted and
//! commits it (so a kill loses little, and leaves the index as of a
//! checkpoint); the pass's end commits durably. The source index is
//! written by a thread of its own while the pass goes on (committed every
//! 50,000 records and at the end). A database that cannot
//! be opened, or was written by another format version, is rebuilt.

use crate::chunk::{Digest, CHUNKER_VERSION};
use crate::error::{Error, Result};
use crate::tree::{Timestamp, Version};
use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

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

/// A file of one chunk: its chunk hash is its file id, so the
/// whole-file table alone finds it (half the index writes for small files).
fn one_chunk(rec: &FileRecord) -> bool {
    matches!(rec.digest.chunks[..], [c] if c.hash == rec.digest.hash)
}

mod fresh;
mod pending;
mod replica;
mod source;
mod writer;

pub use replica::{DryIndex, IndexTxn, ReplicaIndex};
pub use source::{SourceIndex, SourceWriter};

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

    /// A lookup answered from memory is never older than the last write.
    #[test]
    fn whole_file_lookups_see_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let idx = ReplicaIndex::open(&dir.path().join("i.redb")).unwrap();
        let r = rec(b"same content");
        let mut t = idx.begin().unwrap();
        assert_eq!(t.find_whole(&r.digest.hash).unwrap(), None);
        t.put_file("a", &r).unwrap();
        assert_eq!(t.find_whole(&r.digest.hash).unwrap().as_deref(), Some("a"));
        t.remove_file("a").unwrap();
        assert_eq!(t.find_whole(&r.digest.hash).unwrap(), None);
        t.put_file("b", &r).unwrap();
        assert!(t.find_chunk(&r.digest.hash).unwrap().is_some());
        t.rename_file("b", "c", r.clone(), Version(2)).unwrap();
        assert_eq!(t.find_whole(&r.digest.hash).unwrap().as_deref(), Some("c"));
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

    /// An index written under chunking scheme 1 (files named by their
    /// content hash) is not trusted: it is rebuilt empty, on both sides.
    #[test]
    fn an_index_of_the_previous_chunking_scheme_is_rebuilt() {
        assert_eq!(CHUNKER_VERSION, 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.redb");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = rec(&data);
        // What scheme 1 recorded: the content hash as the file's name.
        r.digest.hash = crate::chunk::Hash::of(&data);
        {
            let idx = ReplicaIndex::open(&path).unwrap();
            let mut t = idx.begin().unwrap();
            t.put_file("old", &r).unwrap();
            t.commit().unwrap();
        }
        mark_scheme_1(&path);
        let idx = ReplicaIndex::open(&path).unwrap();
        assert!(idx.rebuilt.is_some());
        let t = idx.begin().unwrap();
        assert_eq!(t.file("old").unwrap(), None);
        assert_eq!(t.find_whole(&r.digest.hash).unwrap(), None);
        drop(t);
        drop(idx);
        // The source index opens the same way: the old record is gone.
        let src = dir.path().join("s.redb");
        {
            let idx = SourceIndex::open(&src).unwrap();
            let w = idx.writer();
            w.push(vec![("x".into(), r.clone())]);
            w.finish().unwrap();
        }
        mark_scheme_1(&src);
        let idx = SourceIndex::open(&src).unwrap();
        assert_eq!(idx.lookup("x", r.size, r.mtime, r.version), None);
    }

    /// Stamps an index as written under chunking scheme 1.
    fn mark_scheme_1(path: &Path) {
        let db = redb::Database::open(path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(META)
            .unwrap()
            .insert("version", INDEX_VERSION * 1000 + 1)
            .unwrap();
        w.commit().unwrap();
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
