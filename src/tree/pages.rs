//! A source tree as a sequence of pages, for a paged pass: each page is a
//! scoped manifest ([`scan_scoped`]) listing a set of whole directories
//! (about `max` entries, or one directory if it alone is larger), with their
//! ancestors listed `partial`ly and subdirectories left to later pages
//! `opaque`. Pages follow the directories in pre-order (siblings sorted by
//! name), so a parent's page comes before its children's. Only the walk's
//! stack of directories not yet paged is held between pages, never the
//! tree.
//!
//! The walk reads each directory's names and types (no stat) to cut pages;
//! [`scan_scoped`] then reads the page's directories for real. A tree that
//! changes between the two is still described truly by each page (the
//! pages are a partition of the directories seen, not of the entries).

use super::scan::join_rel;
use super::{scan_scoped, ScanOptions, Scopes, SourceScan, MAX_PATH_BYTES};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Shown each page as it is read (`watch` learns the source's hard-link
/// groups from them, page by page, instead of from a whole scan).
pub type PageTap = Arc<dyn Fn(&SourceScan) + Send + Sync>;

/// The pages of one pass over a source tree.
pub struct Pages {
    root: PathBuf,
    opts: ScanOptions,
    max: usize,
    /// Directories (by key) not yet in a page, the next one last.
    stack: Vec<String>,
    tap: Option<PageTap>,
}

impl Pages {
    /// Pages of about `max` entries over the directory `root` (an error if
    /// it is not a readable directory, as for [`super::scan_source`]).
    pub fn new(root: &Path, opts: ScanOptions, max: usize) -> std::io::Result<Self> {
        let meta = fs::metadata(root)?;
        if !meta.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        fs::read_dir(root)?;
        Ok(Pages {
            root: root.to_path_buf(),
            opts,
            max: max.max(1),
            stack: vec![String::new()],
            tap: None,
        })
    }

    /// Shows every page to `tap` as it is read.
    pub fn with_tap(mut self, tap: Option<PageTap>) -> Self {
        self.tap = tap;
        self
    }

    /// Whether every directory is in a page already.
    pub fn is_done(&self) -> bool {
        self.stack.is_empty()
    }

    /// The next page, or `None` when all were given.
    pub fn next_page(&mut self) -> std::io::Result<Option<SourceScan>> {
        if self.stack.is_empty() {
            return Ok(None);
        }
        let mut scopes = Scopes::default();
        let mut count = 0usize;
        while let Some(rel) = self.stack.pop() {
            let (n, subdirs) = self.names(&rel);
            if count > 0 && count + n > self.max {
                self.stack.push(rel);
                break;
            }
            count += n;
            scopes.list.insert(rel);
            self.stack.extend(subdirs.into_iter().rev());
        }
        let page = scan_scoped(&self.root, &scopes, &self.opts)?;
        if let Some(tap) = &self.tap {
            tap(&page);
        }
        Ok(Some(page))
    }

    /// How many children directory `rel` has, and its subdirectories that
    /// a scan would enter (sorted by name). Unreadable: none (the page's
    /// scan reports it).
    fn names(&self, rel: &str) -> (usize, Vec<String>) {
        let abs = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(super::key_to_path(rel))
        };
        let Ok(rd) = fs::read_dir(&abs) else {
            return (0, Vec::new());
        };
        let mut n = 0;
        let mut dirs = Vec::new();
        for item in rd.flatten() {
            n += 1;
            let Ok(name) = item.file_name().into_string() else {
                continue;
            };
            if !item.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let child = join_rel(rel, &name);
            let path = item.path();
            if child.len() >= MAX_PATH_BYTES
                || self.opts.filter.is_excluded(&child, true)
                || self.opts.skip.iter().any(|s| s == &path)
            {
                continue;
            }
            dirs.push(child);
        }
        dirs.sort();
        (n, dirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (dir, files) in [("a", 3), ("a/b", 2), ("a/b/c", 4), ("d", 1), ("e", 0)] {
            fs::create_dir_all(d.path().join(dir)).unwrap();
            for i in 0..files {
                fs::write(d.path().join(dir).join(format!("f{i}")), "x").unwrap();
            }
        }
        fs::write(d.path().join("top"), "t").unwrap();
        d
    }

    /// Every entry of the tree is listed in full by exactly one page.
    #[test]
    fn pages_partition_the_tree_and_stay_small() {
        let d = tree();
        let whole = super::super::scan_source(d.path(), &ScanOptions::default()).unwrap();
        let all: BTreeSet<String> = (1..whole.manifest.entries.len())
            .map(|i| whole.manifest.key(i))
            .collect();
        for max in [1, 3, 5, 100] {
            let mut pages = Pages::new(d.path(), ScanOptions::default(), max).unwrap();
            let mut seen = BTreeSet::new();
            let mut n = 0;
            while let Some(page) = pages.next_page().unwrap() {
                n += 1;
                let m = &page.manifest;
                m.validate().unwrap();
                let listed = |i: usize| {
                    let p = m.entries[i].parent;
                    !m.partial.contains(&p) && !m.opaque.contains(&p)
                };
                for i in (1..m.entries.len()).filter(|&i| listed(i)) {
                    assert!(
                        seen.insert(m.key(i)),
                        "{} listed twice (max {max})",
                        m.key(i)
                    );
                }
                if max == 1 {
                    assert!(
                        m.entries.len() <= 1 + 4 + 3,
                        "one directory and its ancestors"
                    );
                }
            }
            assert!(pages.is_done());
            assert_eq!(seen, all, "max {max}");
            assert_eq!(n == 1, max == 100, "max {max}: {n} pages");
        }
    }
}
