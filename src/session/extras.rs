//! The steps of a pass that act on a manifest's [`Extras`], after the
//! content is in place and before directory times are set, through the
//! store:
//!
//! 1. links the source no longer has are broken: replica files sharing an
//!    inode that the source keeps apart get private copies;
//! 2. extended attributes (`--xattrs`) are made equal to the source's, on
//!    every file and directory but the other names of a hard-link group;
//! 3. each other name of a group becomes a hard link to its leader.
//!
//! Members of a group are never fetched (the pass drops them from its
//! plan, [`drop_members`]): their content is the leader's.

use super::pass::{simple, Failure, PassCtx};
use crate::plan::Plan;
use crate::protocol::{Op, OpReport, PassStats, Reason};
use crate::tree::{Extras, Kind};
use std::collections::HashMap;

/// Removes the other names of hard-link groups from what the plan fetches
/// or fixes metadata of: step 3 gives them their leader's file.
pub(crate) fn drop_members(p: &mut Plan, leaders: &[Option<u32>]) {
    let member = |id: u32| leaders.get(id as usize).is_some_and(Option::is_some);
    p.fetch.retain(|f| !member(f.id));
    p.metadata.retain(|&id| !member(id));
}

/// The same for names linked to a file of an earlier page (a paged pass),
/// when that file is in the replica with the member's size; the others
/// lose their link and are fetched as plain files (a next pass links them).
pub(crate) fn drop_far_members(ctx: &PassCtx, p: &mut Plan, extras: &mut Extras) {
    if extras.far.is_empty() {
        return;
    }
    extras.far.retain(|l| {
        let size = match ctx.entry(l.entry).kind {
            Kind::File { size } => size,
            _ => return false,
        };
        let leader = l.leader.join("/");
        matches!(ctx.store.stat(&leader), Ok(Some(e)) if e.kind == Kind::File { size })
    });
    let far = |id: u32| extras.is_far(id);
    p.fetch.retain(|f| !far(f.id));
    p.metadata.retain(|&id| !far(id));
}

/// Runs the three steps; a dry run (whose store notes links and copies
/// without making them) skips the second: it cannot tell which
/// attributes would change.
pub(crate) fn apply(
    ctx: &PassCtx,
    extras: &Extras,
    (xattrs, paged): (bool, bool),
    stats: &mut PassStats,
) {
    if ctx.interrupted() {
        return;
    }
    let xattrs = xattrs && ctx.store.capabilities().records;
    let leaders = extras.leaders(ctx.manifest.entries.len());
    let skip = |id: u32| ctx.unholdable.covers(id);
    break_links(ctx, &leaders, paged.then_some(extras), stats);
    if xattrs {
        set_xattrs(ctx, extras, &leaders, &skip, stats);
    }
    link_members(ctx, extras, &skip, stats);
}

/// Step 1: among replica files that share an inode, every one whose source
/// group (its leader, or itself) differs from the first group found gets a
/// copy of its own (step 3 then links it to its own leader, if it has one).
/// In a paged pass the other names may lie in other pages: a linked replica
/// file that the source has as a plain file (no part in any group) gets a
/// copy of its own too.
fn break_links(
    ctx: &PassCtx,
    leaders: &[Option<u32>],
    paged: Option<&Extras>,
    stats: &mut PassStats,
) {
    let linked = ctx.store.take_linked();
    if linked.is_empty() {
        return;
    }
    let ids = file_ids(ctx, &linked);
    let group = |key: &str| ids.get(key).map(|&id| leaders[id as usize].unwrap_or(id));
    // As they are now (the content step may have replaced some).
    let mut by_ino: HashMap<u64, Vec<&str>> = HashMap::new();
    for (k, _) in &linked {
        if let Ok(Some((ino, n))) = ctx.store.file_links(k) {
            if n > 1 {
                by_ino.entry(ino).or_default().push(k);
            }
        }
    }
    for keys in by_ino.values() {
        // Names outside the manifest (about to go, or not ours) are left alone.
        let Some(owner) = keys.iter().find_map(|k| group(k)) else {
            continue;
        };
        for &k in keys {
            let Some(&id) = ids.get(k) else { continue };
            if group(k) == Some(owner) {
                continue;
            }
            own_copy(ctx, k, id, stats);
        }
    }
    let Some(extras) = paged else {
        return;
    };
    for (k, _) in &linked {
        let Some(&id) = ids.get(k.as_str()) else {
            continue;
        };
        let shared = matches!(ctx.store.file_links(k), Ok(Some((_, n))) if n > 1);
        if shared && !extras.has_link_role(id) {
            own_copy(ctx, k, id, stats);
        }
    }
}

fn own_copy(ctx: &PassCtx, k: &str, id: u32, stats: &mut PassStats) {
    let e = ctx.entry(id);
    match ctx.store.own_copy(k, e.mode, e.mtime) {
        Ok(()) => ctx.report(
            stats,
            OpReport {
                detail: Some("no longer a hard link".into()),
                ..simple(Op::Updated, k, Reason::MetadataChanged)
            },
        ),
        Err(err) => ctx.fail(stats, k, Failure::store("break a hard link", err)),
    }
}

/// The manifest ids of the `linked` keys that name files of the manifest.
fn file_ids<'k>(ctx: &PassCtx, linked: &'k [(String, u64)]) -> HashMap<&'k str, u32> {
    let wanted: HashMap<&str, &'k str> = linked
        .iter()
        .map(|(k, _)| (k.as_str(), k.as_str()))
        .collect();
    let mut ids = HashMap::new();
    for (i, e) in ctx.manifest.entries.iter().enumerate() {
        if matches!(e.kind, Kind::File { .. }) {
            if let Some(k) = wanted.get(ctx.key(i as u32)) {
                ids.insert(*k, i as u32);
            }
        }
    }
    ids
}

/// Step 2.
fn set_xattrs(
    ctx: &PassCtx,
    extras: &Extras,
    leaders: &[Option<u32>],
    skip: &dyn Fn(u32) -> bool,
    stats: &mut PassStats,
) {
    for (i, e) in ctx.manifest.entries.iter().enumerate() {
        let id = i as u32;
        if leaders[i].is_some() || extras.is_far(id) || skip(id) {
            continue;
        }
        let key = ctx.key(id);
        match ctx.store.set_xattrs(key, &e.kind, extras.xattrs_of(id)) {
            Ok(false) => {}
            Ok(true) => ctx.report(
                stats,
                OpReport {
                    detail: Some("extended attributes".into()),
                    ..simple(Op::Metadata, key, Reason::MetadataChanged)
                },
            ),
            Err(err) => ctx.report(
                stats,
                OpReport {
                    detail: Some(format!("cannot set extended attributes: {err}")),
                    ..simple(Op::Error, key, Reason::Failed)
                },
            ),
        }
    }
}

/// Step 3: each member shares its leader's inode (names linked to an
/// earlier page's file first: other members of this page may link to them).
fn link_members(ctx: &PassCtx, extras: &Extras, skip: &dyn Fn(u32) -> bool, stats: &mut PassStats) {
    for l in &extras.far {
        if !skip(l.entry) {
            link_one(ctx, ctx.key(l.entry), &l.leader.join("/"), stats);
        }
    }
    for l in &extras.links {
        if skip(l.entry) || skip(l.leader) {
            continue;
        }
        link_one(ctx, ctx.key(l.entry), ctx.key(l.leader), stats);
    }
}

/// Makes `key` a hard link to `leader` unless it is one already.
fn link_one(ctx: &PassCtx, key: &str, leader: &str, stats: &mut PassStats) {
    let Ok(Some((ino, _))) = ctx.store.file_links(leader) else {
        return; // the leader failed: reported already
    };
    let had = match ctx.store.file_links(key) {
        Ok(Some((i, _))) if i == ino => return,
        Ok(found) => found.is_some(),
        Err(_) => true,
    };
    match ctx.store.hard_link(leader, key) {
        Ok(()) => ctx.report(
            stats,
            OpReport {
                from: Some(leader.to_string()),
                detail: Some("hard link".into()),
                ..simple(
                    Op::Copied,
                    key,
                    if had {
                        Reason::ContentChanged
                    } else {
                        Reason::New
                    },
                )
            },
        ),
        Err(err) => ctx.fail(stats, key, Failure::store("make a hard link", err)),
    }
}
