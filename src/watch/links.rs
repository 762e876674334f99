//! Hard-link groups of the source. A change made through one name of a
//! hard-linked file (a write, a chmod) is reported by the kernel for that
//! name only, yet every other name of the file changed too. The watcher
//! learns the groups from the passes' scans (a full pass's page by page)
//! and widens a change on one name to all of them; a hard-linked file whose
//! other names it does not know yet asks for a full rescan, which finds
//! them.

use crate::tree::{Kind, SourceScan};
use std::collections::{BTreeSet, HashMap};

/// (device, inode) -> the source keys (`/`-joined paths) that name it, for regular
/// files with more than one link. Only such files are kept, so a tree
/// without hard links costs nothing here.
#[derive(Debug, Default)]
pub struct LinkGroups {
    by_ino: HashMap<(u64, u64), BTreeSet<String>>,
}

/// What a change on one hard-linked name needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Widen {
    /// These names changed with it (the name itself included).
    Names(Vec<String>),
    /// Its other names are unknown: rescan the tree.
    Rescan,
}

impl LinkGroups {
    /// Learns from a scan; a full scan replaces what was known (it saw
    /// every name), a scoped one adds to it.
    pub fn learn(&mut self, scan: &SourceScan, full: bool) {
        if full {
            self.by_ino.clear();
        }
        let m = &scan.manifest;
        for (i, (e, local)) in m.entries.iter().zip(&scan.local).enumerate() {
            if local.links > 1 && matches!(e.kind, Kind::File { .. }) {
                self.by_ino
                    .entry((local.dev, local.ino))
                    .or_default()
                    .insert(m.key(i));
            }
        }
    }

    /// After a full pass that learned `learned` from its pages: what it
    /// found replaces what was known if the pass went through every page
    /// (`complete`), else is added to it.
    pub fn after_full_pass(&mut self, learned: LinkGroups, complete: bool) {
        if complete {
            *self = learned;
            return;
        }
        for (id, names) in learned.by_ino {
            self.by_ino.entry(id).or_default().extend(names);
        }
    }

    /// A regular file `key` (file id `(device, inode)`, `links` names) changed.
    pub fn widen(&mut self, key: &str, id: (u64, u64), links: u64) -> Widen {
        if links <= 1 {
            return Widen::Names(vec![key.to_string()]);
        }
        match self.by_ino.get_mut(&id) {
            Some(names) => {
                names.insert(key.to_string());
                Widen::Names(names.iter().cloned().collect())
            }
            None => Widen::Rescan,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Entry, LocalStat, Manifest, Timestamp};

    fn scan(items: &[(&str, u64, u32)]) -> SourceScan {
        let mut entries = vec![Entry {
            parent: 0,
            name: String::new(),
            kind: Kind::Dir,
            mode: None,
            mtime: Timestamp::default(),
        }];
        let mut local = vec![LocalStat::default()];
        for (name, ino, links) in items {
            entries.push(Entry {
                parent: 0,
                name: name.to_string(),
                kind: Kind::File { size: 1 },
                mode: None,
                mtime: Timestamp::default(),
            });
            local.push(LocalStat {
                ino: *ino,
                links: *links,
                ..LocalStat::default()
            });
        }
        SourceScan {
            manifest: Manifest {
                entries,
                ..Manifest::default()
            },
            local,
            ..SourceScan::default()
        }
    }

    #[test]
    fn a_change_through_one_name_reaches_every_name() {
        let mut g = LinkGroups::default();
        g.learn(&scan(&[("a", 7, 2), ("b", 7, 2), ("c", 8, 1)]), true);
        assert_eq!(
            g.widen("a", (0, 7), 2),
            Widen::Names(vec!["a".into(), "b".into()])
        );
        assert_eq!(g.widen("c", (0, 8), 1), Widen::Names(vec!["c".into()]));
    }

    #[test]
    fn an_unknown_group_asks_for_a_rescan_and_a_new_name_joins_its_group() {
        let mut g = LinkGroups::default();
        g.learn(&scan(&[("a", 7, 1)]), true);
        assert_eq!(g.widen("new", (0, 7), 2), Widen::Rescan);
        g.learn(&scan(&[("a", 7, 2), ("new", 7, 2)]), true);
        assert_eq!(
            g.widen("third", (0, 7), 3),
            Widen::Names(vec!["a".into(), "new".into(), "third".into()])
        );
    }

    #[test]
    fn a_full_pass_learns_page_by_page_and_forgets_stale_groups() {
        let mut g = LinkGroups::default();
        g.learn(&scan(&[("old", 5, 2), ("gone", 5, 2)]), true);
        let mut pages = LinkGroups::default();
        pages.learn(&scan(&[("a", 7, 2)]), false);
        pages.learn(&scan(&[("b", 7, 2), ("c", 8, 1)]), false);
        let mut failed = LinkGroups::default();
        failed.learn(&scan(&[("x", 9, 2)]), false);
        let mut kept = LinkGroups::default();
        kept.learn(&scan(&[("old", 5, 2), ("gone", 5, 2)]), true);
        kept.after_full_pass(failed, false);
        assert_eq!(
            kept.widen("old", (0, 5), 2),
            Widen::Names(vec!["gone".into(), "old".into()]),
            "a pass cut short forgets nothing"
        );
        assert_eq!(kept.widen("x", (0, 9), 2), Widen::Names(vec!["x".into()]));
        g.after_full_pass(pages, true);
        assert_eq!(
            g.widen("a", (0, 7), 2),
            Widen::Names(vec!["a".into(), "b".into()])
        );
        assert_eq!(g.widen("old", (0, 5), 2), Widen::Rescan);
    }

    #[test]
    fn a_full_scan_forgets_stale_groups() {
        let mut g = LinkGroups::default();
        g.learn(&scan(&[("a", 7, 2), ("b", 7, 2)]), true);
        g.learn(&scan(&[("a", 9, 1)]), true);
        assert_eq!(g.widen("b", (0, 7), 2), Widen::Rescan);
    }
}
