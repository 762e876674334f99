//! The listing of the prefix, cut into stretches listed at once: the
//! metadata cache holds the keys of the last listing, so every
//! [`STRETCH_KEYS`]th of them bounds a stretch, and [`AT_ONCE`] stretches
//! are asked for together (each from its first key with `StartAfter`,
//! page after page until it passes its last key). The pages still reach
//! the reader in key order, one stretch after the other; memory holds the
//! pages in flight (at most two per stretch). A cache that is empty or
//! wrong only makes the stretches uneven: each key of the bucket is in
//! exactly one stretch whatever the bounds.

use super::client::Conn;
use super::meta::MetaCache;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Stretches listed at once.
const AT_ONCE: usize = 4;
/// Keys of the last listing per stretch (a page's worth).
const STRETCH_KEYS: usize = 1000;

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

type Pages = mpsc::Receiver<io::Result<Vec<Listed>>>;

/// The listing, a page at a time in key order.
pub struct Lister {
    conn: Arc<Conn>,
    /// Stretches asked for, in key order.
    ahead: VecDeque<Pages>,
    /// The last key of the last stretch asked for (None: from the start).
    bound: Option<String>,
    /// The last stretch (to the end of the listing) is asked for.
    ended: bool,
}

impl Lister {
    pub fn new(conn: &Arc<Conn>) -> Lister {
        Lister {
            conn: conn.clone(),
            ahead: VecDeque::new(),
            bound: None,
            ended: false,
        }
    }

    /// The next page (None: the listing is over). Pages can be short or
    /// empty (where a stretch ends).
    pub fn next(&mut self, cache: &MetaCache) -> io::Result<Option<Vec<Listed>>> {
        loop {
            while self.ahead.len() < AT_ONCE && !self.ended {
                let upto = cache.key_after(self.bound.as_deref(), STRETCH_KEYS)?;
                let after = std::mem::replace(&mut self.bound, upto.clone());
                self.ended = upto.is_none();
                self.ahead.push_back(stretch(&self.conn, after, upto));
            }
            let Some(rx) = self.ahead.front_mut() else {
                return Ok(None);
            };
            match self.conn.run(rx.recv()) {
                Some(page) => return page.map(Some),
                None => {
                    self.ahead.pop_front();
                }
            }
        }
    }
}

/// Lists the keys after `after` up to and including `upto` (None: to the
/// end) in the background, a page at a time into the channel.
fn stretch(conn: &Arc<Conn>, after: Option<String>, upto: Option<String>) -> Pages {
    let (tx, rx) = mpsc::channel(1);
    let c = conn.clone();
    conn.spawn(async move {
        let mut token = None;
        loop {
            let (mut page, next) = match list_page(&c, after.as_deref(), token).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let done = cut(&mut page, upto.as_deref()) || next.is_none();
            // A receiver gone: the listing stopped (an error elsewhere).
            if tx.send(Ok(page)).await.is_err() || done {
                return;
            }
            token = next;
        }
    });
    rx
}

/// Cuts a page at the end of its stretch (`upto`, None: the listing's
/// end): the keys after it go; true when the stretch is over (a key past
/// its end was listed, or its last key).
fn cut(page: &mut Vec<Listed>, upto: Option<&str>) -> bool {
    let Some(u) = upto else {
        return false;
    };
    match page.iter().position(|o| o.key.as_str() > u) {
        Some(past) => {
            page.truncate(past);
            true
        }
        None => page.last().is_some_and(|o| o.key == u),
    }
}

/// One page of the listing of the prefix (at most a thousand objects)
/// after `after` (not sent with a continuation token, which says where
/// the listing is), and the token for the next (None: the last).
async fn list_page(
    conn: &Conn,
    after: Option<&str>,
    token: Option<String>,
) -> io::Result<(Vec<Listed>, Option<String>)> {
    let r = conn
        .client
        .list_objects_v2()
        .bucket(&conn.bucket)
        .prefix(&conn.root)
        .set_start_after(after.filter(|_| token.is_none()).map(str::to_string))
        .set_continuation_token(token)
        .send()
        .await
        .map_err(|e| conn.error(e))?;
    let page = r
        .contents()
        .iter()
        .map(|o| Listed {
            key: o.key().unwrap_or("").to_string(),
            size: o.size().unwrap_or(0).max(0) as u64,
            etag: bare_etag(o.e_tag()),
            modified: o.last_modified().map_or(0, |t| {
                t.secs() * 1000 + i64::from(t.subsec_nanos() / 1_000_000)
            }),
        })
        .collect();
    let next = match r.next_continuation_token() {
        Some(t) if r.is_truncated() == Some(true) => Some(t.to_string()),
        _ => None,
    };
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str]) -> Vec<Listed> {
        keys.iter()
            .map(|k| Listed {
                key: k.to_string(),
                size: 0,
                etag: String::new(),
                modified: 0,
            })
            .collect()
    }

    fn keys(p: &[Listed]) -> Vec<&str> {
        p.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn a_page_is_cut_where_its_stretch_ends() {
        let mut p = page(&["a", "b", "c"]);
        assert!(cut(&mut p, Some("b")));
        assert_eq!(keys(&p), ["a", "b"]);
        // Ending on the stretch's last key: over, nothing more to ask.
        let mut p = page(&["a", "b"]);
        assert!(cut(&mut p, Some("b")));
        assert_eq!(keys(&p), ["a", "b"]);
        // Short of it (keys gone since the last listing): the next page.
        let mut p = page(&["a", "b"]);
        assert!(!cut(&mut p, Some("bb")));
        assert_eq!(keys(&p), ["a", "b"]);
        // Past it at once: an empty page, over.
        let mut p = page(&["c"]);
        assert!(cut(&mut p, Some("b")));
        assert!(p.is_empty());
        // The last stretch runs to the listing's end.
        let mut p = page(&["x"]);
        assert!(!cut(&mut p, None));
        assert!(!cut(&mut Vec::new(), Some("b")));
    }
}
