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
}
