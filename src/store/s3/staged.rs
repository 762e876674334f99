//! Files being written: staged in a spool file in the server's state
//! directory (nothing of replica's own appears under the prefix), read
//! back for verification, and sent to the store at publication. Reading a
//! replica object is a ranged GET per read.

use super::client::Conn;
use crate::store::{local::pread, ReadAt, Staged};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A file staged in the spool directory.
pub struct S3Staged {
    pub file: std::fs::File,
    pub path: PathBuf,
    key: String,
    /// Sent (or handed over): the spool file is no longer removed on drop.
    pub done: bool,
}

impl S3Staged {
    pub fn create(spool: &Path, key: &str) -> io::Result<S3Staged> {
        std::fs::create_dir_all(spool)?;
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = spool.join(format!("{}-{n}", std::process::id()));
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(S3Staged {
                        file,
                        path,
                        key: crate::store::beside(key, &format!(".replica-spool-{n}")),
                        done: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The same spool file under a new owner (resuming a partial).
    pub fn take_over(mut self) -> io::Result<S3Staged> {
        self.done = true;
        if !self.path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the kept partial file is no longer in place",
            ));
        }
        Ok(S3Staged {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            key: self.key.clone(),
            done: false,
        })
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Drop for S3Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ReadAt for S3Staged {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        pread(&self.file, buf, offset)
    }
}

impl Staged for S3Staged {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        crate::store::local::pwrite_all(&self.file, buf, offset)
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// Objects up to this size are read whole by their first read.
const READ_WHOLE: u64 = 4 << 20;

/// An object of the replica, read by ranged GETs (a small one whole, once).
pub struct S3Reader {
    pub conn: Arc<Conn>,
    pub object: String,
    pub size: u64,
    pub whole: std::sync::OnceLock<Vec<u8>>,
}

impl S3Reader {
    pub fn new(conn: Arc<Conn>, object: String, size: u64) -> S3Reader {
        S3Reader {
            conn,
            object,
            size,
            whole: std::sync::OnceLock::new(),
        }
    }
}

impl ReadAt for S3Reader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        if self.size <= READ_WHOLE {
            if self.whole.get().is_none() {
                let all = self.get(0, self.size - 1)?;
                let _ = self.whole.set(all);
            }
            let all = self.whole.get().expect("set above");
            let from = (offset as usize).min(all.len());
            let n = buf.len().min(all.len() - from);
            buf[..n].copy_from_slice(&all[from..from + n]);
            return Ok(n);
        }
        let end = (offset + buf.len() as u64).min(self.size) - 1;
        let bytes = self.get(offset, end)?;
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(n)
    }
}

impl S3Reader {
    /// Bytes `first..=last` of the object.
    fn get(&self, first: u64, last: u64) -> io::Result<Vec<u8>> {
        let conn = &self.conn;
        conn.run(async {
            let r = conn
                .client
                .get_object()
                .bucket(&conn.bucket)
                .key(&self.object)
                .range(format!("bytes={first}-{last}"))
                .send()
                .await
                .map_err(|e| conn.error(e))?;
            let b = r.body.collect().await.map_err(io::Error::other)?;
            Ok::<_, io::Error>(b.into_bytes().to_vec())
        })
    }
}
