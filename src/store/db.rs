//! A redb database of a store's state (the S3 store's view of its bucket,
//! a dry run's picture of the replica), written in
//! transactions of at most [`CHECKPOINT`] writes committed without syncing
//! (a commit frees the transaction's dirty pages), so what a store knows
//! of a tree of any size stays on disk and memory stays bounded: redb's
//! page cache plus the dirty pages of one transaction.

use redb::{Database, WriteTransaction};
use std::io;
use std::path::{Path, PathBuf};

/// Writes between commits.
pub(crate) const CHECKPOINT: usize = 4096;

pub struct Db {
    db: Database,
    path: PathBuf,
    txn: Option<WriteTransaction>,
    writes: usize,
}

impl Drop for Db {
    /// The open transaction is committed (unsynced) before the database
    /// closes, or aborted when it wrote nothing: redb's close waits for
    /// every write transaction to end.
    fn drop(&mut self) {
        if let Some(t) = self.txn.take() {
            if self.writes > 0 {
                let _ = t.commit();
            }
            // Else nothing to keep: dropped, it aborts.
        }
    }
}

/// A file for redb whose syncs do nothing (for [`Db::scratch`]).
#[derive(Debug)]
struct Unsynced(redb::backends::FileBackend);

impl redb::StorageBackend for Unsynced {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.0.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self, _eventual: bool) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }
}

/// A redb error as one line naming the file.
pub fn err(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{}: {e}", path.display()))
}

impl Db {
    /// Opens the database at `path` (`fresh`: replaces whatever is there;
    /// an unreadable file is replaced too, what it held being a hint).
    pub fn open(path: &Path, cache_bytes: usize, fresh: bool) -> io::Result<Db> {
        if fresh {
            let _ = std::fs::remove_file(path);
        }
        let build = || {
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(path)
        };
        Db::open_with(path, fresh, build)
    }

    /// A fresh database at `path` that is never synced to disk: scratch
    /// made again by every process that opens it (a crash leaves a file
    /// the next open replaces), so it costs no fsync, at its creation,
    /// its commits or its close.
    pub fn scratch(path: &Path, cache_bytes: usize) -> io::Result<Db> {
        let _ = std::fs::remove_file(path);
        let build = || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)?;
            let backend = Unsynced(redb::backends::FileBackend::new(file)?);
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create_with_backend(backend)
        };
        Db::open_with(path, true, build)
    }

    fn open_with(
        path: &Path,
        fresh: bool,
        build: impl Fn() -> Result<Database, redb::DatabaseError>,
    ) -> io::Result<Db> {
        let db = match build() {
            Ok(db) => db,
            Err(_) if !fresh => {
                let _ = std::fs::remove_file(path);
                build().map_err(|e| err(path, e))?
            }
            Err(e) => return Err(err(path, e)),
        };
        let mut d = Db {
            db,
            path: path.to_path_buf(),
            txn: None,
            writes: 0,
        };
        d.begin()?;
        Ok(d)
    }

    fn begin(&mut self) -> io::Result<()> {
        let mut t = self.db.begin_write().map_err(|e| err(&self.path, e))?;
        t.set_durability(redb::Durability::None);
        self.txn = Some(t);
        self.writes = 0;
        Ok(())
    }

    /// The open transaction (reads see its writes).
    pub fn txn(&self) -> &WriteTransaction {
        self.txn.as_ref().expect("a transaction is open")
    }

    /// Counts a write; commits every [`CHECKPOINT`] writes.
    pub fn wrote(&mut self) -> io::Result<()> {
        self.wrote_many(1)
    }

    /// Counts `n` writes (of one batch: at most a page of the listing and
    /// its parents); commits once [`CHECKPOINT`] are reached.
    pub fn wrote_many(&mut self, n: usize) -> io::Result<()> {
        self.writes += n;
        if self.writes >= CHECKPOINT {
            self.commit(false)?;
        }
        Ok(())
    }

    /// Commits what was written (`durable`: synced to disk) and begins
    /// the next transaction.
    pub fn commit(&mut self, durable: bool) -> io::Result<()> {
        if let Some(mut t) = self.txn.take() {
            if durable {
                t.set_durability(redb::Durability::Immediate);
            }
            t.commit().map_err(|e| err(&self.path, e))?;
        }
        self.begin()
    }

    /// The database's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A redb error of this database as one line.
    pub fn err(&self, e: impl std::fmt::Display) -> io::Error {
        err(&self.path, e)
    }
}
