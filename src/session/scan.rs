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
    let mut s = Scanner {
        store,
        source,
        opts,
        view: ReplicaView::new(source.entries.len()),
        extras: ScanExtras::default(),
    };
    if let Ok(Some(e)) = store.stat("") {
        let e = ReplicaEntry {
            kind: Kind::Dir,
            ..e
        };
        match source.entries.first() {
            Some(root) if s.fold(root, &e) => s.view.mark_same(0),
            _ => s.view.insert(String::new(), e),
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
            s.view.get(key),
            Some(ReplicaEntry {
                kind: Kind::Dir,
                ..
            })
        );
        if i > 0 && !s.view.is_same(id) && !in_view {
            continue;
        }
        s.directory(key, children.of_entry(i), partial.contains(&id));
    }
    (s.view, s.extras)
}

/// A scan in progress.
struct Scanner<'a> {
    store: &'a dyn Store,
    source: &'a Manifest,
    opts: ScanOptions<'a>,
    view: ReplicaView,
    extras: ScanExtras,
}

impl Scanner<'_> {
    /// Whether a replica entry folds into its source entry (with
    /// --checksum, files that look identical are still compared, so they
    /// are kept whole).
    fn fold(&self, e: &Entry, r: &ReplicaEntry) -> bool {
        identical(e, r) && !(self.opts.checksum && matches!(e.kind, Kind::File { .. }))
    }

    /// Looks at replica directory `key`, whose source children are
    /// `children` (only those, if the source lists it `partial`ly).
    fn directory(&mut self, key: &str, children: &[u32], partial: bool) {
        let entries = &self.source.entries;
        let source_names: HashMap<&str, u32> = children
            .iter()
            .map(|&c| (entries[c as usize].name.as_str(), c))
            .collect();
        let names: Vec<String> = if partial {
            source_names.keys().map(|n| n.to_string()).collect()
        } else {
            match self.store.list(key) {
                Ok(n) => n,
                Err(err) => {
                    let why = format!("cannot list: {}", describe_io(&err));
                    self.extras.problems.push((key.to_string(), why));
                    return;
                }
            }
        };
        for name in names {
            let in_source = source_names.get(name.as_str()).copied();
            self.child(child_key(key, &name), &name, in_source);
        }
    }

    fn child(&mut self, key: String, name: &str, in_source: Option<u32>) {
        if in_source.is_none() && self.store.is_staging(name) {
            self.extras.stale_temps.push(key);
            return;
        }
        let entry = match self.store.stat(&key) {
            Ok(Some(entry)) => entry,
            Ok(None) => return,
            Err(err) => {
                self.extras.problems.push((key, describe_io(&err)));
                return;
            }
        };
        if !self.opts.delete_excluded && self.opts.filter.is_excluded(&key, entry.kind.is_dir()) {
            return;
        }
        match in_source {
            Some(c) if self.fold(&self.source.entries[c as usize], &entry) => {
                self.view.mark_same(c)
            }
            _ => self.view.insert(key, entry),
        }
    }
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
