//! The replica in an S3 object store (`s3://BUCKET/PREFIX`), laid out the
//! way rclone lays out a directory (`layout.rs`), so any S3 tool can
//! browse it.
//!
//! - `client.rs`: the location, the client from the AWS environment, its
//!   runtime, errors as one line (bucket, endpoint, cause); retries with
//!   bounded backoff.
//! - `layout.rs`: object keys, escaping, rclone's metadata (pure).
//! - `tree.rs`: the replica as last listed, kept current by our writes,
//!   on disk (`db.rs`: redb in the state directory, bounded transactions).
//! - `listing.rs`: one listing of the prefix per pass, a page of a
//!   thousand keys at a time, several stretches of it asked for at once
//!   (`lister.rs`, bounded by the keys of the last listing), and `meta.rs`, the persisted metadata cache
//!   (HEAD only for objects that changed), on disk too, read with a cursor
//!   beside the listing (`merge.rs`: the merge of two key-ordered runs).
//! - `staged.rs`: spool files in the state directory; ranged-GET readers.
//! - `writes.rs`: PUT, multipart, CopyObject, deletes.
//!
//! Small files are sent in the background, a bounded number at once; any
//! later operation on the same key waits for them, and [`Store::flush`]
//! at the end of a pass waits for all and reports those that failed. A
//! file's version is its ETag, so an object rewritten behind the server's
//! back no longer matches the index and is checked again; metadata changed
//! behind its back shows as a different mtime or mode at the next listing.

mod background;
pub mod client;
pub mod layout;
mod lister;
mod listing;
mod merge;
mod meta;
mod staged;
mod tree;
mod writes;

pub use client::S3Location;

use super::{Capabilities, ReadAt, Staged, Store, Version};
use crate::plan::ReplicaEntry;
use crate::tree::{Kind, Timestamp};
use background::Background;
use client::Conn;
use layout::{marker_of, object_of};
use meta::{Cached, MetaCache};
use staged::{S3Reader, S3Staged};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tree::{Node, Tree};

/// Files up to this size are sent in the background.
const SMALL: u64 = 8 << 20;

/// Entries of a removed subtree taken from the tree at once.
const REMOVE_BATCH: usize = 1000;

/// A replica in an S3 bucket under a prefix.
pub struct S3Store {
    conn: Arc<Conn>,
    tree: Arc<Mutex<Tree>>,
    cache: Arc<Mutex<MetaCache>>,
    spool: PathBuf,
    bg: Background,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A file's version: its ETag, hashed.
fn version_of(etag: &str) -> Version {
    let h = blake3::hash(etag.as_bytes());
    let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    Version(v.max(1))
}

fn not_found(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{key}: not in the replica"),
    )
}

impl S3Store {
    /// Connects and checks the bucket answers (the error is one line);
    /// `state` is this replica's directory in the server's state directory
    /// (metadata cache, the tree as listed, spool).
    pub fn open(loc: &S3Location, state: &std::path::Path) -> io::Result<S3Store> {
        let conn = Arc::new(Conn::new(loc)?);
        conn.check()?;
        std::fs::create_dir_all(state)?;
        // The cache's earlier format (one file read whole): a hint, dropped.
        let _ = std::fs::remove_file(state.join("s3-meta.bin"));
        let cache = MetaCache::open(&state.join("s3-meta.redb"))?;
        let tree = Tree::create(&state.join("s3-tree.redb"))?;
        let spool = state.join("spool");
        // Spool files of a killed process: nothing resumes them.
        let _ = std::fs::remove_dir_all(&spool);
        Ok(S3Store {
            cache: Arc::new(Mutex::new(cache)),
            spool,
            tree: Arc::new(Mutex::new(tree)),
            bg: Background::new(conn.clone()),
            conn,
        })
    }

    fn wait(&self, key: &str) -> io::Result<()> {
        self.bg.wait(key)
    }

    /// Records what an object of ours now holds (its last-modified time is
    /// bound by the next listing).
    fn remember(&self, object: &str, etag: &str, size: u64, node: &Node) -> io::Result<()> {
        let target = match &node.kind {
            Kind::Symlink { target } => Some(target.clone()),
            _ => None,
        };
        lock(&self.cache).insert(
            object,
            &Cached {
                etag: etag.to_string(),
                size,
                modified: None,
                mtime: node.mtime,
                mode: node.mode,
                target,
            },
        )
    }

    fn forget(&self, object: &str) -> io::Result<()> {
        lock(&self.cache).remove(object)
    }

    /// The object holding the entry `node` at `key`.
    fn object(&self, key: &str, node: &Node) -> String {
        self.conn.full(&match node.kind {
            Kind::Dir => marker_of(key),
            Kind::Symlink { .. } => object_of(key, true),
            Kind::File { .. } => object_of(key, false),
        })
    }

    /// Writes a directory marker or a symlink object with its metadata, in
    /// the background.
    fn write_small(&self, key: &str, node: Node) -> io::Result<()> {
        let object = self.object(key, &node);
        let body = match &node.kind {
            Kind::Symlink { target } => target.clone().into_bytes(),
            _ => Vec::new(),
        };
        let etag = writes::md5_hex(&body);
        self.remember(&object, &etag, body.len() as u64, &node)?;
        let meta = writes::metadata(&node.kind, node.mode, node.mtime);
        let conn = self.conn.clone();
        let obj = object.clone();
        self.bg.start(&[key], &[&object], async move {
            writes::put(&conn, &obj, body, meta).await.map(|_| ())
        });
        Ok(())
    }

    /// Deletes the object of a removed entry (later, in a batch).
    fn delete_node(&self, key: &str, node: &Node) -> io::Result<()> {
        if node.kind.is_dir() && !node.marker {
            return Ok(());
        }
        let object = self.object(key, node);
        self.forget(&object)?;
        self.bg.doom(object)
    }

    fn node(&self, key: &str) -> io::Result<Option<Node>> {
        lock(&self.tree).get(key)
    }

    /// Removes `key` and everything below it (a batch at a time, each
    /// batch's objects doomed with the tree unlocked); returns how many
    /// entries went.
    fn remove_tree(&self, key: &str) -> io::Result<u64> {
        let mut n = 0;
        loop {
            let mut gone = Vec::new();
            let done = lock(&self.tree).remove_some(key, REMOVE_BATCH, &mut |k, node| {
                gone.push((k.to_string(), node.clone()));
                Ok(())
            })?;
            for (k, node) in &gone {
                self.delete_node(k, node)?;
            }
            n += gone.len() as u64;
            if done {
                return Ok(n);
            }
        }
    }

    /// Server-side copy of file `from` to `to` with this metadata, in the
    /// background. The copy of a single-part object keeps its ETag (its
    /// MD5); should the store answer another, the tree and the cache take
    /// it (the index then no longer matches and checks the file again).
    fn copy_to(
        &self,
        from: &str,
        to: &str,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<Version> {
        let src = self.node(from)?.ok_or_else(|| not_found(from))?;
        let Kind::File { size } = src.kind else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file"));
        };
        self.wait(from)?;
        self.clear_other_kind(to, &src.kind)?;
        let (src_obj, dst_obj) = (
            self.object(from, &src),
            self.conn.full(&object_of(to, false)),
        );
        let meta = writes::metadata(&src.kind, mode, mtime);
        let node = Node {
            kind: src.kind.clone(),
            mode,
            mtime,
            etag: src.etag.clone(),
            marker: false,
            dirty: false,
        };
        self.remember(&dst_obj, &src.etag, size, &node)?;
        lock(&self.tree).insert(to, node)?;
        let (conn, tree, cache) = (self.conn.clone(), self.tree.clone(), self.cache.clone());
        let (want, key, obj) = (src.etag.clone(), to.to_string(), dst_obj.clone());
        self.bg.start(&[from, to], &[&dst_obj], async move {
            let etag = writes::copy(&conn, &src_obj, &obj, meta).await?;
            if etag != want {
                lock(&tree).set_etag(&key, etag.clone())?;
                lock(&cache).set_etag(&obj, etag)?;
            }
            Ok(())
        });
        Ok(version_of(&src.etag))
    }

    /// An entry of another kind at `key` (a symlink where a file goes, or
    /// the reverse) is removed: its object has another name.
    fn clear_other_kind(&self, key: &str, kind: &Kind) -> io::Result<()> {
        let Some(old) = self.node(key)? else {
            return Ok(());
        };
        let same = matches!(
            (&old.kind, kind),
            (Kind::File { .. }, Kind::File { .. }) | (Kind::Symlink { .. }, Kind::Symlink { .. })
        );
        if !same && !old.kind.is_dir() {
            self.remove_tree(key)?;
        }
        Ok(())
    }

    /// Publishes a spool file at `key`.
    fn send(&self, staged: &S3Staged, key: &str, node: Node) -> io::Result<Version> {
        let size = staged.len()?;
        let _ = self.wait(key);
        self.clear_other_kind(key, &node.kind)?;
        let object = self.conn.full(&object_of(key, false));
        let meta = writes::metadata(&node.kind, node.mode, node.mtime);
        self.bg.spare(&object);
        let etag = if size >= writes::MULTIPART_MIN {
            writes::put_multipart(&self.conn, &object, &staged.file, size, meta)?
        } else {
            let mut body = vec![0u8; size as usize];
            super::read_exact_at(staged, &mut body, 0)?;
            let etag = writes::md5_hex(&body);
            let conn = self.conn.clone();
            let obj = object.clone();
            if size <= SMALL {
                self.bg.start(&[key], &[&object], async move {
                    writes::put(&conn, &obj, body, meta).await.map(|_| ())
                });
                etag
            } else {
                self.conn.run(writes::put(&conn, &obj, body, meta))?
            }
        };
        let node = Node {
            etag: etag.clone(),
            ..node
        };
        self.remember(&object, &etag, size, &node)?;
        lock(&self.tree).insert(key, node)?;
        Ok(version_of(&etag))
    }
}

impl S3Store {
    /// Writes the objects of the entries made dirty in this pass, a batch
    /// at a time.
    fn write_dirty(&self) -> io::Result<()> {
        let mut after: Option<String> = None;
        loop {
            let dirty = lock(&self.tree).dirty(after.as_deref(), 1024)?;
            let Some(last) = dirty.last().cloned() else {
                return Ok(());
            };
            for key in dirty {
                if let Some(mut n) = self.node(&key)? {
                    n.dirty = false;
                    n.marker = n.kind.is_dir();
                    lock(&self.tree).insert(&key, n.clone())?;
                    self.write_small(&key, n)?;
                }
            }
            after = Some(last);
        }
    }
}

impl Store for S3Store {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            symlinks: true,
            modes: true,
            cheap_rename: false,
            hard_links: false,
            records: true,
            server_copy: true,
        }
    }

    fn stat(&self, key: &str) -> io::Result<Option<ReplicaEntry>> {
        Ok(self.node(key)?.map(|n| ReplicaEntry {
            version: match n.kind {
                Kind::Dir => Version::UNKNOWN,
                _ => version_of(&n.etag),
            },
            kind: n.kind,
            mode: n.mode,
            mtime: n.mtime,
        }))
    }

    fn list(&self, key: &str) -> io::Result<Vec<String>> {
        lock(&self.tree).names(key)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{key} is not a directory"),
            )
        })
    }

    fn open(&self, key: &str) -> io::Result<Box<dyn ReadAt>> {
        let node = self.node(key)?.ok_or_else(|| not_found(key))?;
        let Kind::File { size } = node.kind else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{key}: not a file"),
            ));
        };
        self.wait(key)?;
        Ok(Box::new(S3Reader::new(
            self.conn.clone(),
            self.object(key, &node),
            size,
        )))
    }

    fn mkdir(&self, key: &str) -> io::Result<()> {
        let mut tree = lock(&self.tree);
        match tree.get(key)? {
            Some(n) if n.kind.is_dir() => Ok(()),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{key}: exists"),
            )),
            None => {
                let node = Node {
                    dirty: true,
                    ..Node::implied_dir()
                };
                if tree.insert(key, node)? {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{key}: a parent is not a directory"),
                    ))
                }
            }
        }
    }

    fn symlink(&self, key: &str, target: &str) -> io::Result<()> {
        let kind = Kind::Symlink {
            target: target.to_string(),
        };
        self.clear_other_kind(key, &kind)?;
        let old = self.node(key)?;
        let node = Node {
            kind,
            mode: None,
            mtime: old.map(|o| o.mtime).unwrap_or_default(),
            etag: String::new(),
            marker: false,
            dirty: true,
        };
        if lock(&self.tree).insert(key, node)? {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{key}: cannot hold a symlink"),
            ))
        }
    }

    fn set_meta(
        &self,
        key: &str,
        kind: &Kind,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<()> {
        let node = self.node(key)?.ok_or_else(|| not_found(key))?;
        let mode = if matches!(node.kind, Kind::Symlink { .. }) {
            None
        } else {
            mode
        };
        if node.mode == mode
            && node.mtime == mtime
            && !node.dirty
            && (node.marker || !node.kind.is_dir())
        {
            // Already so (a moved file keeps its metadata).
            return Ok(());
        }
        match (&node.kind, kind) {
            (Kind::File { .. }, Kind::File { .. }) => {
                self.copy_to(key, key, mode, mtime)?;
            }
            (Kind::Dir, Kind::Dir) | (Kind::Symlink { .. }, Kind::Symlink { .. }) => {
                let node = Node {
                    mode,
                    mtime,
                    marker: node.kind.is_dir(),
                    dirty: false,
                    ..node
                };
                lock(&self.tree).insert(key, node.clone())?;
                self.write_small(key, node)?;
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{key}: not of that kind"),
                ))
            }
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let node = self.node(from)?.ok_or_else(|| not_found(from))?;
        match &node.kind {
            Kind::File { .. } => {
                self.copy_to(from, to, node.mode, node.mtime)?;
            }
            Kind::Symlink { target } => {
                self.symlink(to, target)?;
                self.set_meta(to, &node.kind, None, node.mtime)?;
            }
            Kind::Dir => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "an object store cannot rename a directory",
                ))
            }
        }
        self.remove_tree(from)?;
        Ok(())
    }

    fn remove(&self, key: &str) -> io::Result<u64> {
        self.bg.wait_below(key);
        self.remove_tree(key)
    }

    fn keep_aside(&self, _key: &str) -> io::Result<String> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "an object store keeps nothing aside",
        ))
    }

    fn stage(&self, key: &str) -> io::Result<Box<dyn Staged>> {
        Ok(Box::new(S3Staged::create(&self.spool, key)?))
    }

    fn resume(&self, _key: &str, staged: Box<dyn Staged>) -> io::Result<Box<dyn Staged>> {
        let Ok(old) = staged.into_any().downcast::<S3Staged>() else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not staged by this store",
            ));
        };
        Ok(Box::new(old.take_over()?))
    }

    fn publish(
        &self,
        staged: Box<dyn Staged>,
        key: &str,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<Version> {
        let Ok(staged) = staged.into_any().downcast::<S3Staged>() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not staged by this store",
            ));
        };
        let node = Node {
            kind: Kind::File {
                size: staged.len()?,
            },
            mode,
            mtime,
            etag: String::new(),
            marker: false,
            dirty: false,
        };
        self.send(&staged, key, node)
    }

    fn is_staging(&self, _name: &str) -> bool {
        false
    }

    fn refresh(&self) -> io::Result<()> {
        for (key, e) in self.bg.finish() {
            // Left by a pass that stopped early: its objects are listed now.
            tracing::debug!("{key}: {e}");
        }
        let mut cache = lock(&self.cache);
        let mut tree = lock(&self.tree);
        tree.clear()?;
        listing::read_tree(&self.conn, &mut cache, &mut tree)?;
        drop(tree);
        // Synced at the end of the pass (`flush`).
        let _ = cache.checkpoint();
        drop(cache);
        writes::abort_stale_uploads(&self.conn)?;
        Ok(())
    }

    fn copy_file(
        &self,
        from: &str,
        to: &str,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<Option<Version>> {
        match self.node(from)? {
            Some(Node {
                kind: Kind::File { size },
                ..
            }) if size <= writes::COPY_MAX => self.copy_to(from, to, mode, mtime).map(Some),
            _ => Ok(None),
        }
    }

    fn flush(&self) -> Vec<(String, io::Error)> {
        let mut failures = Vec::new();
        if let Err(e) = self.write_dirty() {
            failures.push((String::new(), e));
        }
        failures.extend(self.bg.finish());
        if let Err(e) = writes::abort_stale_uploads(&self.conn) {
            failures.push((String::new(), e));
        }
        let _ = lock(&self.cache).save();
        failures
    }
}
