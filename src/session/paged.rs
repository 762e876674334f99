//! The server's side of a paged pass: what lasts from one page to the next
//! ([`PassRun`]: counters, the removals deferred on disk), deferring a
//! page's removals, and carrying them out when the last page is done.
//!
//! A page is planned and carried out like a whole pass (`server.rs`), with
//! two differences: its removals wait in [`Deferred`] (a later page may
//! still rename that content into place, see `transfer/moves.rs`), and the
//! parents of what is finally removed (or moved away) get their source
//! metadata again at the end, since the removal changed their mtime.

use super::deferred::{Deferred, DirMeta, Pending};
use super::pass::PassCtx;
use crate::error::Result;
use crate::index::IndexTxn;
use crate::plan::ReplicaView;
use crate::protocol::PassStats;
use crate::tree::Kind;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

/// Deferred entries handled at once at the end of the pass.
const BATCH: usize = 4096;

/// What a pass keeps from one page to the next.
pub struct PassRun {
    pub pass_no: u64,
    pub stats: PassStats,
    /// Set when the pass is paged (its first page ended with `EndPage`).
    pub deferred: Option<Deferred>,
    /// Pages carried out so far.
    pub pages: u64,
    /// Files and bytes of the pages carried out (the status counters).
    pub files: u64,
    pub bytes: u64,
    /// Entries the pages so far removed to put an entry of another type in
    /// their place (for `--max-delete`).
    pub removals: u64,
    /// A dry run's picture of what the pass would have done so far.
    pub dry: Option<DryState>,
}

/// What a dry run would have changed so far, on disk beside the replica
/// index (both deleted when the pass ends): the replica's entries (see
/// `store/dry_run`) and the index's records (an overlay, see
/// `index/replica.rs`). Later pages read them before the real replica and
/// index, which the dry run never changes.
pub struct DryState {
    pub shadow: crate::store::dry_run::Shadow,
    pub index: crate::index::DryIndex,
}

impl DryState {
    pub fn create(index: &crate::index::ReplicaIndex) -> Result<Self> {
        let path = index.scratch_path("dry-run-replica");
        let shadow = crate::store::dry_run::Shadow::create(&path)
            .map_err(|e| crate::error::Error::io(&path, e))?;
        Ok(DryState {
            shadow,
            index: index.dry_overlay()?,
        })
    }
}

impl PassRun {
    pub fn new(pass_no: u64) -> Self {
        PassRun {
            pass_no,
            stats: PassStats::default(),
            deferred: None,
            pages: 0,
            files: 0,
            bytes: 0,
            removals: 0,
            dry: None,
        }
    }
}

/// Defers the page's removals (`remove`, less what was moved away), with
/// their parent directory's source metadata; notes what earlier pages'
/// removals lost to this page's moves.
pub fn defer(
    ctx: &PassCtx,
    view: &ReplicaView,
    remove: &[String],
    moved: &HashSet<String>,
    deferred: &mut Deferred,
) -> Result<()> {
    for k in moved {
        deferred.mark_moved(k)?;
    }
    if remove.is_empty() {
        return Ok(());
    }
    let m = ctx.manifest;
    let dirs: HashMap<&str, u32> = (0..m.entries.len())
        .filter(|&i| m.entries[i].kind.is_dir())
        .map(|i| (&ctx.keys[i], i as u32))
        .collect();
    // Directories are signed for a later page to rename whole (a store
    // where renames are cheap, and no --max-delete, as in `server.rs`).
    let rename_dirs = ctx.store.capabilities().cheap_rename && !ctx.hold_removals;
    for key in remove.iter().filter(|k| !moved.contains(*k)) {
        let parent = parent_of(key);
        // A removal's parent is a directory the page lists in full.
        let Some(&id) = dirs.get(parent) else {
            continue;
        };
        let e = ctx.entry(id);
        let meta = DirMeta {
            mode: e.mode,
            mtime: e.mtime,
        };
        deferred.add(key, meta)?;
        if rename_dirs && view.get(key).is_some_and(|r| r.kind.is_dir()) {
            let mut sigs = Vec::new();
            super::renames::replica_sigs(ctx.store, key, &mut |s, k| {
                sigs.push((*s, k.to_string()))
            });
            for (sig, k) in sigs {
                deferred.add_dir(&sig, &k)?;
            }
        }
    }
    Ok(())
}

/// `--max-delete max` at the end of a paged pass: why the deferred
/// removals are refused, all of them, if they and the `cleared` entries
/// (type changes carried out by the pages) are more than `max`. rsync
/// removes up to N and skips the rest; refusing them all keeps the rail's
/// promise that a pass over the limit removes nothing it could have kept,
/// while additions and updates still went through page by page.
pub fn over_max(
    ctx: &PassCtx,
    deferred: &Deferred,
    max: Option<u64>,
    cleared: u64,
) -> Result<Option<String>> {
    let Some(max) = max else {
        return Ok(None);
    };
    let mut n = cleared;
    each_batch(deferred, |batch| {
        n += batch
            .iter()
            .filter(|(_, p)| !p.moved)
            .map(|(k, _)| ctx.store.count(k).unwrap_or(1))
            .sum::<u64>();
        Ok(ControlFlow::Continue(()))
    })?;
    Ok((n > max).then(|| {
        format!(
            "the pass would remove {n} entries, more than --max-delete {max}; nothing was removed{} \
             (additions and updates were carried out)",
            if cleared > 0 {
                format!(" but the {cleared} replaced by entries of another type")
            } else {
                String::new()
            }
        )
    }))
}

/// Removes what the pages deferred (unless moved away), then sets the
/// source metadata of the directories that held it.
pub fn finish(
    ctx: &PassCtx,
    deferred: &Deferred,
    txn: &mut IndexTxn,
    stats: &mut PassStats,
) -> Result<()> {
    let none = HashSet::new();
    each_batch(deferred, |batch| {
        let keys: Vec<String> = batch
            .into_iter()
            .filter(|(_, p)| !p.moved)
            .map(|(k, _)| k)
            .collect();
        super::steps::remove_extras(ctx, &keys, &none, txn, stats)?;
        Ok(match ctx.interrupted() {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        })
    })?;
    if ctx.interrupted() {
        return Ok(());
    }
    let mut fixed: Option<String> = None;
    each_batch(deferred, |batch| {
        for (key, p) in batch {
            let parent = parent_of(&key);
            if fixed.as_deref() == Some(parent) {
                continue;
            }
            fix_dir(ctx, parent, p.parent);
            fixed = Some(parent.to_string());
        }
        Ok(ControlFlow::Continue(()))
    })
}

/// Hands `f` the deferred removals a batch at a time, in key order, until
/// they are all seen or `f` breaks.
fn each_batch(
    deferred: &Deferred,
    mut f: impl FnMut(Vec<(String, Pending)>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let batch = deferred.batch(after.as_deref(), BATCH)?;
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        if f(batch)?.is_break() {
            return Ok(());
        }
    }
}

fn fix_dir(ctx: &PassCtx, key: &str, meta: DirMeta) {
    if let Ok(Some(cur)) = ctx.store.stat(key) {
        if cur.kind.is_dir() && (cur.mtime != meta.mtime || cur.mode != meta.mode) {
            let _ = ctx.store.set_meta(key, &Kind::Dir, meta.mode, meta.mtime);
        }
    }
}

fn parent_of(key: &str) -> &str {
    key.rfind('/').map(|i| &key[..i]).unwrap_or("")
}
