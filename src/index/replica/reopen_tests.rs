//! An index whose device failed (a full disk) is opened again before the
//! next session instead of refusing every pass until the server restarts.

use super::*;
use crate::chunk::digest_bytes;
use crate::tree::Timestamp;
use redb::backends::FileBackend;
use redb::StorageBackend;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// The real file backend, with writes and syncs that fail while `fail` is set.
#[derive(Debug)]
struct Flaky {
    inner: FileBackend,
    fail: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> io::Result<()> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected: no space left on device"));
        }
        Ok(())
    }
}

impl StorageBackend for Flaky {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.check()?;
        self.inner.sync_data(eventual)
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

fn rec(data: &[u8]) -> FileRecord {
    FileRecord {
        size: data.len() as u64,
        mtime: Timestamp::default(),
        version: Version(1),
        digest: digest_bytes(data),
    }
}

/// `path`'s index, opened through a backend whose writes fail on demand.
fn flaky_index(path: &Path, fail: Arc<AtomicBool>) -> ReplicaIndex {
    drop(ReplicaIndex::open(path).unwrap()); // created with its version
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let backend = Flaky {
        inner: FileBackend::new(file).unwrap(),
        fail,
    };
    let db = redb::Builder::new().create_with_backend(backend).unwrap();
    ReplicaIndex {
        db: Arc::new(db),
        path: path.to_path_buf(),
        rebuilt: None,
        written: Mutex::new(None),
        detached: false,
    }
}

#[test]
fn a_failed_index_is_opened_again_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.redb");
    let fail = Arc::new(AtomicBool::new(false));
    let mut idx = flaky_index(&path, fail.clone());
    let (kept, lost) = (rec(b"committed before the failure"), rec(b"lost"));

    let mut t = idx.begin().unwrap();
    t.put_file("kept", &kept).unwrap();
    t.commit().unwrap();
    assert!(
        !idx.reopen_if_failed().unwrap(),
        "a healthy index stays open"
    );

    fail.store(true, Ordering::Relaxed);
    let failed = idx.begin().and_then(|mut t| {
        t.put_file("lost", &lost)?;
        t.commit()
    });
    assert!(failed.is_err(), "the injected failure reaches the pass");

    // The cause is gone (space freed), yet redb refuses every transaction
    // until the file is opened again; the next session does that.
    fail.store(false, Ordering::Relaxed);
    let refused = idx.begin().and_then(|t| t.commit()).unwrap_err();
    assert!(refused.to_string().contains("re-open"), "{refused}");
    assert!(idx.reopen_if_failed().unwrap());
    assert!(!idx.reopen_if_failed().unwrap());
    let mut t = idx.begin().unwrap();
    assert_eq!(t.file("kept").unwrap(), Some(kept.clone()));
    assert_eq!(t.file("lost").unwrap(), None);
    t.put_file("after", &lost).unwrap();
    t.commit().unwrap();
    let t = idx.begin().unwrap();
    assert_eq!(t.file("after").unwrap(), Some(lost));
}
