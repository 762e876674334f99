//! Hard links in a source scan: files that share an inode (same device,
//! same inode number, more than one link) form a group; the first of each
//! group in the manifest is its leader, and each other member is sent as a
//! [`HardLink`] to it, so the replica keeps one inode and the content is
//! sent once.

use super::{Kind, SourceScan};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// File `entry` is another name of file `leader`, an earlier entry of the
/// manifest: the two share one inode in the source and must share one in
/// the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HardLink {
    pub entry: u32,
    pub leader: u32,
}

/// The hard links among the scan's files, by ascending entry. Only groups
/// with at least two members in this manifest count (a file linked to a
/// name outside the tree, or excluded, is a plain file here).
pub fn hard_links(scan: &SourceScan) -> Vec<HardLink> {
    let mut leaders: HashMap<(u64, u64), u32> = HashMap::new();
    let mut out = Vec::new();
    for (i, (e, l)) in scan.manifest.entries.iter().zip(&scan.local).enumerate() {
        if l.links < 2 || l.ino == 0 || !matches!(e.kind, Kind::File { .. }) {
            continue;
        }
        let i = i as u32;
        match leaders.entry((l.dev, l.ino)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
            }
            std::collections::hash_map::Entry::Occupied(o) => out.push(HardLink {
                entry: i,
                leader: *o.get(),
            }),
        }
    }
    out
}

/// File `entry` is another name of a file that an earlier page of the same
/// pass listed at path `leader` (its components from the root): the two
/// share one inode in the source and must share one in the replica. An
/// empty `leader` says `entry` is the first name met of a group whose other
/// names lie in later pages or outside the tree: the replica's links of
/// that file are not to be broken.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FarLink {
    pub entry: u32,
    pub leader: Vec<String>,
}

/// The first name of each multiply-linked inode met so far in a paged
/// pass (only files with more than one link are kept, so this grows with
/// the tree's hard-link groups, not with the tree).
#[derive(Debug, Default)]
pub struct PageLinks {
    seen: HashMap<(u64, u64), Vec<String>>,
}

impl PageLinks {
    /// The hard links of one page: among its own files ([`hard_links`]),
    /// and from the page's first name of a group met in an earlier page to
    /// that group's first name.
    pub fn of_page(&mut self, scan: &SourceScan) -> (Vec<HardLink>, Vec<FarLink>) {
        let links = hard_links(scan);
        let members: std::collections::HashSet<u32> = links.iter().map(|l| l.entry).collect();
        let m = &scan.manifest;
        let mut far = Vec::new();
        for (i, (e, l)) in m.entries.iter().zip(&scan.local).enumerate() {
            let i = i as u32;
            if l.links < 2 || l.ino == 0 || !matches!(e.kind, Kind::File { .. }) {
                continue;
            }
            if members.contains(&i) {
                continue;
            }
            match self.seen.entry((l.dev, l.ino)) {
                std::collections::hash_map::Entry::Occupied(o) => far.push(FarLink {
                    entry: i,
                    leader: o.get().clone(),
                }),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(
                        m.components(i as usize)
                            .into_iter()
                            .map(String::from)
                            .collect(),
                    );
                    far.push(FarLink {
                        entry: i,
                        leader: Vec::new(),
                    });
                }
            }
        }
        (links, far)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Entry, LocalStat, Manifest, Timestamp};

    fn scan(items: &[(Kind, u64, u64, u32)]) -> SourceScan {
        let mut entries = vec![Entry {
            parent: 0,
            name: String::new(),
            kind: Kind::Dir,
            mode: None,
            mtime: Timestamp::default(),
        }];
        let mut local = vec![LocalStat::default()];
        for (i, (kind, dev, ino, links)) in items.iter().enumerate() {
            entries.push(Entry {
                parent: 0,
                name: format!("e{i}"),
                kind: kind.clone(),
                mode: None,
                mtime: Timestamp::default(),
            });
            local.push(LocalStat {
                dev: *dev,
                ino: *ino,
                links: *links,
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
    fn groups_by_device_and_inode() {
        let f = Kind::File { size: 3 };
        let s = scan(&[
            (f.clone(), 1, 10, 3), // 1: leader of (1, 10)
            (f.clone(), 1, 11, 1), // 2: alone
            (f.clone(), 1, 10, 3), // 3: -> 1
            (f.clone(), 2, 10, 2), // 4: same inode, other device: leader
            (f.clone(), 1, 10, 3), // 5: -> 1
            (f.clone(), 2, 10, 2), // 6: -> 4
            (f.clone(), 1, 12, 2), // 7: its other name is outside the tree
            (Kind::Dir, 1, 13, 2), // 8: a directory is never a link
            (Kind::Dir, 1, 13, 2),
        ]);
        let got: Vec<_> = hard_links(&s)
            .into_iter()
            .map(|l| (l.entry, l.leader))
            .collect();
        assert_eq!(got, vec![(3, 1), (5, 1), (6, 4)]);
    }

    #[test]
    fn groups_spanning_pages_link_to_their_first_name() {
        let f = Kind::File { size: 3 };
        let mut pl = PageLinks::default();
        let (links, far) = pl.of_page(&scan(&[(f.clone(), 1, 10, 3), (f.clone(), 1, 11, 1)]));
        let first = FarLink {
            entry: 1,
            leader: Vec::new(),
        };
        assert!(links.is_empty() && far == vec![first]);
        let (links, far) = pl.of_page(&scan(&[
            (f.clone(), 1, 11, 1),
            (f.clone(), 1, 10, 3), // 2: far -> e0 of page 1
            (f.clone(), 1, 10, 3), // 3: -> 2 in this page
        ]));
        assert_eq!(
            links,
            vec![HardLink {
                entry: 3,
                leader: 2
            }]
        );
        assert_eq!(
            far,
            vec![FarLink {
                entry: 2,
                leader: vec!["e0".into()]
            }]
        );
    }
}
