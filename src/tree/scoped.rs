//! Scoped scans: the part of a source tree that changed, as a manifest the
//! server can apply without looking at the rest. Directories in `list` have
//! all their children listed (child directories not in scope are marked
//! opaque); directories in `deep` are scanned recursively; their ancestors
//! are marked partial and list only the way down.

use super::scan::{
    entry_of, join_rel, local_of, mode_of, mtime_of, read_children, splice, walk, SubTree,
};
use super::{Entry, Kind, ScanOptions, SourceScan};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Which directories of a tree a scoped scan covers, by `/`-joined key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Directories whose children are all listed (not recursively).
    pub list: BTreeSet<String>,
    /// Directories scanned recursively.
    pub deep: BTreeSet<String>,
}

impl Scopes {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.deep.is_empty()
    }

    /// Covers a changed path: its parent's listing and, for a directory,
    /// its whole subtree.
    pub fn add_changed(&mut self, rel: &str, is_dir_now: bool) {
        if rel.is_empty() {
            self.list.insert(String::new());
            return;
        }
        let parent = rel.rfind('/').map(|i| &rel[..i]).unwrap_or("");
        self.list.insert(parent.to_string());
        if is_dir_now {
            self.deep.insert(rel.to_string());
        }
    }

    pub fn merge(&mut self, other: Scopes) {
        self.list.extend(other.list);
        self.deep.extend(other.deep);
    }

    /// Whether `rel` or one of its ancestors is scanned recursively.
    pub fn deep_covers(&self, rel: &str) -> bool {
        if self.deep.contains("") {
            return true;
        }
        let mut cur = rel;
        loop {
            if self.deep.contains(cur) {
                return true;
            }
            match cur.rfind('/') {
                Some(i) => cur = &cur[..i],
                None => return false,
            }
        }
    }

    /// Whether some scope is `rel` itself or lies below it.
    fn reaches(&self, rel: &str) -> bool {
        let below = |set: &BTreeSet<String>| {
            if set.contains(rel) || (rel.is_empty() && !set.is_empty()) {
                return true;
            }
            let p = format!("{rel}/");
            set.range(p.clone()..)
                .next()
                .is_some_and(|k| k.starts_with(&p))
        };
        below(&self.list) || below(&self.deep)
    }

    /// Names of `rel`'s children on the way to a scope.
    fn next_steps(&self, rel: &str) -> BTreeSet<String> {
        let p = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        let mut out = BTreeSet::new();
        for k in self.list.iter().chain(self.deep.iter()) {
            if let Some(rest) = k.strip_prefix(&p) {
                if !rest.is_empty() && (rel.is_empty() || k.len() > rel.len()) {
                    out.insert(rest.split('/').next().unwrap().to_string());
                }
            }
        }
        out
    }
}

/// Scans only the scoped parts of the tree at `root`.
pub fn scan_scoped(
    root: &Path,
    scopes: &Scopes,
    opts: &ScanOptions,
) -> std::io::Result<SourceScan> {
    if scopes.deep.contains("") {
        return super::scan_source(root, opts);
    }
    let meta = fs::metadata(root)?;
    let mut scan = SourceScan::default();
    scan.manifest.entries.push(Entry {
        parent: 0,
        name: String::new(),
        kind: Kind::Dir,
        mode: mode_of(&meta),
        mtime: mtime_of(&meta),
    });
    scan.local.push(local_of(&meta));
    visit(root, "", 0, scopes, opts, &mut scan);
    Ok(scan)
}

fn visit(
    abs: &Path,
    rel: &str,
    id: u32,
    scopes: &Scopes,
    opts: &ScanOptions,
    scan: &mut SourceScan,
) {
    if scopes.deep_covers(rel) {
        let sub = walk(abs, rel, opts);
        if sub.unreadable {
            scan.manifest.opaque.push(id);
        }
        splice(scan, sub, id);
        return;
    }
    if scopes.list.contains(rel) {
        let mut tmp = SubTree::default();
        let Some(mut children) = read_children(abs, rel, &mut tmp) else {
            scan.errors.extend(tmp.errors);
            scan.manifest.opaque.push(id);
            return;
        };
        scan.errors.extend(tmp.errors);
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, path, meta) in children {
            add_child(name, path, meta, rel, id, scopes, opts, scan);
        }
        return;
    }
    scan.manifest.partial.push(id);
    for name in scopes.next_steps(rel) {
        let path = abs.join(&name);
        if let Ok(meta) = fs::symlink_metadata(&path) {
            add_child(name, path, meta, rel, id, scopes, opts, scan);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn add_child(
    name: String,
    path: PathBuf,
    meta: fs::Metadata,
    rel: &str,
    parent: u32,
    scopes: &Scopes,
    opts: &ScanOptions,
    scan: &mut SourceScan,
) {
    let child_rel = join_rel(rel, &name);
    if opts.filter.is_excluded(&child_rel, meta.is_dir())
        || (meta.is_dir() && opts.skip.contains(&path))
    {
        return;
    }
    if child_rel.len() >= super::MAX_PATH_BYTES {
        scan.errors.push(crate::error::FileError::new(
            child_rel,
            "path longer than 4096 bytes; skipped",
        ));
        return;
    }
    match entry_of(&path, &child_rel, name, &meta) {
        Ok(Some(mut entry)) => {
            entry.parent = parent;
            let child_id = scan.manifest.entries.len() as u32;
            let is_dir = entry.kind.is_dir();
            scan.manifest.entries.push(entry);
            scan.local.push(local_of(&meta));
            if is_dir {
                if scopes.reaches(&child_rel) || scopes.deep_covers(&child_rel) {
                    visit(&path, &child_rel, child_id, scopes, opts, scan);
                } else {
                    scan.manifest.opaque.push(child_id);
                }
            }
        }
        Ok(None) => scan.warnings.push(crate::error::FileError::new(
            child_rel,
            "special file (FIFO, socket or device) skipped",
        )),
        Err(e) => scan.errors.push(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for dir in ["a/b/c", "a/d", "e"] {
            fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        for f in ["a/b/c/f1", "a/b/f2", "a/d/f3", "e/f4", "top"] {
            fs::write(d.path().join(f), f).unwrap();
        }
        d
    }

    fn names(scan: &SourceScan) -> Vec<String> {
        (0..scan.manifest.entries.len())
            .map(|i| scan.manifest.display(i))
            .collect()
    }

    #[test]
    fn list_scope_lists_one_directory() {
        let d = tree();
        let mut s = Scopes::default();
        s.add_changed("a/b/f2", false);
        let scan = scan_scoped(d.path(), &s, &ScanOptions::default()).unwrap();
        assert_eq!(names(&scan), vec!["", "a", "a/b", "a/b/c", "a/b/f2"]);
        assert!(scan.manifest.validate().is_ok());
        assert_eq!(scan.manifest.partial, vec![0, 1]);
        assert_eq!(scan.manifest.opaque, vec![3]);
    }

    #[test]
    fn deep_scope_walks_the_subtree() {
        let d = tree();
        let mut s = Scopes::default();
        s.add_changed("a/b", true);
        let scan = scan_scoped(d.path(), &s, &ScanOptions::default()).unwrap();
        assert_eq!(
            names(&scan),
            vec!["", "a", "a/b", "a/b/c", "a/b/c/f1", "a/b/f2", "a/d"]
        );
        assert_eq!(scan.manifest.partial, vec![0]);
        assert_eq!(scan.manifest.opaque, vec![6]);
    }

    #[test]
    fn vanished_scope_is_skipped() {
        let d = tree();
        let mut s = Scopes::default();
        s.add_changed("gone/x", false);
        s.add_changed("e/f4", false);
        let scan = scan_scoped(d.path(), &s, &ScanOptions::default()).unwrap();
        assert_eq!(names(&scan), vec!["", "e", "e/f4"]);
    }

    #[test]
    fn root_listing() {
        let d = tree();
        let mut s = Scopes::default();
        s.add_changed("top", false);
        let scan = scan_scoped(d.path(), &s, &ScanOptions::default()).unwrap();
        assert_eq!(names(&scan), vec!["", "a", "e", "top"]);
        assert_eq!(scan.manifest.opaque, vec![1, 2]);
        assert!(scan.manifest.partial.is_empty());
    }
}
