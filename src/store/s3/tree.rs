//! What the server knows of the replica in the bucket: the entries found by
//! the last listing, kept up to date by the store's own writes. They live
//! on disk (a scratch redb database in the state directory, made again at
//! each listing), so a bucket of ten million objects costs no more memory
//! than one of a thousand: redb's page cache and one transaction's dirty
//! pages (`db.rs`), plus the names of the directory being read.

use crate::store::db::{err, Db};
use crate::store::{child_key, split_key};
use crate::tree::{Kind, Timestamp};
use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;

/// Store key -> the node (postcard).
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// (directory key, name) of each entry but the root.
const KIDS: TableDefinition<(&str, &str), ()> = TableDefinition::new("children");
/// Keys of the dirty nodes.
const DIRTY: TableDefinition<&str, ()> = TableDefinition::new("dirty");

/// redb's page cache for the tree.
const CACHE_BYTES: usize = 4 << 20;

/// One entry of the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub kind: Kind,
    pub mode: Option<u32>,
    pub mtime: Timestamp,
    /// The object's ETag (without quotes); empty for a directory.
    pub etag: String,
    /// A directory: whether its marker object exists.
    pub marker: bool,
    /// A directory or symlink made by this store whose object is still to
    /// be written (at its metadata, or at the end of the pass).
    pub dirty: bool,
}

impl Node {
    /// A directory implied by the keys below it (no marker, no metadata).
    pub fn implied_dir() -> Node {
        Node {
            kind: Kind::Dir,
            mode: None,
            mtime: Timestamp::default(),
            etag: String::new(),
            marker: false,
            dirty: false,
        }
    }
}

/// The replica's entries by store key (`""`: the root).
pub struct Tree {
    db: Db,
    /// Nothing was put since the tree was made or cleared.
    fresh: bool,
}

impl Tree {
    /// An empty tree (the root only) at `path`, replacing what is there.
    pub fn create(path: &Path) -> io::Result<Tree> {
        let mut t = Tree {
            db: Db::scratch(path, CACHE_BYTES)?,
            fresh: true,
        };
        t.insert("", Node::implied_dir())?;
        t.fresh = true;
        Ok(t)
    }

    /// Empties the tree (the root only), for a new listing: its tables
    /// are dropped in the open transaction (nothing to do when nothing
    /// was put since it was made).
    pub fn clear(&mut self) -> io::Result<()> {
        if self.fresh {
            return Ok(());
        }
        {
            let txn = self.db.txn();
            txn.delete_table(NODES).map_err(|e| self.db.err(e))?;
            txn.delete_table(KIDS).map_err(|e| self.db.err(e))?;
            txn.delete_table(DIRTY).map_err(|e| self.db.err(e))?;
        }
        self.db.commit(false)?;
        self.insert("", Node::implied_dir())?;
        self.fresh = true;
        Ok(())
    }

    pub fn get(&self, key: &str) -> io::Result<Option<Node>> {
        let t = self
            .db
            .txn()
            .open_table(NODES)
            .map_err(|e| self.db.err(e))?;
        let v = t.get(key).map_err(|e| self.db.err(e))?;
        match v {
            None => Ok(None),
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| self.db.err(e)),
        }
    }

    /// Up to `max` names of directory `key`, in order.
    fn children(&self, key: &str, max: usize) -> io::Result<Vec<String>> {
        let t = self.db.txn().open_table(KIDS).map_err(|e| self.db.err(e))?;
        let mut out = Vec::new();
        let range = t
            .range::<(&str, &str)>((key, "")..)
            .map_err(|e| self.db.err(e))?;
        for item in range {
            let (k, _) = item.map_err(|e| self.db.err(e))?;
            let (dir, name) = k.value();
            if dir != key || out.len() >= max {
                break;
            }
            out.push(name.to_string());
        }
        Ok(out)
    }

    /// The names in directory `key` (None: not a directory).
    pub fn names(&self, key: &str) -> io::Result<Option<Vec<String>>> {
        match self.get(key)? {
            Some(n) if n.kind.is_dir() => self.children(key, usize::MAX).map(Some),
            _ => Ok(None),
        }
    }

    /// Puts `node` at `key`, its missing parents as implied directories.
    /// False (nothing changed) when a parent is not a directory, or when a
    /// directory that has entries would be replaced by a non-directory.
    pub fn insert(&mut self, key: &str, node: Node) -> io::Result<bool> {
        self.fresh = false;
        let mut writes = 0;
        let done = {
            let mut t = Open::new(&self.db)?;
            t.insert(key, &node, &mut writes)?
        };
        self.db.wrote_many(writes)?;
        Ok(done)
    }

    /// Puts the entries of one page of the listing in order, each as
    /// [`Tree::insert`] would (those it refuses are left out), with the
    /// tables opened once for the page.
    pub fn insert_page(&mut self, entries: &[(String, Node)]) -> io::Result<()> {
        self.fresh = false;
        let mut writes = 0;
        {
            let mut t = Open::new(&self.db)?;
            for (key, node) in entries {
                t.insert(key, node, &mut writes)?;
            }
        }
        self.db.wrote_many(writes)
    }

    /// Removes up to `max` entries of `key`'s subtree, deepest first,
    /// handing each that goes to `gone`; true when `key` itself went (the
    /// root stays: true when it is empty). The caller goes on until true,
    /// so a huge subtree never has to be held anywhere.
    pub fn remove_some(
        &mut self,
        key: &str,
        max: usize,
        gone: &mut dyn FnMut(&str, &Node) -> io::Result<()>,
    ) -> io::Result<bool> {
        let mut budget = max;
        let done = self.remove_into(key, &mut budget, gone)?;
        if done && !key.is_empty() {
            self.unlink(key)?;
        }
        Ok(done)
    }

    /// Drops `key` from its parent's names.
    fn unlink(&mut self, key: &str) -> io::Result<()> {
        let (parent, name) = split_key(key);
        {
            let mut t = self.db.txn().open_table(KIDS).map_err(|e| self.db.err(e))?;
            t.remove((parent, name)).map_err(|e| self.db.err(e))?;
        }
        self.db.wrote()
    }

    fn remove_into(
        &mut self,
        key: &str,
        budget: &mut usize,
        gone: &mut dyn FnMut(&str, &Node) -> io::Result<()>,
    ) -> io::Result<bool> {
        // A batch of names at a time: the widest directory is not held.
        loop {
            let names = self.children(key, 1024)?;
            if names.is_empty() {
                break;
            }
            for name in names {
                let child = child_key(key, &name);
                if !self.remove_into(&child, budget, gone)? {
                    return Ok(false);
                }
                self.unlink(&child)?;
            }
        }
        if key.is_empty() {
            return Ok(true);
        }
        if *budget == 0 {
            return Ok(false);
        }
        if let Some(node) = self.get(key)? {
            {
                let txn = self.db.txn();
                let mut t = txn.open_table(NODES).map_err(|e| self.db.err(e))?;
                t.remove(key).map_err(|e| self.db.err(e))?;
                let mut d = txn.open_table(DIRTY).map_err(|e| self.db.err(e))?;
                d.remove(key).map_err(|e| self.db.err(e))?;
            }
            self.db.wrote()?;
            *budget -= 1;
            gone(key, &node)?;
        }
        Ok(true)
    }

    /// Sets the ETag of the entry at `key`, if there is one.
    pub fn set_etag(&mut self, key: &str, etag: String) -> io::Result<()> {
        if let Some(mut n) = self.get(key)? {
            n.etag = etag;
            self.insert(key, n)?;
        }
        Ok(())
    }

    /// Up to `max` entries after `after` waiting for their object to be
    /// written, in key order.
    pub fn dirty(&self, after: Option<&str>, max: usize) -> io::Result<Vec<String>> {
        let t = self
            .db
            .txn()
            .open_table(DIRTY)
            .map_err(|e| self.db.err(e))?;
        let range = match after {
            Some(a) => t.range::<&str>(a..),
            None => t.range::<&str>(..),
        }
        .map_err(|e| self.db.err(e))?;
        let mut out = Vec::new();
        for item in range {
            let k = item.map_err(|e| self.db.err(e))?.0;
            if Some(k.value()) == after {
                continue;
            }
            if out.len() >= max {
                break;
            }
            out.push(k.value().to_string());
        }
        Ok(out)
    }
}

/// The tables of a tree open for a batch of writes (opening a table is a
/// lookup of its own: once per batch, not per entry).
struct Open<'t> {
    nodes: Table<'t, &'static str, &'static [u8]>,
    kids: Table<'t, (&'static str, &'static str), ()>,
    dirty: Table<'t, &'static str, ()>,
    path: &'t Path,
    /// A directory that has been given a child in this batch: it stays a
    /// directory (nothing in a batch removes), so it is not looked up
    /// again for its next child.
    parent: Option<String>,
}

impl<'t> Open<'t> {
    fn new(db: &'t Db) -> io::Result<Open<'t>> {
        let txn = db.txn();
        Ok(Open {
            nodes: txn.open_table(NODES).map_err(|e| db.err(e))?,
            kids: txn.open_table(KIDS).map_err(|e| db.err(e))?,
            dirty: txn.open_table(DIRTY).map_err(|e| db.err(e))?,
            path: db.path(),
            parent: None,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> io::Error {
        err(self.path, e)
    }

    fn get(&self, key: &str) -> io::Result<Option<Node>> {
        match self.nodes.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| self.err(e)),
        }
    }

    fn has_children(&self, key: &str) -> io::Result<bool> {
        let mut range = self
            .kids
            .range::<(&str, &str)>((key, "")..)
            .map_err(|e| self.err(e))?;
        match range.next() {
            None => Ok(false),
            Some(item) => Ok(item.map_err(|e| self.err(e))?.0.value().0 == key),
        }
    }

    /// [`Tree::insert`], counting the writes in `writes`.
    fn insert(&mut self, key: &str, node: &Node, writes: &mut usize) -> io::Result<bool> {
        if key.is_empty() {
            if !node.kind.is_dir() {
                return Ok(false);
            }
            let old = self.get("")?;
            self.put("", node, old.as_ref(), writes)?;
            return Ok(true);
        }
        let (parent, name) = split_key(key);
        if self.parent.as_deref() != Some(parent) {
            match self.get(parent)? {
                Some(p) if !p.kind.is_dir() => return Ok(false),
                Some(_) => {}
                None => {
                    if !self.insert(parent, &Node::implied_dir(), writes)? {
                        return Ok(false);
                    }
                }
            }
        }
        // A key not in the tree has no children: a child's insert puts
        // its parent first, a removal takes the children first.
        let old = self.get(key)?;
        if let Some(old) = &old {
            if !node.kind.is_dir() && self.has_children(key)? {
                return Ok(false);
            }
            if old.kind.is_dir() && node.kind.is_dir() && !node.marker && old.marker {
                // An implied directory never hides a marker already found.
                return Ok(true);
            }
        } else {
            self.kids
                .insert((parent, name), ())
                .map_err(|e| err(self.path, e))?;
            *writes += 1;
        }
        self.put(key, node, old.as_ref(), writes)?;
        self.parent = Some(parent.to_string());
        Ok(true)
    }

    /// Writes `node` at `key` over `old` (no parent bookkeeping).
    fn put(
        &mut self,
        key: &str,
        node: &Node,
        old: Option<&Node>,
        writes: &mut usize,
    ) -> io::Result<()> {
        let bytes = postcard::to_allocvec(node).map_err(|e| err(self.path, e))?;
        self.nodes
            .insert(key, &bytes[..])
            .map_err(|e| err(self.path, e))?;
        if node.dirty {
            self.dirty.insert(key, ()).map_err(|e| err(self.path, e))?;
        } else if old.is_some_and(|o| o.dirty) {
            self.dirty.remove(key).map_err(|e| err(self.path, e))?;
        }
        *writes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree(dir: &tempfile::TempDir) -> Tree {
        Tree::create(&dir.path().join("tree.redb")).unwrap()
    }

    fn removed(t: &mut Tree, key: &str) -> Vec<String> {
        let mut gone = Vec::new();
        // Three at a time, as the store does it a thousand at a time.
        while !t
            .remove_some(key, 3, &mut |k, _| {
                gone.push(k.to_string());
                Ok(())
            })
            .unwrap()
        {}
        gone
    }

    fn file(size: u64) -> Node {
        Node {
            kind: Kind::File { size },
            ..Node::implied_dir()
        }
    }

    #[test]
    fn parents_are_implied_and_removal_takes_the_subtree() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tree(&dir);
        assert!(t.insert("a/b/c", file(1)).unwrap());
        assert!(t.insert("a/d", file(2)).unwrap());
        assert_eq!(t.names("a").unwrap().unwrap(), vec!["b", "d"]);
        assert_eq!(t.names("").unwrap(), Some(vec!["a".to_string()]));
        assert!(t.get("a/b").unwrap().unwrap().kind.is_dir());
        assert_eq!(t.names("a/d").unwrap(), None);
        // A file under a file, or a file over a non-empty directory: refused.
        assert!(!t.insert("a/d/x", file(1)).unwrap());
        assert!(!t.insert("a/b", file(1)).unwrap());
        assert_eq!(removed(&mut t, "a/b"), vec!["a/b/c", "a/b"]);
        assert_eq!(t.names("a").unwrap().unwrap(), vec!["d"]);
        assert_eq!(t.get("a/b/c").unwrap(), None);
        // Emptying the root keeps the root.
        assert_eq!(removed(&mut t, ""), vec!["a/d", "a"]);
        assert_eq!(t.names("").unwrap(), Some(vec![]));
    }

    /// Every entry reachable from the root, with its node, in order.
    fn dump(t: &Tree) -> Vec<(String, Node)> {
        let mut out = Vec::new();
        let mut todo = vec![String::new()];
        while let Some(k) = todo.pop() {
            let node = t.get(&k).unwrap().unwrap();
            if let Some(names) = t.names(&k).unwrap() {
                todo.extend(names.iter().rev().map(|n| child_key(&k, n)));
            }
            out.push((k, node));
        }
        out
    }

    fn arb_entry() -> impl Strategy<Value = (String, Node)> {
        let key = proptest::collection::vec("[ab]", 1..4).prop_map(|p| p.join("/"));
        let node = (0u8..4, any::<bool>()).prop_map(|(kind, dirty)| Node {
            kind: match kind {
                0 => Kind::Dir,
                1 => Kind::Symlink { target: "t".into() },
                _ => Kind::File { size: kind.into() },
            },
            marker: kind == 0 && !dirty,
            dirty,
            ..Node::implied_dir()
        });
        (key, node)
    }

    proptest! {
        /// A page put at once makes the tree its entries put one by one make.
        #[test]
        fn a_page_at_once_is_its_entries_one_by_one(
            pages in proptest::collection::vec(proptest::collection::vec(arb_entry(), 0..12), 1..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut one = Tree::create(&dir.path().join("one.redb")).unwrap();
            let mut many = Tree::create(&dir.path().join("many.redb")).unwrap();
            for page in &pages {
                for (k, n) in page {
                    one.insert(k, n.clone()).unwrap();
                }
                many.insert_page(page).unwrap();
            }
            prop_assert_eq!(dump(&one), dump(&many));
            prop_assert_eq!(one.dirty(None, 100).unwrap(), many.dirty(None, 100).unwrap());
        }
    }

    #[test]
    fn a_marker_is_not_hidden_by_an_implied_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tree(&dir);
        let marked = Node {
            marker: true,
            mode: Some(0o700),
            ..Node::implied_dir()
        };
        assert!(t.insert("d", marked.clone()).unwrap());
        assert!(t.insert("d/f", file(1)).unwrap());
        assert_eq!(t.get("d").unwrap(), Some(marked));
    }

    #[test]
    fn dirty_entries_are_listed_until_written_and_survive_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tree(&dir);
        // More writes than one transaction holds: commits in between.
        for i in 0..3000 {
            let node = Node {
                dirty: i % 1000 == 0,
                ..file(i)
            };
            assert!(t.insert(&format!("d{}/f{i:04}", i % 7), node).unwrap());
        }
        assert_eq!(
            t.dirty(None, 10).unwrap(),
            vec!["d0/f0000", "d5/f2000", "d6/f1000"]
        );
        assert_eq!(t.dirty(Some("d5/f2000"), 10).unwrap(), vec!["d6/f1000"]);
        let mut n = t.get("d6/f1000").unwrap().unwrap();
        n.dirty = false;
        assert!(t.insert("d6/f1000", n).unwrap());
        assert_eq!(t.dirty(None, 1).unwrap(), vec!["d0/f0000"]);
        t.set_etag("d0/f0000", "e".into()).unwrap();
        assert_eq!(t.get("d0/f0000").unwrap().unwrap().etag, "e");
        assert_eq!(t.names("d3").unwrap().unwrap().len(), 429);
        assert_eq!(removed(&mut t, "").len(), 3007);
        assert_eq!(t.dirty(None, 10).unwrap(), Vec::<String>::new());
        t.clear().unwrap();
        assert_eq!(t.names("").unwrap(), Some(vec![]));
    }
}
