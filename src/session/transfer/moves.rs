//! Content the replica already holds: the old version at the path (only
//! its metadata changes), or a file at a path this pass removes (renamed
//! into place, not copied). Old versions about to be replaced are kept
//! aside until the end of the pass, so a later file may still be built
//! from them (names swapped, content moved elsewhere).

use super::{now_size, Transfer};
use crate::chunk::{digest_reader, Hash};
use crate::error::Result;
use crate::index::{FileRecord, IndexTxn};
use crate::protocol::{Op, OpReport, PassStats, Reason, ServerMsg};
use crate::session::pass::{simple, Failure};
use crate::store::Reader;
use crate::tree::{Kind, Version};

impl Transfer<'_, '_> {
    /// Whether the replica file already at the path has this content.
    pub(super) fn old_content_matches(&mut self, id: u32, hash: &Hash, txn: &mut IndexTxn) -> bool {
        let key = self.key(id);
        let Some(v) = self.view.get(key) else {
            return false;
        };
        let Kind::File { size } = v.kind else {
            return false;
        };
        if let Ok(Some(rec)) = txn.file(key) {
            if rec.matches(size, v.mtime, v.version) {
                return rec.digest.hash == *hash;
            }
        }
        // Not indexed (or stale): digest it locally, which also indexes it.
        let Ok(file) = self.ctx.store.open(key) else {
            return false;
        };
        let reader = std::io::BufReader::with_capacity(1 << 20, Reader::new(&*file));
        let Ok(d) = digest_reader(reader) else {
            return false;
        };
        let same = d.hash == *hash;
        let rec = FileRecord {
            size: d.size,
            mtime: v.mtime,
            version: v.version,
            digest: d,
        };
        let _ = txn.put_file(key, &rec);
        same
    }

    /// The content is already there: only mode and mtime may differ.
    pub(super) fn finish_metadata_only(
        &mut self,
        id: u32,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let key = self.key(id);
        let e = self.entry(id);
        self.jobs.remove(&id);
        ctx.link.send(ServerMsg::Done { id });
        // Only files with an old version (in the view) get here.
        if self
            .view
            .get(key)
            .is_none_or(|v| v.mtime == e.mtime && v.mode == e.mode)
        {
            return Ok(());
        }
        if let Err(err) = ctx.store.set_meta(key, &e.kind, e.mode, e.mtime) {
            ctx.fail(stats, key, Failure::store("set metadata", err));
            return Ok(());
        }
        if let (Ok(Some(mut rec)), Ok(Some(now))) = (txn.file(key), ctx.store.stat(key)) {
            rec.mtime = now.mtime;
            rec.version = now.version;
            txn.put_file(key, &rec)?;
        }
        ctx.report(stats, simple(Op::Metadata, key, Reason::MetadataChanged));
        Ok(())
    }

    /// If a file this pass removes holds exactly this content, renames it
    /// here (true: the file is done).
    pub(super) fn try_move(
        &mut self,
        id: u32,
        hash: &Hash,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<bool> {
        let Some((from, rec)) = self.movable(hash, txn)? else {
            return Ok(false);
        };
        let ctx = self.ctx;
        let (key, e) = (self.key(id), self.entry(id));
        let size = rec.size;
        let job = self.jobs.remove(&id).map(|j| *j);
        ctx.link.send(ServerMsg::Done { id });
        if job.as_ref().is_some_and(|j| j.fetch.has_old) {
            self.stash_old(key, txn)?;
        }
        let r = ctx
            .store
            .rename(&from, key)
            .and_then(|_| ctx.store.set_meta(key, &e.kind, e.mode, e.mtime));
        if let Err(err) = r {
            ctx.fail(stats, key, Failure::store("move", err));
            return Ok(true);
        }
        let version = match ctx.store.stat(key) {
            Ok(Some(s)) => s.version,
            _ => Version::UNKNOWN,
        };
        let mut rec = rec;
        rec.mtime = e.mtime;
        txn.rename_file(&from, key, rec, version)?;
        self.moved_away.insert(from.clone());
        let r = OpReport {
            from: Some(from),
            reused: size,
            ..simple(Op::Moved, key, Reason::New)
        };
        stats.reused += size;
        ctx.report(stats, r);
        Ok(true)
    }

    /// If the store copies inside itself ([`crate::store::Capabilities`]'s
    /// `server_copy`) and a replica file holds exactly this content (still
    /// as indexed), copies it here (true: the file is done).
    pub(super) fn try_copy(
        &mut self,
        id: u32,
        hash: &Hash,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<bool> {
        let ctx = self.ctx;
        if !ctx.store.capabilities().server_copy {
            return Ok(false);
        }
        let (key, e) = (self.key(id), self.entry(id));
        let Some(from) = txn.find_whole(hash)? else {
            return Ok(false);
        };
        let Some(rec) = txn.file(&from)? else {
            return Ok(false);
        };
        let still = match ctx.store.stat(&from) {
            Ok(Some(now)) => {
                matches!(now.kind, Kind::File { .. })
                    && rec.matches(rec.size, now.mtime, now.version)
                    && rec.size == now_size(&now.kind)
            }
            _ => false,
        };
        if from == key || !still {
            return Ok(false);
        }
        let version = match ctx.store.copy_file(&from, key, e.mode, e.mtime) {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(false),
            Err(err) => {
                ctx.reporter.warn(&format!(
                    "{key}: cannot copy from {from} in the store ({}); sending it",
                    crate::error::describe_io(&err)
                ));
                return Ok(false);
            }
        };
        let size = rec.size;
        self.jobs.remove(&id);
        ctx.link.send(ServerMsg::Done { id });
        let mut rec = rec;
        rec.mtime = e.mtime;
        rec.version = version;
        txn.put_file(key, &rec)?;
        let r = OpReport {
            from: Some(from),
            reused: size,
            ..simple(Op::Copied, key, Reason::New)
        };
        stats.reused += size;
        ctx.report(stats, r);
        Ok(true)
    }

    /// A replica file with content `hash` at a path this pass removes
    /// (not yet moved, still as indexed), and its record.
    fn movable(&self, hash: &Hash, txn: &mut IndexTxn) -> Result<Option<(String, FileRecord)>> {
        if self.doomed.is_empty() {
            return Ok(None);
        }
        let Some(from) = txn.find_whole(hash)? else {
            return Ok(None);
        };
        if !self.doomed.covers(&from) || self.moved_away.contains(&from) {
            return Ok(None);
        }
        let Some(rec) = txn.file(&from)? else {
            return Ok(None);
        };
        let Ok(Some(now)) = self.ctx.store.stat(&from) else {
            return Ok(None);
        };
        let still = matches!(now.kind, Kind::File { .. })
            && rec.matches(rec.size, now.mtime, now.version)
            && rec.size == now_size(&now.kind);
        Ok(still.then_some((from, rec)))
    }

    /// Keeps the version of `key` about to be replaced reachable until the
    /// end of the pass (see the module doc).
    pub(super) fn stash_old(&mut self, key: &str, txn: &mut IndexTxn) -> Result<()> {
        let Some(rec) = txn.file(key)? else {
            return Ok(());
        };
        let store = self.ctx.store;
        let Ok(Some(now)) = store.stat(key) else {
            return Ok(());
        };
        let Kind::File { size } = now.kind else {
            return Ok(());
        };
        if !rec.matches(size, now.mtime, now.version) {
            return Ok(());
        }
        if let Ok(stash) = store.keep_aside(key) {
            txn.put_file(&stash, &rec)?;
            self.stashed.push(stash);
        }
        Ok(())
    }

    /// Removes the old versions kept aside during the pass.
    pub fn clean_stash(&mut self, txn: &mut IndexTxn) -> Result<()> {
        for key in std::mem::take(&mut self.stashed) {
            txn.remove_file(&key)?;
            let _ = self.ctx.store.remove(&key);
        }
        Ok(())
    }
}
