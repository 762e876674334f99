//! The metadata cache: what the last listing found of each object (its
//! ETag, size and last-modified time) with the metadata read from it
//! (rclone's `mtime` and `mode`, a symlink's target), so an unchanged
//! object costs no HEAD at the next pass.
//!
//! A hint persisted in the state directory (`s3-meta.redb`, table
//! `meta-1`: object key -> postcard [`Cached`]); losing it costs requests,
//! never correctness. It lives on disk like the tree (`db.rs`), so its size
//! follows the bucket without memory doing so.

use super::db::Db;
use crate::tree::Timestamp;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io;
use std::path::Path;

/// Object key -> [`Cached`]; the name carries the format's version.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");

/// redb's page cache for the metadata cache.
const CACHE_BYTES: usize = 2 << 20;

/// Stale entries removed per batch.
const PRUNE_BATCH: usize = 1024;

/// What the cache knows of one object (by full object key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    pub etag: String,
    pub size: u64,
    /// Last-modified in ms (None: not yet seen in a listing).
    pub modified: Option<i64>,
    pub mtime: Timestamp,
    pub mode: Option<u32>,
    /// A symlink's target.
    pub target: Option<String>,
}

pub struct MetaCache {
    db: Db,
}

impl MetaCache {
    /// Opens the cache at `path` (made empty if missing or unreadable).
    pub fn open(path: &Path) -> io::Result<MetaCache> {
        Ok(MetaCache {
            db: Db::open(path, CACHE_BYTES, false)?,
        })
    }

    pub fn get(&self, object: &str) -> io::Result<Option<Cached>> {
        let t = self.db.txn().open_table(META).map_err(|e| self.db.err(e))?;
        let v = t.get(object).map_err(|e| self.db.err(e))?;
        // An entry that does not decode is as good as none.
        Ok(v.and_then(|v| postcard::from_bytes(v.value()).ok()))
    }

    pub fn insert(&mut self, object: &str, c: &Cached) -> io::Result<()> {
        let bytes = postcard::to_allocvec(c).map_err(|e| self.db.err(e))?;
        {
            let mut t = self.db.txn().open_table(META).map_err(|e| self.db.err(e))?;
            t.insert(object, &bytes[..]).map_err(|e| self.db.err(e))?;
        }
        self.db.wrote()
    }

    pub fn remove(&mut self, object: &str) -> io::Result<()> {
        {
            let mut t = self.db.txn().open_table(META).map_err(|e| self.db.err(e))?;
            t.remove(object).map_err(|e| self.db.err(e))?;
        }
        self.db.wrote()
    }

    /// Sets the ETag of `object`'s entry, if there is one.
    pub fn set_etag(&mut self, object: &str, etag: String) -> io::Result<()> {
        match self.get(object)? {
            Some(mut c) => {
                c.etag = etag;
                self.insert(object, &c)
            }
            None => Ok(()),
        }
    }

    /// Drops the entries after `after` (None: from the first) up to and
    /// including `upto` (None: to the last) that are not in `keep`: the
    /// objects a listing, read in key order, no longer has.
    pub fn prune(
        &mut self,
        after: Option<&str>,
        upto: Option<&str>,
        keep: &HashSet<&str>,
    ) -> io::Result<()> {
        let mut from = after.map(str::to_string);
        loop {
            let stale = self.stale(from.as_deref(), upto, keep)?;
            let Some((last, stale)) = stale else {
                return Ok(());
            };
            for k in &stale {
                self.remove(k)?;
            }
            from = Some(last);
        }
    }

    /// Up to [`PRUNE_BATCH`] keys in (after, upto] not in `keep`, and the
    /// last key looked at (None: nothing left in the range).
    fn stale(
        &self,
        after: Option<&str>,
        upto: Option<&str>,
        keep: &HashSet<&str>,
    ) -> io::Result<Option<(String, Vec<String>)>> {
        let t = self.db.txn().open_table(META).map_err(|e| self.db.err(e))?;
        let range = match after {
            Some(a) => t.range::<&str>(a..),
            None => t.range::<&str>(..),
        }
        .map_err(|e| self.db.err(e))?;
        let (mut out, mut last) = (Vec::new(), None);
        for item in range {
            let (k, _) = item.map_err(|e| self.db.err(e))?;
            let k = k.value();
            if Some(k) == after {
                continue;
            }
            if upto.is_some_and(|u| k > u) || out.len() >= PRUNE_BATCH {
                break;
            }
            if !keep.contains(k) {
                out.push(k.to_string());
            }
            last = Some(k.to_string());
        }
        Ok(last.map(|l| (l, out)))
    }

    /// Commits the cache to disk.
    pub fn save(&mut self) -> io::Result<()> {
        self.db.commit(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(etag: &str) -> Cached {
        Cached {
            etag: etag.into(),
            size: 1,
            modified: None,
            mtime: Timestamp::default(),
            mode: Some(0o644),
            target: None,
        }
    }

    #[test]
    fn entries_survive_reopening_and_pruning_keeps_what_was_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let mut m = MetaCache::open(&path).unwrap();
            for i in 0..5000 {
                m.insert(&format!("p/k{i:05}"), &cached("x")).unwrap();
            }
            m.set_etag("p/k00001", "y".into()).unwrap();
            m.save().unwrap();
        }
        let mut m = MetaCache::open(&path).unwrap();
        assert_eq!(m.get("p/k00001").unwrap(), Some(cached("y")));
        // A listing of two pages: k00001..k00002, then k04000 (the rest gone).
        m.prune(
            None,
            Some("p/k00002"),
            &HashSet::from(["p/k00001", "p/k00002"]),
        )
        .unwrap();
        m.prune(
            Some("p/k00002"),
            Some("p/k04000"),
            &HashSet::from(["p/k04000"]),
        )
        .unwrap();
        m.prune(Some("p/k04000"), None, &HashSet::new()).unwrap();
        assert_eq!(m.get("p/k00000").unwrap(), None);
        assert_eq!(m.get("p/k00003").unwrap(), None);
        assert_eq!(m.get("p/k04999").unwrap(), None);
        for k in ["p/k00001", "p/k00002", "p/k04000"] {
            assert!(m.get(k).unwrap().is_some(), "{k}");
        }
    }

    #[test]
    fn an_unreadable_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        std::fs::write(&path, b"not a database").unwrap();
        let m = MetaCache::open(&path).unwrap();
        assert_eq!(m.get("x").unwrap(), None);
    }
}
