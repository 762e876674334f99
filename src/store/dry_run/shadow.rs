//! A dry run's picture of the replica as the pass would have left it: the
//! entries it would have made, changed, moved or removed, over the real
//! replica, which it never changes. Kept on disk (a scratch redb database
//! beside the replica index, written without syncing, deleted when
//! dropped), so a paged dry run stays flat in memory while its later pages
//! still see what earlier ones would have done.
//!
//! Keys are `parent \0 name`, so a directory's entries are one range
//! (names hold neither `\0` nor `/`, and `\0` sorts before every other
//! byte). A value is an encoded [`Shade`], or empty for an entry the pass
//! would have removed.

use crate::store::db::Db;
use crate::store::split_key;
use crate::tree::{Kind, Timestamp, Version};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("shadow");

/// redb's page cache for this scratch database.
const CACHE_BYTES: usize = 1 << 20;

/// Versions given to files the dry run would have written: far above
/// inode numbers and object generations, and never [`Version::UNKNOWN`].
const FIRST_VERSION: u64 = 1 << 62;

/// One entry as the pass would have left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shade {
    pub kind: Kind,
    pub mode: Option<u32>,
    pub mtime: Timestamp,
    pub version: Version,
    /// Where its content is in the real replica (None: content the dry
    /// run would have written, and did not).
    pub origin: Option<String>,
}

/// The entries a dry run would have changed.
pub struct Shadow {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// Scratch, never synced (None once dropped).
    db: Option<Db>,
    next_version: u64,
    /// Names each file identity (an inode) gained or lost: hard-linked
    /// files only, which are rare, so in memory.
    links: std::collections::HashMap<u64, i64>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("dry run's scratch database: {e}"))
}

/// The database key of `key` (the root's is `\0`: no name is empty).
fn db_key(key: &str) -> String {
    let (parent, name) = split_key(key);
    format!("{parent}\0{name}")
}

impl Shadow {
    /// A new, empty picture at `path` (a stale file of a killed dry run is
    /// replaced).
    pub fn create(path: &Path) -> io::Result<Shadow> {
        let state = State {
            db: Some(Db::scratch(path, CACHE_BYTES)?),
            next_version: FIRST_VERSION,
            links: Default::default(),
        };
        Ok(Shadow {
            path: path.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the pass would have left at `key`: None if it left it as it
    /// is, `Some(None)` if it would have removed it.
    pub fn get(&self, key: &str) -> io::Result<Option<Option<Shade>>> {
        let st = self.state();
        let t = st.txn().open_table(ENTRIES).map_err(other)?;
        let v = t.get(db_key(key).as_str()).map_err(other)?;
        Ok(v.map(|v| decode(v.value())))
    }

    /// Notes what the pass would leave at `key` (None: nothing).
    pub fn put(&self, key: &str, shade: Option<&Shade>) -> io::Result<()> {
        let bytes = match shade {
            Some(s) => postcard::to_stdvec(s).map_err(other)?,
            None => Vec::new(),
        };
        let mut st = self.state();
        {
            let mut t = st.txn().open_table(ENTRIES).map_err(other)?;
            t.insert(db_key(key).as_str(), bytes.as_slice())
                .map_err(other)?;
        }
        st.db_mut().wrote()
    }

    /// The entries of directory `dir` the pass would have changed, by name.
    pub fn children(&self, dir: &str) -> io::Result<Vec<(String, Option<Shade>)>> {
        let (start, end) = (format!("{dir}\0"), format!("{dir}\u{1}"));
        let st = self.state();
        let t = st.txn().open_table(ENTRIES).map_err(other)?;
        let mut out = Vec::new();
        for r in t.range(start.as_str()..end.as_str()).map_err(other)? {
            let (k, v) = r.map_err(other)?;
            let name = &k.value()[start.len()..];
            if !name.is_empty() {
                // (the root's own key, `\0`, is in the root's range)
                out.push((name.to_string(), decode(v.value())));
            }
        }
        Ok(out)
    }

    /// Notes that file identity `id` gained (`+1`) or lost (`-1`) a name.
    pub fn add_links(&self, id: u64, delta: i64) {
        *self.state().links.entry(id).or_insert(0) += delta;
    }

    /// Names file identity `id` gained or lost so far.
    pub fn links_changed(&self, id: u64) -> i64 {
        self.state().links.get(&id).copied().unwrap_or(0)
    }

    /// A version for a file the pass would have written.
    pub fn new_version(&self) -> Version {
        let mut st = self.state();
        st.next_version += 1;
        Version(st.next_version)
    }
}

impl State {
    fn db_mut(&mut self) -> &mut Db {
        self.db.as_mut().expect("open until dropped")
    }

    fn txn(&self) -> &redb::WriteTransaction {
        self.db.as_ref().expect("open until dropped").txn()
    }
}

/// An empty value (a removal) or a shade that does not decode: nothing.
fn decode(b: &[u8]) -> Option<Shade> {
    if b.is_empty() {
        return None;
    }
    postcard::from_bytes(b).ok()
}

impl Drop for Shadow {
    fn drop(&mut self) {
        // Closed (its transaction committed unsynced) before the file goes.
        self.state().db = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Shade {
        Shade {
            kind: Kind::File { size },
            mode: Some(0o644),
            mtime: Timestamp::default(),
            version: Version(7),
            origin: None,
        }
    }

    #[test]
    fn entries_are_found_by_key_and_by_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = Shadow::create(&path).unwrap();
        assert_eq!(s.get("a/b").unwrap(), None);
        s.put("a/b", Some(&file(3))).unwrap();
        s.put("a/c", None).unwrap();
        s.put("a/b/deeper", Some(&file(1))).unwrap();
        s.put("ab", Some(&file(2))).unwrap();
        s.put("", Some(&file(9))).unwrap();
        assert_eq!(s.get("a/b").unwrap(), Some(Some(file(3))));
        assert_eq!(s.get("a/c").unwrap(), Some(None));
        assert_eq!(s.get("").unwrap(), Some(Some(file(9))), "the root");
        let names: Vec<(String, bool)> = s
            .children("a")
            .unwrap()
            .into_iter()
            .map(|(n, e)| (n, e.is_some()))
            .collect();
        assert_eq!(names, vec![("b".into(), true), ("c".into(), false)]);
        assert_eq!(s.children("").unwrap().len(), 1, "ab, at the root");
        for _ in 0..(2 * crate::store::db::CHECKPOINT) {
            s.put("x/y", Some(&file(5))).unwrap();
        }
        assert_eq!(s.get("a/b").unwrap(), Some(Some(file(3))));
        assert!(s.new_version() != s.new_version());
        drop(s);
        assert!(!path.exists());
    }
}
