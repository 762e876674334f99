//! What the server knows of the replica in the bucket: the entries found by
//! the last listing, kept up to date by the store's own writes (pure).

use crate::store::{child_key, split_key};
use crate::tree::{Kind, Timestamp};
use std::collections::{BTreeSet, HashMap};

/// One entry of the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<String, Node>,
    children: HashMap<String, BTreeSet<String>>,
}

impl Default for Tree {
    fn default() -> Self {
        let mut t = Tree {
            nodes: HashMap::new(),
            children: HashMap::new(),
        };
        t.nodes.insert(String::new(), Node::implied_dir());
        t
    }
}

impl Tree {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.nodes.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.nodes.get_mut(key)
    }

    /// The names in directory `key` (None: not a directory).
    pub fn names(&self, key: &str) -> Option<Vec<String>> {
        match self.nodes.get(key) {
            Some(n) if n.kind.is_dir() => Some(
                self.children
                    .get(key)
                    .map(|c| c.iter().cloned().collect())
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }

    /// Puts `node` at `key`, its missing parents as implied directories.
    /// False (nothing changed) when a parent is not a directory, or when a
    /// directory that has entries would be replaced by a non-directory.
    pub fn insert(&mut self, key: &str, node: Node) -> bool {
        if key.is_empty() {
            if !node.kind.is_dir() {
                return false;
            }
            self.nodes.insert(String::new(), node);
            return true;
        }
        let (parent, name) = split_key(key);
        match self.nodes.get(parent) {
            Some(p) if !p.kind.is_dir() => return false,
            Some(_) => {}
            None => {
                if !self.insert(parent, Node::implied_dir()) {
                    return false;
                }
            }
        }
        if !node.kind.is_dir() && self.children.get(key).is_some_and(|c| !c.is_empty()) {
            return false;
        }
        if let Some(old) = self.nodes.get(key) {
            if old.kind.is_dir() && node.kind.is_dir() && !node.marker && old.marker {
                // An implied directory never hides a marker already found.
                return true;
            }
        }
        self.children
            .entry(parent.to_string())
            .or_default()
            .insert(name.to_string());
        self.nodes.insert(key.to_string(), node);
        true
    }

    /// Removes `key` and everything below it; returns what went, deepest
    /// first.
    pub fn remove(&mut self, key: &str) -> Vec<(String, Node)> {
        let mut gone = Vec::new();
        self.remove_into(key, &mut gone);
        if !key.is_empty() {
            let (parent, name) = split_key(key);
            if let Some(c) = self.children.get_mut(parent) {
                c.remove(name);
            }
        }
        gone
    }

    fn remove_into(&mut self, key: &str, gone: &mut Vec<(String, Node)>) {
        if let Some(names) = self.children.remove(key) {
            for n in names {
                self.remove_into(&child_key(key, &n), gone);
            }
        }
        if key.is_empty() {
            return;
        }
        if let Some(n) = self.nodes.remove(key) {
            gone.push((key.to_string(), n));
        }
    }

    /// Entries waiting for their object to be written.
    pub fn dirty(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.dirty)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Node {
        Node {
            kind: Kind::File { size },
            ..Node::implied_dir()
        }
    }

    #[test]
    fn parents_are_implied_and_removal_takes_the_subtree() {
        let mut t = Tree::default();
        assert!(t.insert("a/b/c", file(1)));
        assert!(t.insert("a/d", file(2)));
        assert_eq!(t.names("a").unwrap(), vec!["b", "d"]);
        assert_eq!(t.names(""), Some(vec!["a".to_string()]));
        assert!(t.get("a/b").unwrap().kind.is_dir());
        // A file under a file, or a file over a non-empty directory: refused.
        assert!(!t.insert("a/d/x", file(1)));
        assert!(!t.insert("a/b", file(1)));
        let gone: Vec<String> = t.remove("a/b").into_iter().map(|(k, _)| k).collect();
        assert_eq!(gone, vec!["a/b/c", "a/b"]);
        assert_eq!(t.names("a").unwrap(), vec!["d"]);
    }

    #[test]
    fn a_marker_is_not_hidden_by_an_implied_directory() {
        let mut t = Tree::default();
        let marked = Node {
            marker: true,
            mode: Some(0o700),
            ..Node::implied_dir()
        };
        assert!(t.insert("d", marked.clone()));
        assert!(t.insert("d/f", file(1)));
        assert_eq!(t.get("d"), Some(&marked));
    }
}
