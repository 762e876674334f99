//! What a manifest carries besides its entries: hard links among its files
//! and, with `--xattrs`, extended attributes. The server fills an
//! [`Extras`] message by message, checking the bounds a peer could abuse as
//! each batch arrives, then checks it against the whole manifest.

use super::xattr::{self, EntryXattrs, MAX_PER_PASS};
use super::{validate_name, FarLink, HardLink, Kind, Manifest, MAX_PATH_BYTES};

/// Hard links and extended attributes of one manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    /// By ascending `entry`.
    pub links: Vec<HardLink>,
    /// By ascending `entry`; entries not listed have no attributes.
    pub xattrs: Vec<EntryXattrs>,
    /// Links to files of earlier pages of a paged pass, by ascending `entry`.
    pub far: Vec<FarLink>,
    /// Files of a paged pass that are the first name met of a group whose
    /// other names are elsewhere (a [`FarLink`] with no leader), ascending.
    pub firsts: Vec<u32>,
    xattr_bytes: u64,
}

impl Extras {
    /// Adds a batch of links; never more links than entries.
    pub fn add_links(&mut self, batch: Vec<HardLink>, entries: usize) -> Result<(), String> {
        if self.links.len() + batch.len() > entries {
            return Err("more hard links than manifest entries".into());
        }
        self.links.extend(batch);
        Ok(())
    }

    /// Adds a batch of links to earlier pages, each leader path checked;
    /// never more than entries.
    pub fn add_far(&mut self, batch: Vec<FarLink>, entries: usize) -> Result<(), String> {
        if self.far.len() + self.firsts.len() + batch.len() > entries {
            return Err("more hard links than manifest entries".into());
        }
        for l in &batch {
            let bad = |why: String| format!("hard link {} to an earlier page: {why}", l.entry);
            let mut len = 0;
            for c in &l.leader {
                validate_name(c).map_err(|e| bad(e.to_string()))?;
                len += c.len() + 1;
            }
            if len > MAX_PATH_BYTES {
                return Err(bad(format!("path longer than {MAX_PATH_BYTES} bytes")));
            }
        }
        for l in batch {
            if l.leader.is_empty() {
                self.firsts.push(l.entry);
            } else {
                self.far.push(l);
            }
        }
        Ok(())
    }

    /// Adds a batch of attributes, each list checked, within
    /// [`MAX_PER_PASS`] bytes in all.
    pub fn add_xattrs(&mut self, batch: Vec<EntryXattrs>, entries: usize) -> Result<(), String> {
        if self.xattrs.len() + batch.len() > entries {
            return Err("extended attributes for more entries than the manifest has".into());
        }
        for x in &batch {
            xattr::validate(&x.attrs).map_err(|e| format!("entry {}: {e}", x.entry))?;
            self.xattr_bytes += x.attrs.iter().map(xattr::Xattr::weight).sum::<u64>();
            if self.xattr_bytes > MAX_PER_PASS {
                return Err(format!(
                    "extended attributes over {MAX_PER_PASS} bytes in one pass"
                ));
            }
        }
        self.xattrs.extend(batch);
        Ok(())
    }

    /// Checks the extras against the manifest: a link joins two files of
    /// the same size, its leader comes first and is no member itself, each
    /// entry is linked at most once; attributes belong to files or
    /// directories, each entry listed at most once; both lists ascending.
    pub fn validate(&self, m: &Manifest) -> Result<(), String> {
        let file = |i: u32| match m.entries.get(i as usize).map(|e| &e.kind) {
            Some(Kind::File { size }) => Some(*size),
            _ => None,
        };
        if self.links.windows(2).any(|w| w[0].entry >= w[1].entry) {
            return Err("hard links not in ascending order".into());
        }
        let members: std::collections::HashSet<u32> = self.links.iter().map(|l| l.entry).collect();
        for l in &self.links {
            if l.leader >= l.entry || members.contains(&l.leader) {
                return Err(format!("hard link {} -> {}: bad leader", l.entry, l.leader));
            }
            match (file(l.entry), file(l.leader)) {
                (Some(a), Some(b)) if a == b => {}
                _ => {
                    return Err(format!(
                        "hard link {} -> {}: not two files of one size",
                        l.entry, l.leader
                    ))
                }
            }
        }
        if self.far.windows(2).any(|w| w[0].entry >= w[1].entry) {
            return Err("hard links to earlier pages not in ascending order".into());
        }
        if self.firsts.windows(2).any(|w| w[0] >= w[1]) {
            return Err("hard links to later pages not in ascending order".into());
        }
        let far = self.far.iter().map(|l| l.entry);
        for entry in far.chain(self.firsts.iter().copied()) {
            if file(entry).is_none() || members.contains(&entry) {
                return Err(format!(
                    "hard link {entry} across pages: not a file, or linked twice"
                ));
            }
        }
        if self.xattrs.windows(2).any(|w| w[0].entry >= w[1].entry) {
            return Err("extended attributes not in ascending order".into());
        }
        for x in &self.xattrs {
            match m.entries.get(x.entry as usize).map(|e| &e.kind) {
                Some(Kind::File { .. }) | Some(Kind::Dir) => {}
                _ => {
                    return Err(format!(
                        "extended attributes for entry {}, not a file or directory",
                        x.entry
                    ))
                }
            }
        }
        Ok(())
    }

    /// The leader of each member, indexed by entry (None: not a member).
    pub fn leaders(&self, entries: usize) -> Vec<Option<u32>> {
        let mut out = vec![None; entries];
        for l in &self.links {
            if let Some(slot) = out.get_mut(l.entry as usize) {
                *slot = Some(l.leader);
            }
        }
        out
    }

    /// Whether `entry` has a part in a hard-link group: a member or leader
    /// here, linked to an earlier page, or the first name of a group.
    pub fn has_link_role(&self, entry: u32) -> bool {
        self.is_far(entry)
            || self.firsts.binary_search(&entry).is_ok()
            || self
                .links
                .iter()
                .any(|l| l.entry == entry || l.leader == entry)
    }

    /// Whether `entry` is linked to a file of an earlier page.
    pub fn is_far(&self, entry: u32) -> bool {
        self.far.binary_search_by_key(&entry, |l| l.entry).is_ok()
    }

    /// The attributes of `entry` (empty when it has none).
    pub fn xattrs_of(&self, entry: u32) -> &[xattr::Xattr] {
        match self.xattrs.binary_search_by_key(&entry, |x| x.entry) {
            Ok(i) => &self.xattrs[i].attrs,
            Err(_) => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::xattr::Xattr;
    use crate::tree::{Entry, Timestamp};

    fn manifest(kinds: &[Kind]) -> Manifest {
        let mut entries = vec![Entry {
            parent: 0,
            name: String::new(),
            kind: Kind::Dir,
            mode: None,
            mtime: Timestamp::default(),
        }];
        for (i, k) in kinds.iter().enumerate() {
            entries.push(Entry {
                parent: 0,
                name: format!("e{i}"),
                kind: k.clone(),
                mode: None,
                mtime: Timestamp::default(),
            });
        }
        Manifest {
            entries,
            ..Manifest::default()
        }
    }

    fn link(entry: u32, leader: u32) -> HardLink {
        HardLink { entry, leader }
    }

    #[test]
    fn links_are_checked_against_the_manifest() {
        let f = Kind::File { size: 5 };
        let m = manifest(&[
            f.clone(),
            f.clone(),
            f.clone(),
            Kind::File { size: 6 },
            Kind::Dir,
        ]);
        let ok = |links: Vec<HardLink>| {
            let mut x = Extras::default();
            x.add_links(links, m.entries.len())?;
            x.validate(&m)
        };
        assert!(ok(vec![link(2, 1), link(3, 1)]).is_ok());
        assert!(ok(vec![link(3, 1), link(2, 1)]).is_err(), "order");
        assert!(ok(vec![link(1, 2)]).is_err(), "leader after member");
        assert!(
            ok(vec![link(2, 1), link(3, 2)]).is_err(),
            "member as leader"
        );
        assert!(ok(vec![link(4, 1)]).is_err(), "sizes differ");
        assert!(ok(vec![link(5, 1)]).is_err(), "a directory");
        assert!(ok(vec![link(99, 1)]).is_err(), "outside");
        assert!(ok(vec![link(2, 1), link(2, 1)]).is_err(), "twice");
        let too_many = vec![link(2, 1); m.entries.len() + 1];
        assert!(Extras::default()
            .add_links(too_many, m.entries.len())
            .is_err());
        let mut x = Extras::default();
        x.add_links(vec![link(3, 1)], 10).unwrap();
        assert_eq!(x.leaders(5), vec![None, None, None, Some(1), None]);
    }

    #[test]
    fn attributes_are_checked_and_bounded() {
        let m = manifest(&[Kind::File { size: 1 }, Kind::Symlink { target: "x".into() }]);
        let attrs = |entry, name: &str| EntryXattrs {
            entry,
            attrs: vec![Xattr {
                name: name.into(),
                value: b"v".to_vec(),
            }],
        };
        let mut x = Extras::default();
        x.add_xattrs(vec![attrs(0, "user.a"), attrs(1, "user.b")], 3)
            .unwrap();
        x.validate(&m).unwrap();
        assert_eq!(x.xattrs_of(1)[0].name, "user.b");
        assert!(x.xattrs_of(2).is_empty());
        let mut bad = Extras::default();
        assert!(bad.add_xattrs(vec![attrs(1, "security.x")], 3).is_err());
        bad.add_xattrs(vec![attrs(2, "user.a")], 3).unwrap();
        assert!(bad.validate(&m).is_err(), "a symlink");
        // The per-pass total is enforced as batches arrive.
        let big = EntryXattrs {
            entry: 1,
            attrs: (0..64)
                .map(|i| Xattr {
                    name: format!("user.{i:02}"),
                    value: vec![0; xattr::MAX_VALUE],
                })
                .collect(),
        };
        let mut x = Extras::default();
        let mut refused = false;
        for _ in 0..100 {
            if x.add_xattrs(vec![big.clone()], usize::MAX).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
