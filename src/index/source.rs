//! The client's index of source files it has already digested, written
//! by a thread of its own while a pass goes on.

use super::{index_err, open_db, FileRecord, FILES};
use crate::chunk::Digest;
use crate::error::{Error, Result};
use crate::tree::{Timestamp, Version};
use redb::{Database, WriteTransaction};
use std::path::{Path, PathBuf};

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
