//! The replica's side of a pass: the parts of the replica the source
//! manifest covers, listed and stat'ed through the store, folded into a
//! [`ReplicaView`] (entries identical to the source are one bit each).

use crate::error::describe_io;
use crate::filter::Filter;
use crate::plan::{identical, Keys, ReplicaEntry, ReplicaView};
use crate::store::{child_key, Store};
use crate::tree::{Entry, Kind, Manifest};
use std::collections::{HashMap, HashSet};

/// What a replica scan found besides the view.
#[derive(Debug, Default)]
pub struct ScanExtras {
    /// Stale staging (from a killed pass), by key.
    pub stale_temps: Vec<String>,
    /// Entries that could not be examined, with the reason.
    pub problems: Vec<(String, String)>,
}

/// How a pass looks at the replica.
#[derive(Clone, Copy)]
pub struct ScanOptions<'a> {
    pub filter: &'a Filter,
    pub delete_excluded: bool,
    /// With --checksum, files that look identical are still compared.
    pub checksum: bool,
}

/// Scans the parts of the replica the source manifest covers.
pub fn scan(
    store: &dyn Store,
    source: &Manifest,
    keys: &Keys,
    opts: ScanOptions,
) -> (ReplicaView, ScanExtras) {
    let fold = |e: &Entry, r: &ReplicaEntry| {
        identical(e, r) && !(opts.checksum && matches!(e.kind, Kind::File { .. }))
    };
    let mut view = ReplicaView::new(source.entries.len());
    let mut extras = ScanExtras::default();
    if let Ok(Some(e)) = store.stat("") {
        let e = ReplicaEntry {
            kind: Kind::Dir,
            ..e
        };
        match source.entries.first() {
            Some(root) if fold(root, &e) => view.mark_same(0),
            _ => view.insert(String::new(), e),
        }
    }
    let opaque: HashSet<u32> = source.opaque.iter().copied().collect();
    let partial: HashSet<u32> = source.partial.iter().copied().collect();
    let children = Children::of(source);
    for (i, e) in source.entries.iter().enumerate() {
        let id = i as u32;
        if !e.kind.is_dir() || opaque.contains(&id) {
            continue;
        }
        let key = &keys[i];
        let in_view = matches!(
            view.get(key),
            Some(ReplicaEntry {
                kind: Kind::Dir,
                ..
            })
        );
        if i > 0 && !view.is_same(id) && !in_view {
            continue;
        }
        let source_names: HashMap<&str, u32> = children
            .of_entry(i)
            .iter()
            .map(|&c| (source.entries[c as usize].name.as_str(), c))
            .collect();
        let names: Vec<String> = if partial.contains(&id) {
            source_names.keys().map(|n| n.to_string()).collect()
        } else {
            match store.list(key) {
                Ok(n) => n,
                Err(err) => {
                    let why = format!("cannot list: {}", describe_io(&err));
                    extras.problems.push((key.to_string(), why));
                    continue;
                }
            }
        };
        for name in names {
            let child = child_key(key, &name);
            let in_source = source_names.get(name.as_str()).copied();
            if in_source.is_none() && store.is_staging(&name) {
                extras.stale_temps.push(child);
                continue;
            }
            let entry = match store.stat(&child) {
                Ok(Some(entry)) => entry,
                Ok(None) => continue,
                Err(err) => {
                    extras.problems.push((child, describe_io(&err)));
                    continue;
                }
            };
            if !opts.delete_excluded && opts.filter.is_excluded(&child, entry.kind.is_dir()) {
                continue;
            }
            match in_source {
                Some(c) if fold(&source.entries[c as usize], &entry) => view.mark_same(c),
                _ => view.insert(child, entry),
            }
        }
    }
    (view, extras)
}

/// Each manifest entry's children, as one array cut by offsets (two `u32`
/// per entry instead of a vector per entry).
struct Children {
    start: Vec<u32>,
    items: Vec<u32>,
}

impl Children {
    fn of(source: &Manifest) -> Self {
        let n = source.entries.len();
        let mut start = vec![0u32; n + 1];
        for e in source.entries.iter().skip(1) {
            start[e.parent as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut items = vec![0u32; n.saturating_sub(1)];
        for (i, e) in source.entries.iter().enumerate().skip(1) {
            let at = &mut fill[e.parent as usize];
            items[*at as usize] = i as u32;
            *at += 1;
        }
        Children { start, items }
    }

    fn of_entry(&self, i: usize) -> &[u32] {
        &self.items[self.start[i] as usize..self.start[i + 1] as usize]
    }
}
