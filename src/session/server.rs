//! The server's side of a session: for each pass, receive the manifest,
//! scan the replica through its store, plan, carry the plan out
//! (`steps.rs`) and pull the content it lacks (`transfer/`), then act on
//! hard links and extended attributes (`extras.rs`), then report.
//!
//! A dry run is decided here and nowhere else: the pass runs on a
//! [`DryRun`] wrapper of the store, an overlay of the index, both noting
//! what the pass would have done in scratch databases that last the pass
//! (`paged::DryState`), and no partial files.

use super::deferred::Deferred;
use super::link::LinkError;
use super::paged::PassRun;
use super::partial::Partials;
use super::pass::{simple, Failure, PassCtx};
use super::scan::{scan, ScanOptions};
use super::transfer::{Doomed, Transfer};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::index::{IndexTxn, ReplicaIndex};
use crate::plan::{plan, Plan, PlanOptions, ReplicaView};
use crate::protocol::{
    ClientMsg, Op, OpReport, PassOptions, PassStats, Reason, ServerMsg, MAX_ENTRIES,
};
use crate::report::Reporter;
use crate::store::{DryRun, MinFree, Store};
use crate::tree::{Extras, Kind, Manifest};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use super::pass::ServerLink;

/// Everything a server session works on.
pub struct ServerState {
    pub store: Box<dyn Store>,
    pub index: ReplicaIndex,
    pub reporter: Arc<Reporter>,
    pub min_free: MinFree,
    pub shutdown: Arc<AtomicBool>,
    /// Set while a pass runs.
    pub in_pass: Arc<AtomicBool>,
    pub stats: Arc<crate::status::ServerStats>,
    /// Large files received in part, resumed by a later pass.
    pub partials: Partials,
    /// Passes run so far (numbers partials).
    pub pass_seq: AtomicU64,
    /// Which names the replica can hold.
    pub names: crate::tree::NameRules,
}

/// Serves passes until the client says goodbye or the link fails.
pub fn serve_session(link: &ServerLink, st: &ServerState) -> Result<()> {
    loop {
        match link.recv() {
            Ok(ClientMsg::BeginPass(opts)) => {
                st.in_pass.store(true, Ordering::Release);
                let r = run_pass(link, st, opts);
                st.in_pass.store(false, Ordering::Release);
                if let Err(e) = r {
                    let _ = link.send(ServerMsg::Fatal {
                        reason: e.to_string(),
                    });
                    return Err(e);
                }
            }
            Ok(ClientMsg::Bye) => return Ok(()),
            Ok(other) => {
                let reason = format!("unexpected {} between passes", other.name());
                let _ = link.send(ServerMsg::Fatal {
                    reason: reason.clone(),
                });
                return Err(Error::protocol(&link.peer, reason));
            }
            Err(LinkError::Closed) => return Ok(()),
            Err(e) => return Err(Error::link(&link.peer, e)),
        }
    }
}

/// One manifest (a whole pass's, or one page's), its extras, and whether it
/// is the last of the pass (`EndManifest`; `EndPage` says more follow).
fn receive_manifest(link: &ServerLink) -> Result<(Manifest, Extras, bool)> {
    let mut m = Manifest::default();
    let mut extras = Extras::default();
    let bad = |e: String| Error::protocol(&link.peer, e);
    loop {
        match link.recv().map_err(|e| Error::link(&link.peer, e))? {
            ClientMsg::Entries(batch) => {
                if m.entries.len() + batch.len() > MAX_ENTRIES {
                    return Err(Error::protocol(
                        &link.peer,
                        format!("manifest exceeds {MAX_ENTRIES} entries"),
                    ));
                }
                m.entries.extend(batch);
            }
            ClientMsg::Links(batch) => extras.add_links(batch, m.entries.len()).map_err(bad)?,
            ClientMsg::Xattrs(batch) => extras.add_xattrs(batch, m.entries.len()).map_err(bad)?,
            ClientMsg::FarLinks(batch) => extras.add_far(batch, m.entries.len()).map_err(bad)?,
            end @ (ClientMsg::EndManifest { .. } | ClientMsg::EndPage { .. }) => {
                let (last, opaque, partial) = match end {
                    ClientMsg::EndManifest { opaque, partial } => (true, opaque, partial),
                    ClientMsg::EndPage { opaque, partial } => (false, opaque, partial),
                    _ => unreachable!("matched above"),
                };
                m.opaque = opaque;
                m.partial = partial;
                let invalid = |e: String| bad(format!("invalid manifest: {e}"));
                m.validate().map_err(invalid)?;
                extras.validate(&m).map_err(invalid)?;
                return Ok((m, extras, last));
            }
            other => {
                return Err(Error::protocol(
                    &link.peer,
                    format!("unexpected {} in manifest", other.name()),
                ));
            }
        }
    }
}

/// Opens the pass's index transactions: over the overlay in a dry run.
struct Txns<'i> {
    index: &'i ReplicaIndex,
    overlay: Option<&'i crate::index::DryIndex>,
}

impl<'i> Txns<'i> {
    fn begin(&self) -> Result<IndexTxn<'i>> {
        match self.overlay {
            Some(o) => self.index.begin_overlay(o),
            None => self.index.begin(),
        }
    }
}

/// Removes versions older than `--keep-versions`, and their index records.
fn prune_versions(st: &ServerState) -> Result<()> {
    match st.store.prune_versions() {
        Ok(gone) if gone.is_empty() => Ok(()),
        Ok(gone) => {
            let mut txn = st.index.begin()?;
            for vkey in gone {
                txn.remove_file(&format!("{}{vkey}", crate::versions::INDEX_PREFIX))?;
            }
            txn.commit()
        }
        Err(e) => {
            st.reporter.warn(&format!(
                "cannot prune old versions: {}",
                crate::error::describe_io(&e)
            ));
            Ok(())
        }
    }
}

/// Whether a manifest lists its root in full, and nothing in it.
fn source_is_empty(m: &Manifest) -> bool {
    m.entries.len() == 1 && !m.opaque.contains(&0) && !m.partial.contains(&0)
}

fn run_pass(link: &ServerLink, st: &ServerState, opts: PassOptions) -> Result<()> {
    let filter = Filter::new(opts.excludes.clone())
        .map_err(|e| Error::protocol(&link.peer, e.to_string()))?;
    let mut run = PassRun::new(st.pass_seq.fetch_add(1, Ordering::Relaxed) + 1);
    if opts.dry_run {
        run.dry = Some(super::paged::DryState::create(&st.index)?);
    }
    loop {
        let page = receive_manifest(link)?;
        if !page.2 && run.deferred.is_none() {
            run.deferred = Some(Deferred::create(&st.index.scratch_path("removals"))?);
        }
        match run_page(link, st, &opts, &filter, page, &mut run)? {
            PageEnd::More => {
                link.send(ServerMsg::PageDone);
            }
            PageEnd::PassOver => return Ok(()),
        }
    }
}

/// How a page ended.
enum PageEnd {
    /// The client sends the next page.
    More,
    /// `PassDone` (or `Fatal`) was sent.
    PassOver,
}

/// Plans and carries out one page (the whole manifest of an unpaged pass);
/// the last one also carries out what the pass deferred and ends the pass.
fn run_page(
    link: &ServerLink,
    st: &ServerState,
    opts: &PassOptions,
    filter: &Filter,
    page: (Manifest, Extras, bool),
    run: &mut PassRun,
) -> Result<PageEnd> {
    // Taken out of the run for the page (the run is lent out below).
    let dry_state = run.dry.take();
    let dry = dry_state
        .as_ref()
        .map(|d| DryRun::new(&*st.store, &d.shadow));
    let store: &dyn Store = match &dry {
        Some(d) => d,
        None => &*st.store,
    };
    let r = run_page_on(link, st, opts, filter, store, dry_state.as_ref(), page, run);
    run.dry = dry_state;
    r
}

/// [`run_page`] on `store` (a dry run's when `dry` is set).
#[allow(clippy::too_many_arguments)]
fn run_page_on(
    link: &ServerLink,
    st: &ServerState,
    opts: &PassOptions,
    filter: &Filter,
    store: &dyn Store,
    dry: Option<&super::paged::DryState>,
    (mut manifest, mut extras, last): (Manifest, Extras, bool),
    run: &mut PassRun,
) -> Result<PageEnd> {
    let full = manifest.opaque.is_empty() && manifest.partial.is_empty();
    let keys = crate::plan::keys_of(&manifest);
    // Names this replica cannot hold: one error each, and the replica keeps
    // whatever it holds at and below them.
    let unholdable = manifest.unholdable(st.names);
    for &(id, _) in &unholdable.refused {
        if manifest.entries[id as usize].kind.is_dir() {
            manifest.opaque.push(id);
        }
    }
    let ctx = PassCtx {
        link,
        store,
        reporter: &st.reporter,
        stats: &st.stats,
        shutdown: &st.shutdown,
        manifest: &manifest,
        keys: &keys,
        partials: (!opts.dry_run).then_some(&st.partials),
        pass_no: run.pass_no,
        min_free: st.min_free,
        keep_excluded: (!opts.delete_excluded && !filter.is_empty()).then_some(filter),
        unholdable: &unholdable,
        hold_removals: run.deferred.is_some() && opts.max_delete.is_some(),
    };
    let txns = Txns {
        index: &st.index,
        overlay: dry.map(|d| &d.index),
    };
    let scan_opts = ScanOptions {
        filter,
        delete_excluded: opts.delete_excluded,
        checksum: opts.checksum,
    };
    let Some((view, mut p)) = look(&ctx, opts, scan_opts, &txns, run)? else {
        link.send(ServerMsg::PassDone(std::mem::take(&mut run.stats)));
        return Ok(PageEnd::PassOver);
    };
    // The other names of hard-link groups get their leader's file after
    // the content step, never content of their own.
    super::extras::drop_members(&mut p, &extras.leaders(manifest.entries.len()));
    super::extras::drop_far_members(&ctx, &mut p, &mut extras);
    if run.deferred.is_some() {
        // In a paged pass a new directory whose content a later page lists
        // is made by that page: so a directory moved there can still be
        // renamed into place whole.
        let later: std::collections::HashSet<u32> = manifest.opaque.iter().copied().collect();
        p.mkdirs.retain(|id| !later.contains(id));
    }
    if run.pages == 0 {
        if let Some(warning) = st.min_free.warning(store) {
            st.reporter.warn(&warning);
        }
    }
    announce(&ctx, &p);
    let mut txn = txns.begin()?;
    let stats = &mut run.stats;
    apply(
        &ctx,
        &view,
        p,
        (&extras, opts.xattrs),
        &mut txn,
        stats,
        run.deferred.as_mut(),
    )?;
    if let (true, Some(deferred)) = (last, &run.deferred) {
        if !ctx.interrupted() {
            match super::paged::over_max(&ctx, deferred, opts.max_delete, run.removals)? {
                Some(why) => stats.stopped = Some(why),
                None => super::paged::finish(&ctx, deferred, &mut txn, stats)?,
            }
        }
    }
    for (key, e) in store.flush() {
        let shown = if key.is_empty() { "." } else { &key };
        ctx.fail(stats, shown, Failure::store("write", e));
    }
    txn.commit()?;
    run.pages += 1;
    run.files += manifest
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .count() as u64;
    run.bytes = run.bytes.saturating_add(manifest.file_bytes());
    if !last && !ctx.interrupted() {
        return Ok(PageEnd::More);
    }
    if !opts.dry_run && !ctx.interrupted() {
        prune_versions(st)?;
    }
    // A paged pass covers the whole tree, page by page.
    let full = full || run.deferred.is_some();
    finish(&ctx, st, full, run)?;
    Ok(PageEnd::PassOver)
}

/// Scans the replica, plans, moves renamed directories into place (and
/// plans again), and checks --max-delete. None: the pass stops here.
fn look(
    ctx: &PassCtx,
    opts: &PassOptions,
    scan_opts: ScanOptions,
    txns: &Txns,
    run: &mut PassRun,
) -> Result<Option<(ReplicaView, Plan)>> {
    let stats = &mut run.stats;
    // Once a pass (an object store lists the whole bucket here).
    if run.pages == 0 {
        ctx.store
            .refresh()
            .map_err(|e| Error::io("the replica's store", e))?;
    }
    let (mut view, extras) = scan(ctx.store, ctx.manifest, ctx.keys, scan_opts);
    for &(id, why) in &ctx.unholdable.refused {
        ctx.fail(stats, ctx.key(id), Failure::Unholdable(why));
    }
    for (key, why) in extras.problems {
        ctx.fail(stats, &key, Failure::Scan(why));
    }
    let kept = ctx.partials.map(Partials::temp_keys).unwrap_or_default();
    for t in extras.stale_temps.iter().filter(|t| !kept.contains(*t)) {
        let _ = ctx.store.remove(t);
    }
    let plan_opts = PlanOptions {
        checksum: opts.checksum,
    };
    let mut p = plan(ctx.manifest, ctx.keys, &view, plan_opts);
    p.skip(ctx.unholdable, ctx.keys);
    if !opts.allow_empty_source && source_is_empty(ctx.manifest) && !p.remove.is_empty() {
        let n: u64 = p
            .remove
            .iter()
            .map(|k| ctx.store.count(k).unwrap_or(1))
            .sum();
        stats.stopped = Some(format!(
            "the source is empty but the replica holds {n} {}; nothing was changed \
             (an unmounted disk or a wrong path?). To empty the replica on purpose, pass --allow-empty-source",
            if n == 1 { "entry" } else { "entries" }
        ));
        return Ok(None);
    }
    if ctx.store.capabilities().cheap_rename && opts.max_delete.is_none() {
        let moved = move_dirs(ctx, &p, &view, txns, run.deferred.as_mut())?;
        if !moved.is_empty() {
            view = scan(ctx.store, ctx.manifest, ctx.keys, scan_opts).0;
            p = plan(ctx.manifest, ctx.keys, &view, plan_opts);
            p.skip(ctx.unholdable, ctx.keys);
        }
        for (from, to) in moved {
            let r = OpReport {
                from: Some(from),
                ..simple(Op::Moved, &to, Reason::New)
            };
            ctx.report(stats, r);
        }
    }
    if let Some(max) = opts.max_delete {
        let count =
            |keys: &[String]| -> u64 { keys.iter().map(|k| ctx.store.count(k).unwrap_or(1)).sum() };
        if ctx.hold_removals {
            // A paged pass: a type change (the replica's entry cleared for
            // one of another type) is carried out with its page, so it is
            // counted here; removals wait on disk and are counted at the
            // end (`paged::over_max`).
            let n = count(&p.clear) + run.removals;
            if n > max {
                stats.stopped = Some(format!(
                    "the pass would remove more than --max-delete {max} entries \
                     ({n} replaced by entries of another type); nothing was removed{}",
                    if run.pages == 0 {
                        ", nothing was changed"
                    } else {
                        " (additions and updates of earlier pages were carried out)"
                    }
                ));
                return Ok(None);
            }
            run.removals = n;
        } else {
            let n = count(&p.remove) + count(&p.clear);
            if n > max {
                stats.stopped = Some(format!(
                    "the pass would remove {n} entries, more than --max-delete {max}; nothing was changed"
                ));
                return Ok(None);
            }
        }
    }
    Ok(Some((view, p)))
}

/// Renames directories the source renamed (see `renames.rs`), from this
/// page's removals or, in a paged pass, from those earlier pages deferred;
/// returns the moves made.
fn move_dirs(
    ctx: &PassCtx,
    p: &Plan,
    view: &ReplicaView,
    txns: &Txns,
    mut deferred: Option<&mut Deferred>,
) -> Result<Vec<(String, String)>> {
    let mut moves = super::renames::detect(ctx.manifest, ctx.keys, p, view, ctx.store);
    if let Some(d) = deferred.as_deref_mut() {
        let taken: std::collections::HashSet<&str> = moves.iter().map(|m| m.1.as_str()).collect();
        let far = super::renames::detect_deferred(ctx.manifest, ctx.keys, p, d, &taken)?;
        moves.extend(far);
    }
    if moves.is_empty() {
        return Ok(moves);
    }
    let mut txn = txns.begin()?;
    moves.retain(|(from, to)| match ctx.store.rename(from, to) {
        Ok(()) => txn.rename_tree(from, to).is_ok(),
        Err(_) => false,
    });
    txn.commit()?;
    if let Some(d) = deferred {
        for (from, _) in &moves {
            d.mark_moved(from)?;
        }
    }
    Ok(moves)
}

/// Tells the client how much the pass will fetch.
fn announce(ctx: &PassCtx, p: &Plan) {
    let bytes = p
        .fetch
        .iter()
        .map(|f| match ctx.manifest.entries[f.id as usize].kind {
            Kind::File { size } => size,
            _ => 0,
        })
        .fold(0u64, u64::saturating_add);
    ctx.link.send(ServerMsg::Plan {
        files: p.fetch.len() as u64,
        bytes,
    });
}

/// Carries the plan out: wrong types cleared, structure, content (small
/// files, then small removals, then big files), removals, directory
/// metadata. In a paged pass removals wait in `deferred` (see `paged.rs`).
fn apply(
    ctx: &PassCtx,
    view: &ReplicaView,
    mut p: Plan,
    (extras, xattrs): (&Extras, bool),
    txn: &mut IndexTxn,
    stats: &mut PassStats,
    deferred: Option<&mut Deferred>,
) -> Result<()> {
    super::steps::clear(ctx, &p.clear, txn, stats)?;
    super::steps::structure(ctx, &p, txn, stats);
    let fetch = std::mem::take(&mut p.fetch);
    let paged = deferred.is_some();
    match deferred {
        Some(deferred) => {
            // Under --max-delete nothing doomed is moved away before the
            // count at the end says the removals may happen.
            let doomed = match ctx.hold_removals {
                false => Doomed {
                    page: p.remove.iter().cloned().collect(),
                    earlier: Some(&*deferred),
                },
                true => Doomed {
                    page: Default::default(),
                    earlier: None,
                },
            };
            let mut transfer = Transfer::new(ctx, view, doomed, fetch);
            let run = transfer.run(txn, stats, false);
            transfer.clean_stash(txn)?;
            let moved = transfer.take_moved_away();
            drop(transfer);
            run?;
            super::paged::defer(ctx, view, &p.remove, &moved, deferred)?;
        }
        None => {
            let doomed = Doomed {
                page: p.remove.iter().cloned().collect(),
                earlier: None,
            };
            let mut transfer = Transfer::new(ctx, view, doomed, fetch);
            let early = transfer.removable_early(&p.remove);
            let mut run = transfer.run(txn, stats, !early.is_empty());
            if run.is_ok() && !early.is_empty() && !ctx.interrupted() {
                run = super::steps::remove_extras(ctx, &early, transfer.moved_away(), txn, stats)
                    .and_then(|()| transfer.run(txn, stats, false));
                p.remove.retain(|k| !early.contains(k));
            }
            transfer.clean_stash(txn)?;
            run?;
            super::steps::remove_extras(ctx, &p.remove, transfer.moved_away(), txn, stats)?;
        }
    }
    super::extras::apply(ctx, extras, (xattrs, paged), stats);
    super::steps::fix_dirs(ctx, &p.dirs_deepest_first);
    Ok(())
}

/// Closes the pass: partials of a full pass, counters, the final message.
fn finish(ctx: &PassCtx, st: &ServerState, full: bool, run: &mut PassRun) -> Result<()> {
    if full {
        st.partials.forget_older_than(ctx.pass_no);
    }
    let stats = std::mem::take(&mut run.stats);
    st.stats
        .note_pass(&stats, full.then_some((run.files, run.bytes)));
    if ctx.interrupted() {
        ctx.link.send(ServerMsg::Fatal {
            reason: "server is shutting down".into(),
        });
        return Err(Error::Interrupted);
    }
    ctx.link.send(ServerMsg::PassDone(stats));
    Ok(())
}
