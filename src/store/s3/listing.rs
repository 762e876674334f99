//! Reading the whole replica from the bucket: the prefix is listed a
//! thousand keys a request, several stretches of it at once (`lister.rs`),
//! and each page of the listing is read into the tree in key order (so
//! memory holds the pages in flight, whatever the bucket's size). Each object's metadata (rclone's `mtime` and
//! `mode`, a symlink's target) comes from the metadata cache (`meta.rs`)
//! when the object is unchanged (same ETag, size and last-modified time),
//! else from the store (HEAD, or GET for a symlink), many at once.
//!
//! The listing is in key order (S3's ListObjectsV2 is), so a page's cache
//! entries are read with one cursor over the keys from the page's first
//! to its last (`merge.rs`), and the entries among them that are not
//! listed (objects no longer there) are dropped on the way. A no-change
//! page writes nothing to the cache. An object this store wrote is cached
//! before its last-modified time is known; the first listing after the
//! write binds it.

use super::client::Conn;
use super::layout::{parse_mode, parse_mtime, parse_object, Stored, META_MODE, META_MTIME};
use super::lister::{Listed, Lister};
use super::meta::{Cached, MetaCache};
use super::tree::{Node, Tree};
use crate::tree::Kind;
use std::io;
use std::sync::Arc;

/// Metadata requests in flight at once during a listing.
const HEADS_AT_ONCE: usize = 32;

/// Reads the replica as listed into `tree` (which holds only its root),
/// with the cache brought up to date (entries of objects no longer there
/// are dropped).
pub fn read_tree(conn: &Arc<Conn>, cache: &mut MetaCache, tree: &mut Tree) -> io::Result<()> {
    let mut lister = Lister::new(conn);
    let mut prev: Option<String> = None;
    while let Some(page) = lister.next(cache)? {
        read_page(conn, cache, tree, &page, prev.as_deref())?;
        if let Some(last) = page.last() {
            prev = Some(last.key.clone());
        }
    }
    cache.page(prev.as_deref(), &[]).map(|_| ())
}

/// One page of the listing (the keys after `prev`) into the tree and the
/// cache: the cache's entries for the page are read with one cursor, and
/// only what changed is written to it.
fn read_page(
    conn: &Arc<Conn>,
    cache: &mut MetaCache,
    tree: &mut Tree,
    page: &[Listed],
    prev: Option<&str>,
) -> io::Result<()> {
    if page.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = page.iter().map(|o| o.key.as_str()).collect();
    let mut known = cache.page(prev, &keys)?;
    let mut ask = Vec::new();
    for (i, o) in page.iter().enumerate() {
        match &mut known[i] {
            Some(c)
                if c.etag == o.etag
                    && c.size == o.size
                    && c.modified.is_none_or(|m| m == o.modified) =>
            {
                if c.modified.is_none() {
                    c.modified = Some(o.modified);
                    cache.insert(&o.key, c)?;
                }
            }
            k => {
                *k = None;
                ask.push(i);
            }
        }
    }
    let asked = ask.iter().map(|&i| (i, page[i].clone())).collect();
    for (i, c) in fetch_meta(conn, asked)? {
        cache.insert(&page[i].key, &c)?;
        known[i] = Some(c);
    }
    // In listing order, as the tree's rules about conflicts want.
    let entries: Vec<(String, Node)> = page
        .iter()
        .zip(&known)
        .filter_map(|(o, c)| entry(conn, o, c.as_ref()?))
        .collect();
    tree.insert_page(&entries)
}

/// The tree's entry for one listed object; None for objects that cannot
/// stand for an entry of a directory tree.
fn entry(conn: &Conn, o: &Listed, c: &Cached) -> Option<(String, Node)> {
    let rel = o.key.strip_prefix(&conn.root)?;
    let node = |kind: Kind, marker: bool| Node {
        kind,
        mode: c.mode,
        mtime: c.mtime,
        etag: o.etag.clone(),
        marker,
        dirty: false,
    };
    Some(match parse_object(rel)? {
        Stored::Dir(key) => (key, node(Kind::Dir, true)),
        Stored::File(key) => (key, node(Kind::File { size: o.size }, false)),
        Stored::Link(key) => {
            let target = c.target.clone().unwrap_or_default();
            (key, node(Kind::Symlink { target }, false))
        }
    })
}

/// Reads the metadata of objects not in the cache, many at once.
fn fetch_meta(conn: &Arc<Conn>, objs: Vec<(usize, Listed)>) -> io::Result<Vec<(usize, Cached)>> {
    if objs.is_empty() {
        return Ok(Vec::new());
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(HEADS_AT_ONCE));
    let mut tasks = Vec::with_capacity(objs.len());
    for (i, o) in objs {
        let (conn2, sem) = (conn.clone(), sem.clone());
        tasks.push(conn.spawn(async move {
            let _permit = sem.acquire_owned().await;
            meta_of(&conn2, &o).await.map(|c| (i, c))
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
