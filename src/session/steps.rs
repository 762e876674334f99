//! The steps of a pass that need no content from the client: clearing
//! entries of the wrong type, directories, symlinks and metadata, removing
//! what the source lacks, and directory metadata last.

use super::pass::{simple, Failure, PassCtx};
use crate::error::Result;
use crate::index::IndexTxn;
use crate::plan::Plan;
use crate::protocol::{Op, PassStats, Reason};
use crate::store::Store;
use crate::tree::Kind;
use std::collections::HashSet;

/// Removes replica entries of the wrong type before anything is created.
pub(super) fn clear(
    ctx: &PassCtx,
    keys: &[String],
    txn: &mut IndexTxn,
    stats: &mut PassStats,
) -> Result<()> {
    for key in keys {
        txn.remove_tree(key)?;
        if let Err(e) = ctx.store.remove(key) {
            ctx.fail(stats, key, Failure::store("remove", e));
        }
    }
    Ok(())
}

/// Directories, symlinks and metadata-only changes.
pub(super) fn structure(ctx: &PassCtx, p: &Plan, txn: &mut IndexTxn, stats: &mut PassStats) {
    for &id in &p.mkdirs {
        let key = ctx.key(id);
        match ctx.store.mkdir(key) {
            Ok(()) => ctx.report(stats, simple(Op::Created, key, Reason::New)),
            Err(e) => ctx.fail(stats, key, Failure::store("create directory", e)),
        }
    }
    for &id in &p.symlinks {
        symlink(ctx, id, stats);
    }
    for &id in &p.metadata {
        let key = ctx.key(id);
        let e = ctx.entry(id);
        if !e.kind.is_dir() {
            if let Err(err) = ctx.store.set_meta(key, &e.kind, e.mode, e.mtime) {
                ctx.fail(stats, key, Failure::store("set metadata", err));
                continue;
            }
            if let Kind::File { .. } = e.kind {
                refresh_record(txn, ctx.store, key);
            }
        }
        let shown = if key.is_empty() { "." } else { key };
        ctx.report(stats, simple(Op::Metadata, shown, Reason::MetadataChanged));
    }
}

fn symlink(ctx: &PassCtx, id: u32, stats: &mut PassStats) {
    let key = ctx.key(id);
    let e = ctx.entry(id);
    let Kind::Symlink { target } = &e.kind else {
        return;
    };
    let existed = ctx.store.stat(key).ok().flatten().is_some();
    let r = ctx
        .store
        .symlink(key, target)
        .and_then(|_| ctx.store.set_meta(key, &e.kind, e.mode, e.mtime));
    match r {
        Ok(()) => {
            let (op, why) = if existed {
                (Op::Updated, Reason::ContentChanged)
            } else {
                (Op::Created, Reason::New)
            };
            ctx.report(stats, simple(op, key, why));
        }
        Err(err) => ctx.fail(stats, key, Failure::store("create symlink", err)),
    }
}

/// Removes what the source lacks, except paths whose content was moved
/// elsewhere during the pass.
pub(super) fn remove_extras(
    ctx: &PassCtx,
    keys: &[String],
    moved_away: &HashSet<String>,
    txn: &mut IndexTxn,
    stats: &mut PassStats,
) -> Result<()> {
    for key in keys {
        if ctx.interrupted() {
            return Ok(());
        }
        if moved_away.contains(key) {
            continue;
        }
        let _ = ctx.store.take_retired();
        let removed = match ctx.keep_excluded {
            Some(f) => ctx
                .store
                .remove_keeping(key, &|k, d| f.is_excluded(k, d))
                .map(|(n, _)| n),
            None => ctx.store.remove(key),
        };
        index_versions(ctx, txn)?;
        txn.remove_tree(key)?;
        match removed {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                ctx.fail(stats, key, Failure::store("remove", e));
                continue;
            }
        }
        txn.checkpoint()?;
        ctx.report(stats, simple(Op::Removed, key, Reason::Extra));
    }
    Ok(())
}

/// Files just moved into the versions (`--versions`) stay findable for
/// dedup, under their key there after [`crate::versions::INDEX_PREFIX`].
fn index_versions(ctx: &PassCtx, txn: &mut IndexTxn) -> Result<()> {
    for (key, vkey) in ctx.store.take_retired() {
        if let Some(rec) = txn.file(&key)? {
            txn.put_file(&format!("{}{vkey}", crate::versions::INDEX_PREFIX), &rec)?;
        }
    }
    Ok(())
}

/// Re-applies directory modes and mtimes, deepest first (writes inside a
/// directory change its mtime, so this comes last).
pub(super) fn fix_dirs(ctx: &PassCtx, dirs: &[u32]) {
    for &id in dirs {
        let key = ctx.key(id);
        let e = ctx.entry(id);
        if let Ok(Some(cur)) = ctx.store.stat(key) {
            if cur.kind.is_dir() && (cur.mtime != e.mtime || cur.mode != e.mode) {
                let _ = ctx.store.set_meta(key, &e.kind, e.mode, e.mtime);
            }
        }
    }
}

/// After a metadata change the stat changed: keep the index record valid.
pub(super) fn refresh_record(txn: &mut IndexTxn, store: &dyn Store, key: &str) {
    if let (Ok(Some(mut rec)), Ok(Some(now))) = (txn.file(key), store.stat(key)) {
        rec.mtime = now.mtime;
        rec.version = now.version;
        let _ = txn.put_file(key, &rec);
    }
}
