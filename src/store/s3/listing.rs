//! Reading the whole replica from the bucket: one listing of the prefix
//! (a thousand keys a request), then each object's metadata (rclone's
//! `mtime` and `mode`, a symlink's target) from the metadata cache when the
//! object is unchanged (same ETag, size and last-modified time), else from
//! the store (HEAD, or GET for a symlink), many at once.
//!
//! The cache is a hint persisted in the state directory (`s3-meta.bin`,
//! format below); losing it costs requests, never correctness. An object
//! this store wrote is cached before its last-modified time is known; the
//! first listing after the write binds it.

use super::client::Conn;
use super::layout::{parse_mode, parse_mtime, parse_object, Stored, META_MODE, META_MTIME};
use super::tree::{Node, Tree};
use crate::tree::{Kind, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Metadata requests in flight at once during a listing.
const HEADS_AT_ONCE: usize = 32;
/// Version of the cache file's format (postcard: `CacheFile`).
const CACHE_FORMAT: u32 = 1;

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

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    entries: HashMap<String, Cached>,
}

/// Loads the cache (empty if missing, unreadable or of another format).
pub fn load_cache(path: &Path) -> HashMap<String, Cached> {
    let Ok(bytes) = std::fs::read(path) else {
        return HashMap::new();
    };
    match postcard::from_bytes::<CacheFile>(&bytes) {
        Ok(c) if c.format == CACHE_FORMAT => c.entries,
        _ => HashMap::new(),
    }
}

/// Saves the cache (written beside, then renamed over the old one).
pub fn save_cache(path: &Path, entries: &HashMap<String, Cached>) -> io::Result<()> {
    let file = CacheFile {
        format: CACHE_FORMAT,
        entries: entries.clone(),
    };
    let bytes = postcard::to_allocvec(&file).map_err(io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// One object of the listing.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub modified: i64,
}

/// An ETag without its quotes.
pub fn bare_etag(e: Option<&str>) -> String {
    e.unwrap_or("").trim_matches('"').to_string()
}

/// Every object under the prefix.
pub fn list_all(conn: &Conn) -> io::Result<Vec<Listed>> {
    conn.run(async {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let r = conn
                .client
                .list_objects_v2()
                .bucket(&conn.bucket)
                .prefix(&conn.root)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| conn.error(e))?;
            for o in r.contents() {
                out.push(Listed {
                    key: o.key().unwrap_or("").to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: bare_etag(o.e_tag()),
                    modified: o.last_modified().map_or(0, |t| {
                        t.secs() * 1000 + i64::from(t.subsec_nanos() / 1_000_000)
                    }),
                });
            }
            match r.next_continuation_token() {
                Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    })
}

/// The replica as listed, with the cache brought up to date (entries of
/// objects no longer there are dropped).
pub fn read_tree(conn: &Arc<Conn>, cache: &mut HashMap<String, Cached>) -> io::Result<Tree> {
    let listed = list_all(conn)?;
    let mut fresh = HashMap::with_capacity(listed.len());
    let mut ask = Vec::new();
    for o in &listed {
        match cache.remove(&o.key) {
            Some(mut c)
                if c.etag == o.etag
                    && c.size == o.size
                    && c.modified.is_none_or(|m| m == o.modified) =>
            {
                c.modified = Some(o.modified);
                fresh.insert(o.key.clone(), c);
            }
            _ => ask.push(o.clone()),
        }
    }
    for (o, c) in fetch_meta(conn, ask)? {
        fresh.insert(o.key, c);
    }
    *cache = fresh;
    let mut tree = Tree::default();
    for o in &listed {
        let Some(rel) = o.key.strip_prefix(&conn.root) else {
            continue;
        };
        let (Some(stored), Some(c)) = (parse_object(rel), cache.get(&o.key)) else {
            continue;
        };
        let node = |kind: Kind, marker: bool| Node {
            kind,
            mode: c.mode,
            mtime: c.mtime,
            etag: o.etag.clone(),
            marker,
            dirty: false,
        };
        // Objects that cannot stand for an entry of a directory tree (a
        // file where a directory is) are left alone.
        let _ = match stored {
            Stored::Dir(key) => tree.insert(&key, node(Kind::Dir, true)),
            Stored::File(key) => tree.insert(&key, node(Kind::File { size: o.size }, false)),
            Stored::Link(key) => {
                let target = c.target.clone().unwrap_or_default();
                tree.insert(&key, node(Kind::Symlink { target }, false))
            }
        };
    }
    Ok(tree)
}

/// Reads the metadata of objects not in the cache, many at once.
fn fetch_meta(conn: &Arc<Conn>, objs: Vec<Listed>) -> io::Result<Vec<(Listed, Cached)>> {
    if objs.is_empty() {
        return Ok(Vec::new());
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(HEADS_AT_ONCE));
    let mut tasks = Vec::with_capacity(objs.len());
    for o in objs {
        let (conn2, sem) = (conn.clone(), sem.clone());
        tasks.push(conn.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let c = meta_of(&conn2, &o).await;
            c.map(|c| (o, c))
        }));
    }
    conn.run(async {
        let mut out = Vec::with_capacity(tasks.len());
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok(Ok(x)) => out.push(x),
                // Gone between the listing and now: not there.
                Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(io::Error::other(e));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

async fn meta_of(conn: &Conn, o: &Listed) -> io::Result<Cached> {
    let link = o.key.ends_with(super::layout::LINK_SUFFIX);
    let (meta, target) = if link {
        let r = conn
            .client
            .get_object()
            .bucket(&conn.bucket)
            .key(&o.key)
            .send()
            .await
            .map_err(|e| conn.error(e))?;
        let meta = r.metadata().cloned().unwrap_or_default();
        let body = r.body.collect().await.map_err(io::Error::other)?;
        let target = String::from_utf8_lossy(&body.into_bytes()).into_owned();
        (meta, Some(target))
    } else {
        let r = conn
            .client
            .head_object()
            .bucket(&conn.bucket)
            .key(&o.key)
            .send()
            .await
            .map_err(|e| conn.error(e))?;
        (r.metadata().cloned().unwrap_or_default(), None)
    };
    Ok(Cached {
        etag: o.etag.clone(),
        size: o.size,
        modified: Some(o.modified),
        mtime: meta
            .get(META_MTIME)
            .and_then(|m| parse_mtime(m))
            .unwrap_or_default(),
        mode: meta.get(META_MODE).and_then(|m| parse_mode(m)),
        target,
    })
}
