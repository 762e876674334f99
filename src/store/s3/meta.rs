//! The metadata cache: what the last listing found of each object (its
//! ETag, size and last-modified time) with the metadata read from it
//! (rclone's `mtime` and `mode`, a symlink's target), so an unchanged
//! object costs no HEAD at the next pass.
//!
//! A hint persisted in the state directory (`s3-meta.redb`, table
//! `meta-1`: object key -> postcard [`Cached`]); losing it costs requests,
//! never correctness. It lives on disk like the tree (`db.rs`), so its size
//! follows the bucket without memory doing so.

use super::merge::{merge, settled_by, Pair};
use crate::store::db::Db;
use crate::tree::Timestamp;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;

/// Object key -> [`Cached`]; the name carries the format's version.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");

/// redb's page cache for the metadata cache.
const CACHE_BYTES: usize = 2 << 20;

/// Entries read at once by [`MetaCache::page`].
const RUN: usize = 1024;

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

    /// The entries of one page of the listing (`keys`, in key order: the
    /// keys after `after` up to and including the last of them; `keys`
    /// empty: everything after `after`), read with a cursor a run at a
    /// time and merged with the page (`merge.rs`). Entries in that range
    /// that are not listed are dropped: their objects are gone.
    pub fn page(&mut self, after: Option<&str>, keys: &[&str]) -> io::Result<Vec<Option<Cached>>> {
        let upto = keys.last().copied();
        let mut out = vec![None; keys.len()];
        let (mut i, mut from) = (0, after.map(str::to_string));
        loop {
            let (run, mut vals): (Vec<String>, Vec<Option<Cached>>) =
                self.run(from.as_deref(), upto)?.into_iter().unzip();
            let end = run.len() < RUN;
            let n = match run.last() {
                Some(last) if !end => i + settled_by(&keys[i..], last),
                _ => keys.len(),
            };
            let names: Vec<&str> = run.iter().map(String::as_str).collect();
            let mut stale = Vec::new();
            for p in merge(&keys[i..n], &names) {
                match p {
                    Pair::Both(a, b) => out[i + a] = vals[b].take(),
                    Pair::Listed(_) => {}
                    Pair::Cached(b) => stale.push(names[b]),
                }
            }
            if !stale.is_empty() {
                {
                    let mut t = self.db.txn().open_table(META).map_err(|e| self.db.err(e))?;
                    for k in &stale {
                        t.remove(*k).map_err(|e| self.db.err(e))?;
                    }
                }
                self.db.wrote_many(stale.len())?;
            }
            i = n;
            if end {
                return Ok(out);
            }
            from = run.last().cloned();
        }
    }

    /// The `n`th key after `after` (None: the start), None when fewer
    /// than `n` follow: where the listing's next stretch ends.
    pub fn key_after(&self, after: Option<&str>, n: usize) -> io::Result<Option<String>> {
        let t = self.db.txn().open_table(META).map_err(|e| self.db.err(e))?;
        let range = match after {
            Some(a) => t.range::<&str>(a..),
            None => t.range::<&str>(..),
        }
        .map_err(|e| self.db.err(e))?;
        let mut seen = 0;
        for item in range {
            let (k, _) = item.map_err(|e| self.db.err(e))?;
            if Some(k.value()) == after {
                continue;
            }
            seen += 1;
            if seen == n {
                return Ok(Some(k.value().to_string()));
            }
        }
        Ok(None)
    }

    /// Up to [`RUN`] entries in (after, upto] in key order (an entry that
    /// does not decode is as good as none).
    fn run(
        &self,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> io::Result<Vec<(String, Option<Cached>)>> {
        let t = self.db.txn().open_table(META).map_err(|e| self.db.err(e))?;
        let range = match after {
            Some(a) => t.range::<&str>(a..),
            None => t.range::<&str>(..),
        }
        .map_err(|e| self.db.err(e))?;
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item.map_err(|e| self.db.err(e))?;
            let k = k.value();
            if Some(k) == after {
                continue;
            }
            if upto.is_some_and(|u| k > u) || out.len() >= RUN {
                break;
            }
            out.push((k.to_string(), postcard::from_bytes(v.value()).ok()));
        }
        Ok(out)
    }

    /// Commits the cache to disk.
    pub fn save(&mut self) -> io::Result<()> {
        self.db.commit(true)
    }

    /// Commits the cache without syncing it (kept should the process go
    /// on to a [`MetaCache::save`]).
    pub fn checkpoint(&mut self) -> io::Result<()> {
        self.db.commit(false)
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
        let first = m
            .page(None, &["p/k00001", "p/k00002", "p/k00002a"])
            .unwrap();
        assert_eq!(first[0], Some(cached("y")));
        assert_eq!(first[1], Some(cached("x")));
        assert_eq!(first[2], None);
        let second = m.page(Some("p/k00002a"), &["p/k04000"]).unwrap();
        assert_eq!(second, vec![Some(cached("x"))]);
        assert!(m.page(Some("p/k04000"), &[]).unwrap().is_empty());
        assert_eq!(m.get("p/k00000").unwrap(), None);
        assert_eq!(m.get("p/k00003").unwrap(), None);
        assert_eq!(m.get("p/k04999").unwrap(), None);
        for k in ["p/k00001", "p/k00002", "p/k04000"] {
            assert!(m.get(k).unwrap().is_some(), "{k}");
        }
    }

    #[test]
    fn a_page_is_matched_across_runs_of_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetaCache::open(&dir.path().join("meta.redb")).unwrap();
        for i in 0..3 * RUN + 10 {
            m.insert(&format!("k{i:05}"), &cached(&i.to_string()))
                .unwrap();
        }
        // One page whose keys lie in three runs of the cursor, one key new.
        let keys = ["k00001", "k01500", "k01500a", "k03071"];
        let got = m.page(None, &keys).unwrap();
        assert_eq!(got[0], Some(cached("1")));
        assert_eq!(got[1], Some(cached("1500")));
        assert_eq!(got[2], None);
        assert_eq!(got[3], Some(cached("3071")));
        // Everything between them went; what comes after is the next page's.
        assert_eq!(m.get("k00002").unwrap(), None);
        assert_eq!(m.get("k03070").unwrap(), None);
        assert_eq!(m.get("k03072").unwrap(), Some(cached("3072")));
    }

    #[test]
    fn stretches_end_every_nth_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetaCache::open(&dir.path().join("meta.redb")).unwrap();
        for i in 0..25 {
            m.insert(&format!("k{i:02}"), &cached("x")).unwrap();
        }
        assert_eq!(m.key_after(None, 10).unwrap().as_deref(), Some("k09"));
        assert_eq!(
            m.key_after(Some("k09"), 10).unwrap().as_deref(),
            Some("k19")
        );
        assert_eq!(m.key_after(Some("k19"), 10).unwrap(), None);
        assert_eq!(
            m.key_after(Some("k095"), 1).unwrap().as_deref(),
            Some("k10")
        );
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
