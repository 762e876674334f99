//! The replica's storage, behind one trait: everything a server session
//! does to a replica goes through [`Store`], so the session (planning,
//! dedup, verification, reports) never knows where the replica lives.
//!
//! - [`local`]: a directory on a local disk.
//! - [`s3`]: an S3 bucket under a prefix, laid out like rclone's copy of
//!   a directory (objects, `.rclonelink` symlinks, `dir/` markers, rclone's
//!   `mtime` and `mode` metadata).
//! - [`dry_run`]: a wrapper that reads through to another store and
//!   changes nothing (`--dry-run`): what the pass would change is noted
//!   in a scratch database on disk, which its later reads see.
//! - [`space`]: the free-space policy (`--min-free`) over a store's answer.
//!
//! # What a store must guarantee
//!
//! - **Keys** are `/`-joined relative paths of valid single components
//!   (`""` is the root). A store never resolves a key outside its replica:
//!   no `..`, no absolute paths, no link followed on the way (a link planted
//!   in the replica is an entry like any other, never a way out).
//! - **Atomic publication**: a staged file ([`Staged`]) is invisible under
//!   its key until [`Store::publish`], which makes the whole content, mode
//!   and mtime appear at once, replacing what was there. A reader sees the
//!   old version or the new one, never a mix. A staged file dropped
//!   unpublished leaves nothing behind (or only what [`Store::is_staging`]
//!   recognises, removed by a later pass).
//! - **Versions** ([`Version`]): [`Store::stat`] returns, with each file, an
//!   identity that changes whenever the content behind the key may have
//!   changed (a new inode, a new object generation). The session trusts its
//!   index of a file's content only while size, mtime and version match.
//! - **Capabilities** are honest: the session adapts to them (no rename
//!   shortcut where a rename is a copy, no symlinks where there are none).
//! - Errors are `std::io::Error`s with their kind set (`NotFound`,
//!   `NotADirectory`, `StorageFull`, …): the session reports them per entry.
//! - **Issue 17** (defaults: the store has none of it): hard links
//!   ([`Store::hard_link`], [`Store::file_links`], [`Store::take_linked`],
//!   [`Store::own_copy`]), `user.*` extended attributes
//!   ([`Store::set_xattrs`]), and `--versions` (a file removed or replaced is
//!   kept elsewhere; [`Store::take_retired`] says where, so the index keeps
//!   it findable, and [`Store::prune_versions`] ends its life). The local
//!   store's are in `local/extras.rs`; it writes zeros over holes as holes
//!   ([`crate::sparse`]).

mod db;
pub mod dry_run;
pub mod local;
pub mod s3;
pub mod space;

pub use crate::tree::Version;
pub use dry_run::DryRun;
pub use local::LocalStore;
pub use s3::{S3Location, S3Store};
pub use space::{MinFree, Room};

use crate::plan::ReplicaEntry;
use crate::tree::{Kind, Timestamp};
use std::io;

/// What a store can do; the session adapts to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Symlinks are stored as such.
    pub symlinks: bool,
    /// Unix permission bits are kept.
    pub modes: bool,
    /// A rename is one cheap operation, even of a whole directory (so a
    /// renamed directory is moved, not rebuilt).
    pub cheap_rename: bool,
    /// [`Store::keep_aside`] costs no copy.
    pub hard_links: bool,
    /// Changes are recorded at all. False for a dry run: the session then
    /// counts the content it would fetch instead of fetching it.
    pub records: bool,
    /// [`Store::copy_file`] copies inside the store without the data
    /// passing through the server (an object store's CopyObject): a whole
    /// file the replica already holds elsewhere is copied, not rebuilt.
    pub server_copy: bool,
}

/// Free and total bytes where the replica lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

/// A replica, as the server session sees it. See the module doc for what
/// an implementation must guarantee.
pub trait Store: Send + Sync {
    /// What this store can do.
    fn capabilities(&self) -> Capabilities;

    /// The entry at `key` (no link followed), or None if there is none.
    fn stat(&self, key: &str) -> io::Result<Option<ReplicaEntry>>;

    /// The names in directory `key` (staging names included).
    fn list(&self, key: &str) -> io::Result<Vec<String>>;

    /// Opens file `key` for reading at offsets.
    fn open(&self, key: &str) -> io::Result<Box<dyn ReadAt>>;

    /// Creates directory `key` (fine if it already is one).
    fn mkdir(&self, key: &str) -> io::Result<()>;

    /// Creates (or replaces) symlink `key` with the verbatim `target`.
    fn symlink(&self, key: &str, target: &str) -> io::Result<()>;

    /// Sets the mode and mtime of the entry at `key`, never through a link,
    /// never changing another name of the same file.
    fn set_meta(
        &self,
        key: &str,
        kind: &Kind,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<()>;

    /// Moves `from` to `to` (replacing a file at `to`).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Removes whatever is at `key`, a whole directory tree included;
    /// returns how many entries went (0: there was nothing).
    fn remove(&self, key: &str) -> io::Result<u64>;

    /// Keeps the current version of file `key` reachable under a staging
    /// key beside it (until removed); returns that key.
    fn keep_aside(&self, key: &str) -> io::Result<String>;

    /// Starts a new file meant for `key`, invisible until published.
    fn stage(&self, key: &str) -> io::Result<Box<dyn Staged>>;

    /// Takes over a file staged for `key` by an earlier pass, if it is still
    /// in place (else an error, and nothing is written through it).
    fn resume(&self, key: &str, staged: Box<dyn Staged>) -> io::Result<Box<dyn Staged>>;

    /// Makes a staged file appear at `key` with its mode and mtime, all at
    /// once; returns its version.
    fn publish(
        &self,
        staged: Box<dyn Staged>,
        key: &str,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<Version>;

    /// Whether a name found in a listing is staging (stale unless kept).
    fn is_staging(&self, name: &str) -> bool;

    /// Forgets anything cached about the replica: called as each pass
    /// starts (the replica may have changed since the last one). An error
    /// fails the pass before anything is changed.
    fn refresh(&self) -> io::Result<()> {
        Ok(())
    }

    /// A dry run's stand-in for [`Store::publish`]: notes a file of `size`
    /// bytes at `key` that the pass would have written (nothing is), so
    /// later reads of the pass see it; returns its version. Only a dry
    /// run's store ([`DryRun`]) does anything here.
    fn publish_unwritten(
        &self,
        _key: &str,
        _size: u64,
        _mode: Option<u32>,
        _mtime: Timestamp,
    ) -> io::Result<Version> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only a dry run publishes unwritten files",
        ))
    }

    /// Copies file `from` to `to` inside the store with this mode and
    /// mtime (see [`Capabilities::server_copy`]); None: not done (too
    /// large, or no such copy here), build it another way.
    fn copy_file(
        &self,
        _from: &str,
        _to: &str,
        _mode: Option<u32>,
        _mtime: Timestamp,
    ) -> io::Result<Option<Version>> {
        Ok(None)
    }

    /// Waits for writes still in flight (a store that sends files in the
    /// background) at the end of a pass; returns those that failed, by key
    /// (`""`: the pass as a whole).
    fn flush(&self) -> Vec<(String, io::Error)> {
        Vec::new()
    }

    /// Free space where the replica lives, if the store can tell.
    fn space(&self) -> Option<Space> {
        None
    }

    // Issue 17: hard links, extended attributes, versions. A store without
    // them keeps the defaults (no links seen, nothing linked, attributes
    // refused, no versions).

    /// The identity and link count of the regular file at `key` (None: no
    /// regular file there).
    fn file_links(&self, _key: &str) -> io::Result<Option<(u64, u64)>> {
        Ok(None)
    }

    /// Files [`Store::stat`] found with more than one link since the last
    /// [`Store::refresh`], with their identity.
    fn take_linked(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// Makes `to` another name of the file at `from`, replacing what `to`
    /// held (atomically).
    fn hard_link(&self, _from: &str, _to: &str) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this store has no hard links",
        ))
    }

    /// Gives the file at `key` a private copy of its content, with this
    /// mode and mtime (its other names keep the old file).
    fn own_copy(&self, _key: &str, _mode: Option<u32>, _mtime: Timestamp) -> io::Result<()> {
        Ok(())
    }

    /// Makes the `user.*` extended attributes of `key` equal to `want`;
    /// returns whether anything changed.
    fn set_xattrs(
        &self,
        _key: &str,
        _kind: &Kind,
        want: &[crate::tree::xattr::Xattr],
    ) -> Result<bool, crate::tree::xattr::XattrError> {
        if want.is_empty() {
            Ok(false)
        } else {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this store has no extended attributes",
            )
            .into())
        }
    }

    /// Files moved into the versions (`--versions`) since the last call:
    /// (key, key in the versions).
    fn take_retired(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Removes versions older than `--keep-versions`; returns their keys.
    fn prune_versions(&self) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Counts the entries a removal of `key` would remove.
    fn count(&self, key: &str) -> io::Result<u64> {
        match self.stat(key)? {
            None => Ok(0),
            Some(e) if !e.kind.is_dir() => Ok(1),
            Some(_) => {
                let mut n = 1;
                for name in self.list(key)? {
                    n += self.count(&child_key(key, &name))?;
                }
                Ok(n)
            }
        }
    }

    /// Removes `key` like [`Store::remove`], except entries for which
    /// `keep(key, is_dir)` holds (excluded paths) and the directories
    /// holding them. Returns the number of entries removed and whether
    /// anything was kept.
    fn remove_keeping(
        &self,
        key: &str,
        keep: &dyn Fn(&str, bool) -> bool,
    ) -> io::Result<(u64, bool)> {
        let Some(entry) = self.stat(key)? else {
            return Ok((0, false));
        };
        let is_dir = entry.kind.is_dir();
        if keep(key, is_dir) {
            return Ok((0, true));
        }
        if !is_dir {
            return self.remove(key).map(|n| (n, false));
        }
        let (mut removed, mut kept) = (0, false);
        for name in self.list(key)? {
            let (n, k) = self.remove_keeping(&child_key(key, &name), keep)?;
            removed += n;
            kept |= k;
        }
        if !kept {
            removed += self.remove(key)?;
        }
        Ok((removed, kept))
    }
}

/// A file of the replica open for reading.
pub trait ReadAt: Send {
    /// Reads at `offset` into `buf`; returns how many bytes (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// A new file being written, invisible under its key until published.
pub trait Staged: ReadAt {
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Its own key in the store (so a kept one is not taken for stale).
    fn key(&self) -> &str;

    /// For the store that made it, to take it back.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;

    /// A second handle writing into this file from another thread, as
    /// [`Staged::write_at`] does (None: writes go through this one only).
    /// Writes through both at once must not overlap or race.
    fn writer(&self) -> Option<Box<dyn WriteAt>> {
        None
    }
}

/// Writes into a staged file from another thread (see [`Staged::writer`]).
pub trait WriteAt: Send + Sync {
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub fn read_exact_at(r: &(impl ReadAt + ?Sized), buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read_at(&mut buf[done..], offset + done as u64)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => done += n,
        }
    }
    Ok(())
}

/// A [`ReadAt`] read from its start as a [`std::io::Read`].
pub struct Reader<'a, R: ?Sized> {
    inner: &'a R,
    at: u64,
}

impl<'a, R: ReadAt + ?Sized> Reader<'a, R> {
    pub fn new(inner: &'a R) -> Self {
        Reader { inner, at: 0 }
    }
}

impl<R: ReadAt + ?Sized> io::Read for Reader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The key of `name` inside directory `dir` (`""` is the root).
pub fn child_key(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A key's parent directory and last component.
pub fn split_key(key: &str) -> (&str, &str) {
    match key.rfind('/') {
        Some(i) => (&key[..i], &key[i + 1..]),
        None => ("", key),
    }
}

/// The key of `name` in the same directory as `key`.
pub fn beside(key: &str, name: &str) -> String {
    child_key(split_key(key).0, name)
}
