//! The server's side of a session: for each pass, receive the manifest,
//! scan the replica, plan, carry the plan out and pull the content it lacks
//! (see `transfer.rs`), then report.

use super::transfer::Transfer;
use crate::apply::Replica;
use crate::error::{describe_io, Error, Result};
use crate::filter::Filter;
use crate::index::{IndexTxn, ReplicaIndex};
use crate::plan::{plan, PlanOptions};
use crate::protocol::{
    ClientMsg, Op, OpReport, PassOptions, PassStats, Reason, ServerMsg, MAX_ENTRIES,
};
use crate::report::Reporter;
use crate::transport::Link;
use crate::tree::{Kind, Manifest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Everything a server session works on.
pub struct ServerState {
    pub replica: Replica,
    pub index: ReplicaIndex,
    pub reporter: Arc<Reporter>,
    pub fsync: bool,
    pub min_free: crate::transport::server::MinFree,
    pub shutdown: Arc<AtomicBool>,
    /// Set while a pass runs.
    pub in_pass: Arc<AtomicBool>,
    pub stats: Arc<crate::status::ServerStats>,
    /// Large files received in part, resumed by a later pass.
    pub partials: super::partial::Partials,
    /// Passes run so far (numbers partials).
    pub pass_seq: std::sync::atomic::AtomicU64,
    /// Which names the replica can hold.
    pub names: crate::tree::NameRules,
}

pub type ServerLink = Link<ServerMsg, ClientMsg>;

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
                let reason = format!("unexpected {} between passes", msg_name(&other));
                let _ = link.send(ServerMsg::Fatal {
                    reason: reason.clone(),
                });
                return Err(Error::protocol(&link.peer, reason));
            }
            Err(e) if e == "connection closed" => return Ok(()),
            Err(e) => return Err(Error::protocol(&link.peer, e)),
        }
    }
}

pub(crate) fn msg_name(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::BeginPass(_) => "BeginPass",
        ClientMsg::Entries(_) => "Entries",
        ClientMsg::EndManifest { .. } => "EndManifest",
        ClientMsg::Summary { .. } => "Summary",
        ClientMsg::GroupHashes { .. } => "GroupHashes",
        ClientMsg::GroupChunks { .. } => "GroupChunks",
        ClientMsg::Chunk { .. } => "Chunk",
        ClientMsg::Chunks { .. } => "Chunks",
        ClientMsg::ChunkDelta { .. } => "ChunkDelta",
        ClientMsg::FileFailed { .. } => "FileFailed",
        ClientMsg::Skip { .. } => "Skip",
        ClientMsg::Bye => "Bye",
    }
}

fn receive_manifest(link: &ServerLink) -> Result<Manifest> {
    let mut m = Manifest::default();
    loop {
        match link.recv().map_err(|e| Error::protocol(&link.peer, e))? {
            ClientMsg::Entries(batch) => {
                if m.entries.len() + batch.len() > MAX_ENTRIES {
                    return Err(Error::protocol(
                        &link.peer,
                        format!("manifest exceeds {MAX_ENTRIES} entries"),
                    ));
                }
                m.entries.extend(batch);
            }
            ClientMsg::EndManifest { opaque, partial } => {
                m.opaque = opaque;
                m.partial = partial;
                m.validate()
                    .map_err(|e| Error::protocol(&link.peer, format!("invalid manifest: {e}")))?;
                return Ok(m);
            }
            other => {
                return Err(Error::protocol(
                    &link.peer,
                    format!("unexpected {} in manifest", msg_name(&other)),
                ));
            }
        }
    }
}

/// Sends a report to the client and logs it on the server.
pub(crate) fn report(link: &ServerLink, st: &ServerState, stats: &mut PassStats, r: OpReport) {
    if r.op == Op::Error {
        stats.errors += 1;
    } else {
        stats.ops += 1;
    }
    st.reporter.op(&r);
    st.stats.note_op();
    link.send(ServerMsg::Report(r));
}

pub(crate) fn simple(op: Op, path: &str, reason: Reason) -> OpReport {
    OpReport {
        op,
        path: path.to_string(),
        from: None,
        reason,
        received: 0,
        reused: 0,
        detail: None,
    }
}

pub(crate) fn failure(path: &str, what: &str, e: &std::io::Error) -> OpReport {
    OpReport {
        detail: Some(format!("cannot {what}: {}", describe_io(e))),
        ..simple(Op::Error, path, Reason::Failed)
    }
}

/// Whether a manifest lists its root in full, and nothing in it.
fn source_is_empty(m: &Manifest) -> bool {
    m.entries.len() == 1 && !m.opaque.contains(&0) && !m.partial.contains(&0)
}

fn run_pass(link: &ServerLink, st: &ServerState, opts: PassOptions) -> Result<()> {
    let mut manifest = receive_manifest(link)?;
    let full = manifest.opaque.is_empty() && manifest.partial.is_empty();
    let filter = Filter::new(opts.excludes.clone()).map_err(|e| Error::protocol(&link.peer, e))?;
    let keys = crate::plan::keys_of(&manifest);
    // Names this replica cannot hold: one error each, and the replica keeps
    // whatever it holds at and below them.
    let unholdable = manifest.unholdable(st.names);
    for &(id, _) in &unholdable.refused {
        if manifest.entries[id as usize].kind.is_dir() {
            manifest.opaque.push(id);
        }
    }
    let (view, extras) = st.replica.scan(
        &manifest,
        &keys,
        &filter,
        opts.delete_excluded,
        opts.checksum,
    );
    let mut stats = PassStats::default();
    for &(id, why) in &unholdable.refused {
        let r = OpReport {
            detail: Some(format!("this replica cannot hold that name: {why}")),
            ..simple(Op::Error, &keys[id as usize], Reason::Failed)
        };
        report(link, st, &mut stats, r);
    }
    for (key, why) in &extras.problems {
        report(
            link,
            st,
            &mut stats,
            OpReport {
                detail: Some(why.clone()),
                ..simple(Op::Error, key, Reason::Failed)
            },
        );
    }
    let pass_no = st.pass_seq.fetch_add(1, Ordering::Relaxed) + 1;
    if !opts.dry_run {
        let kept = st.partials.temp_keys();
        for t in extras.stale_temps.iter().filter(|t| !kept.contains(*t)) {
            let _ = st.replica.remove(t);
        }
    }
    let plan_opts = PlanOptions {
        checksum: opts.checksum,
    };
    let mut p = plan(&manifest, &keys, &view, plan_opts);
    p.skip(&unholdable, &keys);
    if !opts.allow_empty_source && source_is_empty(&manifest) && !p.remove.is_empty() {
        let n: u64 = p
            .remove
            .iter()
            .map(|k| st.replica.count(k).unwrap_or(1))
            .sum();
        stats.stopped = Some(format!(
            "the source is empty but the replica holds {n} {}; nothing was changed \
             (an unmounted disk or a wrong path?). To empty the replica on purpose, pass --allow-empty-source",
            if n == 1 { "entry" } else { "entries" }
        ));
        link.send(ServerMsg::PassDone(stats));
        return Ok(());
    }
    let mut view = view;
    let mut dir_moves = Vec::new();
    if !opts.dry_run && opts.max_delete.is_none() {
        dir_moves = super::renames::detect(&manifest, &keys, &p, &view, &st.replica);
        if !dir_moves.is_empty() {
            let mut txn = st.index.begin()?;
            dir_moves.retain(|(from, to)| match st.replica.rename(from, to) {
                Ok(()) => txn.rename_tree(from, to).is_ok(),
                Err(_) => false,
            });
            txn.commit()?;
            view = st
                .replica
                .scan(
                    &manifest,
                    &keys,
                    &filter,
                    opts.delete_excluded,
                    opts.checksum,
                )
                .0;
            p = plan(&manifest, &keys, &view, plan_opts);
            p.skip(&unholdable, &keys);
        }
    }
    for (from, to) in &dir_moves {
        let r = OpReport {
            from: Some(from.clone()),
            ..simple(Op::Moved, to, Reason::New)
        };
        report(link, st, &mut stats, r);
    }
    if let Some(max) = opts.max_delete {
        let n: u64 = p
            .remove
            .iter()
            .chain(&p.clear)
            .map(|k| st.replica.count(k).unwrap_or(1))
            .sum();
        if n > max {
            stats.stopped = Some(format!(
                "the pass would remove {n} entries, more than --max-delete {max}; nothing was changed"
            ));
            link.send(ServerMsg::PassDone(stats));
            return Ok(());
        }
    }
    if let (Ok(free), Ok(total)) = (
        fs4::available_space(st.replica.root_path()),
        fs4::total_space(st.replica.root_path()),
    ) {
        let keep = st.min_free.bytes(total);
        if free < keep {
            let msg = format!(
                "free space on the destination is low: {} free, --min-free is {}",
                crate::report::human_bytes(free),
                crate::report::human_bytes(keep)
            );
            st.reporter.warn(&msg);
        }
    }
    let fetch_bytes = p
        .fetch
        .iter()
        .map(|f| match manifest.entries[f.id as usize].kind {
            Kind::File { size } => size,
            _ => 0,
        })
        .fold(0u64, u64::saturating_add);
    link.send(ServerMsg::Plan {
        files: p.fetch.len() as u64,
        bytes: fetch_bytes,
    });
    let mut txn = st.index.begin()?;
    let ctx = PassCtx {
        link,
        st,
        manifest: &manifest,
        keys: &keys,
        dry: opts.dry_run,
        keep_excluded: (!opts.delete_excluded && !filter.is_empty()).then_some(&filter),
    };
    ctx.clear(&p.clear, &mut txn, &mut stats)?;
    ctx.structure(&p, &mut txn, &mut stats);
    let doomed = p.remove.iter().cloned().collect();
    let mut transfer = Transfer::new(&ctx, &view, doomed, std::mem::take(&mut p.fetch));
    transfer.remove_small_early(&p.remove);
    let run = transfer.run(&mut txn, &mut stats);
    transfer.clean_stash(&mut txn)?;
    run?;
    let (moved_away, removed_early) = transfer.into_moved();
    p.remove.retain(|k| !removed_early.contains(k));
    ctx.remove_extras(&p.remove, &moved_away, &mut txn, &mut stats)?;
    ctx.fix_dirs(&p.dirs_deepest_first);
    txn.commit()?;
    if full {
        st.partials.forget_older_than(pass_no);
    }
    let files = manifest
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .count() as u64;
    st.stats
        .note_pass(&stats, full.then(|| (files, manifest.file_bytes())));
    if st.shutdown.load(Ordering::Relaxed) {
        link.send(ServerMsg::Fatal {
            reason: "server is shutting down".into(),
        });
        return Err(Error::Interrupted);
    }
    link.send(ServerMsg::PassDone(stats));
    Ok(())
}

/// What every step of a pass needs.
pub(crate) struct PassCtx<'a> {
    pub link: &'a ServerLink,
    pub st: &'a ServerState,
    pub manifest: &'a Manifest,
    pub keys: &'a crate::plan::Keys,
    pub dry: bool,
    /// Excluded paths inside removed directories are kept (unless --delete-excluded).
    pub keep_excluded: Option<&'a Filter>,
}

impl PassCtx<'_> {
    pub fn report(&self, stats: &mut PassStats, r: OpReport) {
        report(self.link, self.st, stats, r)
    }

    pub fn interrupted(&self) -> bool {
        self.st.shutdown.load(Ordering::Relaxed)
    }

    /// Removes replica entries of the wrong type before anything is created.
    fn clear(&self, keys: &[String], txn: &mut IndexTxn, stats: &mut PassStats) -> Result<()> {
        for key in keys {
            if !self.dry {
                txn.remove_tree(key)?;
                if let Err(e) = self.st.replica.remove(key) {
                    self.report(stats, failure(key, "remove", &e));
                }
            }
        }
        Ok(())
    }

    /// Directories, symlinks and metadata-only changes.
    fn structure(&self, p: &crate::plan::Plan, txn: &mut IndexTxn, stats: &mut PassStats) {
        let replica = &self.st.replica;
        for &id in &p.mkdirs {
            let key = &self.keys[id as usize];
            match if self.dry { Ok(()) } else { replica.mkdir(key) } {
                Ok(()) => self.report(stats, simple(Op::Created, key, Reason::New)),
                Err(e) => self.report(stats, failure(key, "create directory", &e)),
            }
        }
        for &id in &p.symlinks {
            let key = &self.keys[id as usize];
            let e = &self.manifest.entries[id as usize];
            let Kind::Symlink { target } = &e.kind else {
                continue;
            };
            let existed = replica.stat(key).ok().flatten().is_some();
            let r = if self.dry {
                Ok(())
            } else {
                replica
                    .symlink(key, target)
                    .and_then(|_| replica.set_meta(key, &e.kind, e.mode, e.mtime))
            };
            match r {
                Ok(()) => {
                    let (op, why) = if existed {
                        (Op::Updated, Reason::ContentChanged)
                    } else {
                        (Op::Created, Reason::New)
                    };
                    self.report(stats, simple(op, key, why));
                }
                Err(err) => self.report(stats, failure(key, "create symlink", &err)),
            }
        }
        for &id in &p.metadata {
            let key = &self.keys[id as usize];
            let e = &self.manifest.entries[id as usize];
            if !self.dry && !e.kind.is_dir() {
                if let Err(err) = replica.set_meta(key, &e.kind, e.mode, e.mtime) {
                    self.report(stats, failure(key, "set metadata", &err));
                    continue;
                }
                if let Kind::File { .. } = e.kind {
                    refresh_record(txn, replica, key);
                }
            }
            let shown = if key.is_empty() { "." } else { key };
            self.report(stats, simple(Op::Metadata, shown, Reason::MetadataChanged));
        }
    }

    pub(super) fn remove_extras(
        &self,
        keys: &[String],
        moved_away: &std::collections::HashSet<String>,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        for key in keys {
            if self.interrupted() {
                return Ok(());
            }
            if moved_away.contains(key) {
                continue;
            }
            if !self.dry {
                txn.remove_tree(key)?;
                let removed = match self.keep_excluded {
                    Some(f) => self
                        .st
                        .replica
                        .remove_keeping(key, &|k, d| f.is_excluded(k, d))
                        .map(|(n, _)| n),
                    None => self.st.replica.remove(key),
                };
                match removed {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(e) => {
                        self.report(stats, failure(key, "remove", &e));
                        continue;
                    }
                }
                txn.checkpoint()?;
            }
            self.report(stats, simple(Op::Removed, key, Reason::Extra));
        }
        Ok(())
    }

    /// Re-applies directory modes and mtimes, deepest first (writes inside a
    /// directory change its mtime, so this comes last).
    fn fix_dirs(&self, dirs: &[u32]) {
        if self.dry {
            return;
        }
        for &id in dirs {
            let key = &self.keys[id as usize];
            let e = &self.manifest.entries[id as usize];
            if let Ok(Some(cur)) = self.st.replica.stat(key) {
                if cur.kind.is_dir() && (cur.mtime != e.mtime || cur.mode != e.mode) {
                    let _ = self.st.replica.set_meta(key, &e.kind, e.mode, e.mtime);
                }
            }
        }
    }
}

/// After a metadata change the stat changed: keep the index record valid.
fn refresh_record(txn: &mut IndexTxn, replica: &Replica, key: &str) {
    if let (Ok(Some(rec)), Ok(Some(now))) = (txn.file(key), replica.stat(key)) {
        let mut rec = rec;
        rec.mtime = now.mtime;
        rec.ino = now.ino;
        let _ = txn.put_file(key, &rec);
    }
}
