//! The end of a file in flight: verified and published, given up, or set
//! aside as a partial for a later pass.

use super::job::Job;
use super::pool::{Finished, Task};
use super::Transfer;
use crate::chunk::{check_chunks, file_id, Digest};
use crate::error::Result;
use crate::index::{FileRecord, IndexTxn};
use crate::protocol::{Op, OpReport, PassStats, Reason, ServerMsg};
use crate::session::pass::{simple, Failure};
use crate::store::{Reader, Staged, Store};
use crate::tree::Version;

impl Transfer<'_, '_> {
    /// Verifies the assembled file and publishes it.
    pub(super) fn publish(
        &mut self,
        id: u32,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let Some(mut job) = self.jobs.remove(&id).map(|j| *j) else {
            return Ok(());
        };
        let ctx = self.ctx;
        ctx.link.send(ServerMsg::Done { id });
        let (key, e) = (self.key(id), self.entry(id));
        let op = if job.received == 0 && job.size > 0 {
            Op::Copied
        } else if job.fetch.has_old || job.fetch.reason == Reason::TypeChanged {
            Op::Updated
        } else {
            Op::Created
        };
        let report = OpReport {
            received: job.received,
            reused: job.reused,
            ..simple(op, key, job.fetch.reason)
        };
        stats.reused += job.reused;
        let new = !job.fetch.has_old && job.fetch.reason != Reason::TypeChanged;
        if let (true, Some(pool), true) = (new, &mut self.pool, job.tmp.is_some() || job.deferred) {
            // Its share of the deferral budget comes back with it.
            pool.submit(Task::new(id, job, key, e, report));
            return Ok(());
        }
        self.deferred_bytes -= std::mem::take(&mut job.budget);
        if let Err(e) = job.settle() {
            ctx.fail(stats, key, Failure::store("write", e));
            return Ok(());
        }
        let staged = match job.body.take() {
            Some(body) => Some(stage_body(ctx.store, key, &body)),
            None => job.tmp.take().map(Ok),
        };
        if let Some(staged) = staged {
            let tmp = match staged {
                Ok(t) => t,
                Err(why) => {
                    ctx.fail(stats, key, why);
                    return Ok(());
                }
            };
            if let Err(why) = verify(&mut job, &*tmp) {
                ctx.fail(stats, key, why);
                return Ok(());
            }
            // The replaced file's record, in case it goes to the versions.
            let old = if job.fetch.has_old {
                txn.file(key)?
            } else {
                None
            };
            if job.fetch.has_old {
                self.stash_old(key, txn)?;
            }
            let version = match ctx.store.publish(tmp, key, e.mode, e.mtime) {
                Ok(v) => v,
                Err(err) => {
                    ctx.fail(stats, key, Failure::store("rename into place", err));
                    return Ok(());
                }
            };
            index_versions(ctx.store.take_retired(), key, old, txn)?;
            self.record(id, &mut job, version, txn)?;
        } else if !self.pull {
            // A dry run: the file it would have published is noted (and
            // indexed, in its overlay), so later files and pages find it.
            if job.fetch.has_old {
                self.stash_old(key, txn)?;
            }
            match ctx.store.publish_unwritten(key, job.size, e.mode, e.mtime) {
                Ok(version) => self.record(id, &mut job, version, txn)?,
                Err(err) => {
                    ctx.fail(stats, key, Failure::store("note", err));
                    return Ok(());
                }
            }
        }
        ctx.stats.note_reused(job.reused);
        ctx.report(stats, report);
        Ok(())
    }

    /// Indexes a published file.
    fn record(
        &mut self,
        id: u32,
        job: &mut Job,
        version: Version,
        txn: &mut IndexTxn,
    ) -> Result<()> {
        let (key, e) = (self.key(id), self.entry(id));
        self.note_sibling(key, job.size);
        let rec = FileRecord {
            size: job.size,
            mtime: e.mtime,
            version,
            digest: Digest {
                size: job.size,
                hash: job.hash,
                chunks: job.chunks.take().unwrap_or_default(),
            },
        };
        txn.put_file(key, &rec)
    }

    /// Indexes and reports files the publishing pool handed back; with
    /// `all`, waits until none is out.
    pub(super) fn collect(
        &mut self,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
        all: bool,
    ) -> Result<()> {
        loop {
            let Some(pool) = &mut self.pool else {
                return Ok(());
            };
            let got = match (pool.finished(), all) {
                (got, _) if !got.is_empty() => got,
                (_, true) => match pool.wait_one() {
                    Some(f) => f,
                    None => return Ok(()),
                },
                (_, false) => return Ok(()),
            };
            for Finished {
                id,
                mut job,
                report,
                result,
            } in got
            {
                let key = self.key(id);
                self.deferred_bytes -= std::mem::take(&mut job.budget);
                match result {
                    Ok(version) => {
                        self.record(id, &mut job, version, txn)?;
                        self.ctx.stats.note_reused(job.reused);
                        self.ctx.report(stats, report);
                    }
                    Err(why) => self.ctx.fail(stats, key, why),
                }
            }
        }
    }

    /// Gives up on file `id` for this pass; with `keep`, what it received
    /// so far is set aside for a later pass (large files only). Chunks it
    /// was to receive for other files are asked again by one of them.
    pub(super) fn drop_job(&mut self, id: u32, keep: bool) {
        let Some(job) = self.jobs.remove(&id).map(|j| *j) else {
            return;
        };
        self.deferred_bytes -= job.budget;
        let job = if keep {
            self.set_aside(id, job)
        } else {
            Some(job)
        };
        self.dropped.insert(id);
        let jobs = &self.jobs;
        for (heir, i) in self.sourcing.release(id, |w| jobs.contains_key(&w)) {
            if let Some(j) = self.jobs.get_mut(&heir) {
                j.asked.insert(i);
            }
            self.ctx.link.send(ServerMsg::NeedChunks {
                id: heir,
                ranges: vec![(i, 1)],
            });
        }
        drop(job);
        self.ctx.link.send(ServerMsg::Done { id });
    }

    /// Keeps a large file's staged file and written chunks as a partial
    /// (see [`crate::session::partial`]); gives the job back if it is not kept.
    fn set_aside(&self, id: u32, mut job: Job) -> Option<Job> {
        let Some(partials) = self.ctx.partials else {
            return Some(job);
        };
        if job.chunks.is_none() || job.tmp.is_none() {
            return Some(job);
        }
        if job.settle().is_err() {
            // A chunk marked written may not be: nothing is kept.
            return Some(job);
        }
        let tmp = job.tmp.take().expect("checked");
        let written = std::mem::take(&mut job.written);
        partials.keep(
            self.key(id),
            tmp,
            job.size,
            job.hash,
            written,
            self.ctx.pass_no,
        );
        None
    }

    /// At an interruption or a broken link: sets aside what large files
    /// received so far; the rest is removed.
    pub(super) fn set_aside_all(&mut self) {
        let jobs: Vec<(u32, Job)> = self.jobs.drain().map(|(id, j)| (id, *j)).collect();
        for (id, job) in jobs {
            let _ = self.set_aside(id, job);
        }
    }
}

/// Checks the staged file against the source's file id. Every chunk was
/// checked against its hash as it was written (sent by the client, copied
/// from the replica, a run of zeros, a repeat of an earlier chunk of the
/// file), so the file is its chunk list and the id follows from that list;
/// a resumed partial's earlier chunks are read back and checked again.
pub(super) fn verify(job: &mut Job, tmp: &dyn Staged) -> std::result::Result<(), Failure> {
    let chunks = job.chunks.as_deref().unwrap_or_default();
    let size: u64 = chunks.iter().map(|c| c.len as u64).sum();
    if file_id(chunks) != job.hash || size != job.size {
        return Err(Failure::Mismatch);
    }
    if job.reread
        && !check_chunks(Reader::new(tmp), chunks).map_err(|e| Failure::store("verify", e))?
    {
        return Err(Failure::Mismatch);
    }
    Ok(())
}

/// Stages a small file whose content waited in memory (see
/// `Job::deferred`).
pub(super) fn stage_body(
    store: &dyn Store,
    key: &str,
    body: &[u8],
) -> std::result::Result<Box<dyn Staged>, Failure> {
    let mut t = store
        .stage(key)
        .map_err(|e| Failure::store("create file", e))?;
    t.write_at(body, 0)
        .map_err(|e| Failure::store("write", e))?;
    Ok(t)
}

/// A file replaced under `key` and moved into the versions (`--versions`)
/// stays findable for dedup under its key there, with its old record.
fn index_versions(
    retired: Vec<(String, String)>,
    key: &str,
    old: Option<FileRecord>,
    txn: &mut IndexTxn,
) -> Result<()> {
    let Some(rec) = old else { return Ok(()) };
    for (k, vkey) in retired {
        if k == key {
            txn.put_file(&format!("{}{vkey}", crate::versions::INDEX_PREFIX), &rec)?;
        }
    }
    Ok(())
}
