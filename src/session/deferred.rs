//! Removals a paged pass defers to its end.
//!
//! A paged pass (the client sends its tree as several pages of whole
//! directories, see PROTOCOL.md) plans and carries out one page at a time.
//! What a page would remove (replica entries its source directories lack)
//! is not removed at once: a later page may still find that content there
//! and move it into place instead of asking for it (a folder moved across
//! pages costs no content). The keys wait here, on disk (a redb database of
//! its own beside the replica index, written without syncing, deleted when
//! the pass ends), with the source metadata of their parent directory, which
//! the removal changes and which is set again afterwards. Memory stays
//! bounded: redb keeps a small cache and the dirty pages of at most
//! [`CHECKPOINT`] writes.

use crate::error::{Error, Result};
use crate::tree::Timestamp;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use std::path::{Path, PathBuf};

/// Key -> parent directory's source metadata, and whether the entry's
/// content was moved elsewhere (then it is not removed).
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("deferred");

/// Deferred directories by the signature of their subtree (see
/// `renames.rs`), so a later page can rename one into place whole.
const DIRS: TableDefinition<&[u8], &str> = TableDefinition::new("deferred-dirs");

/// Writes between commits (a commit frees the transaction's dirty pages).
const CHECKPOINT: usize = 4096;

/// redb's page cache for this scratch database.
const CACHE_BYTES: usize = 1 << 20;

/// A directory's mode and mtime as the source has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirMeta {
    pub mode: Option<u32>,
    pub mtime: Timestamp,
}

/// One deferred removal as stored: the parent's metadata, and whether the
/// entry was moved away by a later page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub parent: DirMeta,
    pub moved: bool,
}

impl Pending {
    fn encode(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = u8::from(self.parent.mode.is_some()) | (u8::from(self.moved) << 1);
        b[1..5].copy_from_slice(&self.parent.mode.unwrap_or(0).to_le_bytes());
        b[5..13].copy_from_slice(&self.parent.mtime.secs.to_le_bytes());
        b[13..17].copy_from_slice(&self.parent.mtime.nanos.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Pending> {
        if b.len() != 18 {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let secs = i64::from_le_bytes(b[5..13].try_into().expect("8 bytes"));
        Some(Pending {
            parent: DirMeta {
                mode: (b[0] & 1 != 0).then(|| u32_at(1)),
                mtime: Timestamp {
                    secs,
                    nanos: u32_at(13),
                },
            },
            moved: b[0] & 2 != 0,
        })
    }
}

/// The removals deferred so far in a paged pass.
pub struct Deferred {
    db: Option<Database>,
    path: PathBuf,
    txn: Option<WriteTransaction>,
    writes: usize,
    len: u64,
    dirs: u64,
}

impl Deferred {
    /// A new, empty set at `path` (a stale file from a killed pass is
    /// replaced).
    pub fn create(path: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| err(path, e))?;
        let mut d = Deferred {
            db: Some(db),
            path: path.to_path_buf(),
            txn: None,
            writes: 0,
            len: 0,
            dirs: 0,
        };
        d.begin()?;
        Ok(d)
    }

    fn begin(&mut self) -> Result<()> {
        let db = self.db.as_ref().expect("open until dropped");
        let mut t = db.begin_write().map_err(|e| err(&self.path, e))?;
        t.set_durability(redb::Durability::None);
        self.txn = Some(t);
        self.writes = 0;
        Ok(())
    }

    fn txn(&self) -> &WriteTransaction {
        self.txn.as_ref().expect("a transaction is open")
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.writes += 1;
        if self.writes >= CHECKPOINT {
            if let Some(t) = self.txn.take() {
                t.commit().map_err(|e| err(&self.path, e))?;
            }
            self.begin()?;
        }
        Ok(())
    }

    /// Entries deferred so far (moved ones included).
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Defers the removal of `key`, whose parent directory the source
    /// has with `parent`'s metadata.
    pub fn add(&mut self, key: &str, parent: DirMeta) -> Result<()> {
        let v = Pending {
            parent,
            moved: false,
        };
        let new = {
            let mut t = self
                .txn()
                .open_table(KEYS)
                .map_err(|e| err(&self.path, e))?;
            let old = t
                .insert(key, &v.encode()[..])
                .map_err(|e| err(&self.path, e))?;
            old.is_none()
        };
        self.len += u64::from(new);
        self.checkpoint()
    }

    /// Notes that `key`'s content was moved elsewhere: it is not removed,
    /// only its parent's metadata is set again. Keys not deferred are
    /// ignored.
    pub fn mark_moved(&mut self, key: &str) -> Result<()> {
        let found = {
            let t = self
                .txn()
                .open_table(KEYS)
                .map_err(|e| err(&self.path, e))?;
            let v = t.get(key).map_err(|e| err(&self.path, e))?;
            v.and_then(|v| Pending::decode(v.value()))
        };
        let Some(mut p) = found else {
            return Ok(());
        };
        p.moved = true;
        {
            let mut t = self
                .txn()
                .open_table(KEYS)
                .map_err(|e| err(&self.path, e))?;
            t.insert(key, &p.encode()[..])
                .map_err(|e| err(&self.path, e))?;
        }
        self.checkpoint()
    }

    /// Notes that deferred directory `key` has subtree signature `sig`.
    pub fn add_dir(&mut self, sig: &[u8; 32], key: &str) -> Result<()> {
        {
            let mut t = self
                .txn()
                .open_table(DIRS)
                .map_err(|e| err(&self.path, e))?;
            t.insert(&sig[..], key).map_err(|e| err(&self.path, e))?;
        }
        self.dirs += 1;
        self.checkpoint()
    }

    /// Whether any directory was deferred with a signature.
    pub fn has_dirs(&self) -> bool {
        self.dirs > 0
    }

    /// A deferred directory, or a directory below one (not moved yet),
    /// with subtree signature `sig`, taken: it is not offered again.
    pub fn take_dir(&mut self, sig: &[u8; 32]) -> Result<Option<String>> {
        let key = {
            let mut t = self
                .txn()
                .open_table(DIRS)
                .map_err(|e| err(&self.path, e))?;
            let v = t.remove(&sig[..]).map_err(|e| err(&self.path, e))?;
            v.map(|v| v.value().to_string())
        };
        Ok(key.filter(|k| self.covers(k)))
    }

    /// Whether `key` or one of its ancestors is deferred (and not moved).
    pub fn covers(&self, key: &str) -> bool {
        let Ok(t) = self.txn().open_table(KEYS) else {
            return false;
        };
        let mut cur = key;
        loop {
            let hit = t
                .get(cur)
                .ok()
                .flatten()
                .and_then(|v| Pending::decode(v.value()));
            if hit.is_some_and(|p| !p.moved) {
                return true;
            }
            match cur.rfind('/') {
                Some(i) => cur = &cur[..i],
                None => return false,
            }
        }
    }

    /// Up to `n` deferred entries after `after` (all from the start when
    /// `None`), in key order.
    pub fn batch(&self, after: Option<&str>, n: usize) -> Result<Vec<(String, Pending)>> {
        let t = self
            .txn()
            .open_table(KEYS)
            .map_err(|e| err(&self.path, e))?;
        let range = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => t.range::<&str>(..),
        }
        .map_err(|e| err(&self.path, e))?;
        let mut out = Vec::with_capacity(n.min(1024));
        for item in range.take(n) {
            let (k, v) = item.map_err(|e| err(&self.path, e))?;
            if let Some(p) = Pending::decode(v.value()) {
                out.push((k.value().to_string(), p));
            }
        }
        Ok(out)
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.txn = None;
        self.db = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Index {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(secs: i64) -> DirMeta {
        DirMeta {
            mode: Some(0o755),
            mtime: Timestamp { secs, nanos: 7 },
        }
    }

    #[test]
    fn keys_cover_their_subtrees_until_moved_and_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("removals.redb");
        let mut d = Deferred::create(&path).unwrap();
        for i in (0..10_000).rev() {
            d.add(&format!("d/{i:05}"), meta(i)).unwrap();
        }
        d.add("old", meta(-3)).unwrap();
        assert_eq!(d.len(), 10_001);
        assert!(d.covers("old/x/y"));
        assert!(d.covers("d/00042"));
        assert!(!d.covers("d"));
        assert!(!d.covers("older"));
        d.mark_moved("d/00042").unwrap();
        d.mark_moved("not/deferred").unwrap();
        assert!(!d.covers("d/00042"));
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let b = d.batch(after.as_deref(), 999).unwrap();
            let Some(last) = b.last() else { break };
            after = Some(last.0.clone());
            seen.extend(b);
        }
        assert_eq!(seen.len(), 10_001);
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(seen[42].1.parent, meta(42));
        assert!(seen[42].1.moved && !seen[41].1.moved);
        assert_eq!(seen.last().unwrap().1.parent, meta(-3));
        drop(d);
        assert!(!path.exists(), "the scratch file goes with the pass");
    }
}
