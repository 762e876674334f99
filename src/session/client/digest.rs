//! Reading a source file's digest: from the source index when size, mtime
//! and inode are unchanged, else by reading it (again if it changed while
//! being read). In watch mode a large file's digest may stop halfway to let
//! newer changes through, and resume in a later pass.

use super::{KEEP_SMALL, PREEMPT_AFTER, PREEMPT_MIN};
use crate::chunk::{digest_ahead, Digest, DigestState};
use crate::error::describe_io;
use crate::index::FileRecord;
use crate::tree::scan::mtime_of;
use crate::tree::Version;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A file's digest, its record for the source index, and its bytes (small
/// files); `None` when it stepped aside; `Err` says why it could not be read.
pub(super) type DigestResult =
    std::result::Result<Option<(Digest, Option<FileRecord>, Option<Vec<u8>>)>, String>;

/// A large file's digest interrupted to let newer changes through (watch
/// mode), resumed by the next pass if the file is still the same.
pub struct SavedDigest {
    size: u64,
    mtime: crate::tree::Timestamp,
    ino: u64,
    state: DigestState,
}

/// Digests set aside, by key.
pub type SavedDigests = std::sync::Mutex<HashMap<String, SavedDigest>>;

/// Most digests kept set aside at once.
const MAX_SAVED_DIGESTS: usize = 8;

/// What may interrupt a large file's digest: the flag saying newer changes
/// wait, and where interrupted digests are kept.
#[derive(Clone, Copy)]
pub struct StepAside<'a> {
    pub waiting: &'a AtomicBool,
    pub saved: &'a SavedDigests,
}

/// Reads and digests a file, re-reading it if it changed meanwhile. With
/// `aside`, a large file's digest may stop halfway when newer changes wait
/// (`Ok(None)`), to resume in a later pass.
pub(super) fn read_digest_or_step_aside(
    path: &PathBuf,
    key: &str,
    aside: Option<StepAside>,
) -> DigestResult {
    let started = Instant::now();
    for _ in 0..3 {
        let mut file = std::fs::File::open(path).map_err(|e| describe_io(&e))?;
        let before = file.metadata().map_err(|e| describe_io(&e))?;
        let (digest, data) = if before.len() <= KEEP_SMALL {
            let mut data = Vec::with_capacity(before.len() as usize + 1);
            std::io::Read::read_to_end(&mut file, &mut data).map_err(|e| describe_io(&e))?;
            (crate::chunk::digest_bytes(&data), Some(data))
        } else if let Some(aside) = aside.filter(|_| before.len() >= PREEMPT_MIN) {
            let (mtime, ino) = (mtime_of(&before), crate::tree::scan::local_of(&before).ino);
            let mut saved = aside.saved.lock().unwrap_or_else(|e| e.into_inner());
            let state = match saved.remove(key) {
                Some(s) if s.size == before.len() && s.mtime == mtime && s.ino == ino => s.state,
                _ => DigestState::default(),
            };
            drop(saved);
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(state.offset))
                .map_err(|e| describe_io(&e))?;
            let stop =
                || aside.waiting.load(Ordering::Relaxed) && started.elapsed() >= PREEMPT_AFTER;
            match digest_ahead(&file, before.len(), state, &stop).map_err(|e| describe_io(&e))? {
                Ok(d) => (d, None),
                Err(state) => {
                    let mut saved = aside.saved.lock().unwrap_or_else(|e| e.into_inner());
                    if saved.len() < MAX_SAVED_DIGESTS {
                        let size = before.len();
                        saved.insert(
                            key.to_string(),
                            SavedDigest {
                                size,
                                mtime,
                                ino,
                                state,
                            },
                        );
                    }
                    return Ok(None);
                }
            }
        } else {
            let d = digest_ahead(&file, before.len(), DigestState::default(), &|| false)
                .map_err(|e| describe_io(&e))?;
            (
                d.unwrap_or_else(|_| unreachable!("never asked to stop")),
                None,
            )
        };
        let after = std::fs::metadata(path).map_err(|e| describe_io(&e))?;
        let stable = before.len() == after.len()
            && mtime_of(&before) == mtime_of(&after)
            && digest.size == after.len()
            && crate::tree::scan::local_of(&before) == crate::tree::scan::local_of(&after);
        if stable {
            let rec = FileRecord {
                size: digest.size,
                mtime: mtime_of(&after),
                version: Version(crate::tree::scan::local_of(&after).ino),
                digest: digest.clone(),
            };
            return Ok(Some((digest, Some(rec), data)));
        }
    }
    Err("it kept changing while being read".into())
}

/// Reads `len` bytes of a source file at `offset` into a new buffer,
/// which is not zeroed first (a megabyte run at a time, that was a memset
/// of every byte sent).
pub(super) fn read_vec_at(
    file: &std::fs::File,
    len: usize,
    offset: u64,
) -> std::io::Result<Vec<u8>> {
    #[cfg(unix)]
    {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            let at = offset + v.len() as u64;
            match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut v), at) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The capacity may exceed `len`: what was read beyond goes.
        v.truncate(len);
        Ok(v)
    }
    #[cfg(windows)]
    {
        let mut v = vec![0u8; len];
        read_exact_at(file, &mut v, offset)?;
        Ok(v)
    }
}

/// Reads exactly `buf.len()` bytes of a source file at `offset`.
#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        let n = file.seek_read(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
    }
    Ok(())
}
