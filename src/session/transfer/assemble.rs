//! Where each chunk of a file comes from: a partial kept from an earlier
//! pass, an earlier chunk of the same file, a chunk the client is already
//! sending for another file, the replica (copied in contiguous runs, every
//! chunk's hash checked before use), or else the client.

use super::behind::{Target, BEHIND_MIN};
use super::Transfer;
use crate::chunk::{offsets, ChunkRef, Hash};
use crate::error::Result;
use crate::index::{ChunkLoc, IndexTxn};
use crate::protocol::{PassStats, Reason, ServerMsg};
use crate::session::partial::RESUME_MIN;
use crate::session::pass::Failure;
use crate::store::{read_exact_at, Staged};
use std::collections::{HashMap, HashSet};

/// Longest run of replica bytes read at once.
const RUN_MAX: u64 = 16 << 20;
/// Largest new file whose staging is left to the publishing pool when
/// every chunk of it comes from the client. Its content waits in memory
/// until a worker writes it.
pub(super) const DEFER_MAX: u64 = 1 << 20;
/// Bytes of such files of more than one chunk held in memory at once, from
/// the decision until the pool hands the file back (their chunks may
/// arrive slowly, or interleaved with other files'). A file of one chunk
/// is not counted: it is handed over as soon as it arrives, and the pool's
/// batches are bounded in bytes.
pub(super) const DEFER_BUDGET: u64 = 4 << 20;

impl Transfer<'_, '_> {
    /// Builds the file from local content where possible and asks for the rest.
    pub(super) fn assemble(
        &mut self,
        id: u32,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let key = ctx.key(id);
        let (size, hash) = (self.jobs[&id].size, self.jobs[&id].hash);
        if let Err(no_room) = self.room.allot(ctx.store, size) {
            ctx.fail(stats, key, no_room.into());
            self.drop_job(id, false);
            return Ok(());
        }
        if self.defer_small(id, txn)? {
            return Ok(());
        }
        let n_chunks = self.jobs[&id].chunk_list().len();
        let (tmp, prewritten) = match self.staging(id, size, &hash, n_chunks) {
            Ok(x) => x,
            Err(e) => {
                ctx.fail(stats, key, Failure::store("create file", e));
                self.jobs.remove(&id);
                ctx.link.send(ServerMsg::Done { id });
                return Ok(());
            }
        };
        let job = self.jobs.get_mut(&id).expect("job exists");
        let chunks = job.chunk_list().to_vec();
        job.offs = offsets(&chunks);
        // Resumed: what an earlier pass wrote is read back and checked.
        job.reread = !prewritten.is_empty();
        if size >= BEHIND_MIN && self.behind.is_some() {
            job.behind = tmp.as_ref().and_then(|t| t.writer()).map(Target::new);
        }
        job.tmp = tmp;
        job.written = vec![false; chunks.len()];
        job.missing = chunks.len();
        let mut ask = self.source_chunks(id, &chunks, &prewritten, txn)?;
        ask.sort_unstable();
        let job = self.jobs.get_mut(&id).expect("job exists");
        job.asked = ask.iter().copied().collect();
        if job.tmp.is_none() {
            // Nothing is recorded (a dry run): count what would be sent.
            let would_send: u64 = ask.iter().map(|&i| chunks[i as usize].len as u64).sum();
            for &i in &ask {
                self.sourcing.cancel(&chunks[i as usize].hash);
            }
            job.received = would_send;
            stats.received += would_send;
            return self.publish(id, txn, stats);
        }
        if !ask.is_empty() {
            ctx.link.send(ServerMsg::NeedChunks {
                id,
                ranges: runs(&ask),
            });
        }
        if self.jobs[&id].missing == 0 {
            return self.publish(id, txn, stats);
        }
        Ok(())
    }

    /// A small new file none of whose chunks the replica holds or another
    /// file of the pass is fetching is asked for without staging anything:
    /// the publishing pool stages, writes and publishes it once its chunks
    /// arrived (true), which keeps file creation and writes off the
    /// session thread.
    fn defer_small(&mut self, id: u32, txn: &mut IndexTxn) -> Result<bool> {
        let job = &self.jobs[&id];
        let new = !job.fetch.has_old && job.fetch.reason != Reason::TypeChanged;
        let chunks = job.chunk_list();
        let budget = if chunks.len() > 1 { job.size } else { 0 };
        if !new
            || self.pool.is_none()
            || chunks.is_empty()
            || job.size > DEFER_MAX
            || self.deferred_bytes + budget > DEFER_BUDGET
        {
            return Ok(false);
        }
        // A hint naming this very path is stale: a new file has no
        // replica file there (the replica was emptied behind our back).
        let key = self.ctx.key(id);
        let mut seen = HashSet::with_capacity(chunks.len());
        for c in chunks {
            if is_zero_chunk(c)
                || !seen.insert(c.hash)
                || self.sourcing.is_asked(&c.hash)
                || txn
                    .find_chunk(&c.hash)?
                    .is_some_and(|l| l.len == c.len && l.path != key)
            {
                return Ok(false);
            }
        }
        let chunks = chunks.to_vec();
        for (i, c) in chunks.iter().enumerate() {
            self.sourcing.need(c.hash, (id, i as u32));
        }
        self.deferred_bytes += budget;
        let n = chunks.len();
        let job = self.jobs.get_mut(&id).expect("job exists");
        job.deferred = true;
        job.budget = budget;
        job.offs = offsets(&chunks);
        job.written = vec![false; n];
        job.missing = n;
        job.asked = (0..n as u32).collect();
        self.ctx.link.send(ServerMsg::NeedChunks {
            id,
            ranges: vec![(0, n as u32)],
        });
        Ok(true)
    }

    /// The staged file for job `id`: a partial kept for this very content,
    /// or a new one (none when content is not pulled); plus which of its
    /// chunks are already written.
    #[allow(clippy::type_complexity)]
    fn staging(
        &mut self,
        id: u32,
        size: u64,
        hash: &Hash,
        chunks: usize,
    ) -> std::io::Result<(Option<Box<dyn Staged>>, Vec<bool>)> {
        if !self.pull {
            return Ok((None, Vec::new()));
        }
        let key = self.ctx.key(id);
        let resumed = match self.ctx.partials {
            Some(p) if size >= RESUME_MIN => p.take(self.ctx.store, key, size, hash, chunks),
            _ => None,
        };
        match resumed {
            Some((t, written)) => Ok((Some(t), written)),
            None => Ok((Some(self.ctx.store.stage(key)?), Vec::new())),
        }
    }

    /// Decides where each chunk comes from, copies what the replica holds,
    /// and returns the chunks to ask the client for.
    fn source_chunks(
        &mut self,
        id: u32,
        chunks: &[ChunkRef],
        prewritten: &[bool],
        txn: &mut IndexTxn,
    ) -> Result<Vec<u32>> {
        let job = self.jobs.get_mut(&id).expect("job exists");
        let mut ask: Vec<u32> = Vec::new();
        let mut local: Vec<(u32, ChunkLoc)> = Vec::new();
        let mut repeats: Vec<(u32, u32)> = Vec::new();
        let mut first_local: HashMap<Hash, u32> = HashMap::new();
        for (i, done) in prewritten.iter().enumerate() {
            if *done {
                let c = chunks[i];
                job.written[i] = true;
                job.missing -= 1;
                job.reused += c.len as u64;
                first_local.entry(c.hash).or_insert(i as u32);
            }
        }
        let mut zeros: Vec<u32> = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            if prewritten.get(i).copied().unwrap_or(false) {
                continue;
            }
            let i = i as u32;
            if is_zero_chunk(c) {
                // A hole of a sparse file: never asked, left a hole.
                zeros.push(i);
            } else if let Some(&first) = first_local.get(&c.hash) {
                repeats.push((first, i));
            } else if self.sourcing.is_asked(&c.hash) {
                self.sourcing.need(c.hash, (id, i));
            } else if let Some(loc) = txn.find_chunk(&c.hash)?.filter(|l| l.len == c.len) {
                first_local.insert(c.hash, i);
                local.push((i, loc));
            } else if self.sourcing.need(c.hash, (id, i)) {
                ask.push(i);
            }
        }
        for i in zeros {
            if !self.fill_zeros(id, i) && self.sourcing.need(chunks[i as usize].hash, (id, i)) {
                ask.push(i);
            }
        }
        let failed = self.copy_local_runs(id, chunks, &local);
        let failed_set: HashSet<u32> = failed.iter().copied().collect();
        // Repeats copy their first occurrence; anything that failed is asked for.
        for (first, i) in repeats {
            if (failed_set.contains(&first) || !self.copy_within(id, first, i))
                && self.sourcing.need(chunks[i as usize].hash, (id, i))
            {
                ask.push(i);
            }
        }
        for i in failed {
            if self.sourcing.need(chunks[i as usize].hash, (id, i)) {
                ask.push(i);
            }
        }
        Ok(ask)
    }

    /// Copies chunks found in the replica into file `id`'s staged file,
    /// reading contiguous runs at once and checking every chunk's hash (in
    /// parallel) before use. Returns the chunks that could not be used.
    fn copy_local_runs(
        &mut self,
        id: u32,
        chunks: &[ChunkRef],
        local: &[(u32, ChunkLoc)],
    ) -> Vec<u32> {
        if local.len() > 16 {
            // Copying can take a while: let queued requests go out first.
            self.ctx.link.flush();
        }
        let mut failed = Vec::new();
        let mut start = 0;
        while start < local.len() {
            let end = run_end(local, start);
            let run = &local[start..end];
            start = end;
            let len: u64 = run.iter().map(|(_, l)| l.len as u64).sum();
            if self.jobs[&id].tmp.is_none() {
                let job = self.jobs.get_mut(&id).expect("job exists");
                job.missing -= run.len();
                job.reused += len;
                continue;
            }
            let mut buf = vec![0u8; len as usize];
            if !self.read_replica(&run[0].1.path, &mut buf, run[0].1.offset) {
                failed.extend(run.iter().map(|(i, _)| *i));
                continue;
            }
            self.write_run(id, chunks, run, buf, &mut failed);
        }
        failed
    }

    /// Writes a run read from the replica: whole if every chunk checks out,
    /// else chunk by chunk (the bad ones go to `failed`).
    fn write_run(
        &mut self,
        id: u32,
        chunks: &[ChunkRef],
        run: &[(u32, ChunkLoc)],
        buf: Vec<u8>,
        failed: &mut Vec<u32>,
    ) {
        let mut at = 0usize;
        let pieces: Vec<(u32, usize, usize)> = run
            .iter()
            .map(|(i, l)| {
                let p = (*i, at, l.len as usize);
                at += l.len as usize;
                p
            })
            .collect();
        let good: Vec<bool> = {
            use rayon::prelude::*;
            pieces
                .par_iter()
                .map(|&(i, o, l)| Hash::of(&buf[o..o + l]) == chunks[i as usize].hash)
                .collect()
        };
        let job = self.jobs.get_mut(&id).expect("job exists");
        let w = self.behind.as_ref();
        if good.iter().all(|g| *g) {
            let len = buf.len() as u64;
            if job.put_owned(buf, job.offs[run[0].0 as usize], w).is_err() {
                failed.extend(run.iter().map(|(i, _)| *i));
                return;
            }
            for &(i, _, _) in &pieces {
                job.note_written(i);
            }
            job.missing -= run.len();
            job.reused += len;
            return;
        }
        for (&(i, o, l), ok) in pieces.iter().zip(good) {
            if ok && job.put(&buf[o..o + l], job.offs[i as usize], w).is_ok() {
                job.written[i as usize] = true;
                job.missing -= 1;
                job.reused += l as u64;
            } else {
                failed.push(i);
            }
        }
    }

    /// Writes chunk `i` of file `id` as zeros (a hole, where the store
    /// keeps holes).
    fn fill_zeros(&mut self, id: u32, i: u32) -> bool {
        let job = self.jobs.get_mut(&id).expect("job exists");
        let len = (job.offs[i as usize + 1] - job.offs[i as usize]) as usize;
        if job.tmp.is_none() {
            job.missing -= 1;
            return true;
        }
        let buf = vec![0u8; len];
        if job
            .put_owned(buf, job.offs[i as usize], self.behind.as_ref())
            .is_err()
        {
            return false;
        }
        job.note_written(i);
        job.missing -= 1;
        job.reused += len as u64;
        true
    }

    /// Copies chunk `from` of file `id` to its chunk `to` (same content).
    fn copy_within(&mut self, id: u32, from: u32, to: u32) -> bool {
        let job = self.jobs.get_mut(&id).expect("job exists");
        let Some(t) = job.tmp.as_ref() else {
            job.missing -= 1;
            return true;
        };
        let len = (job.offs[to as usize + 1] - job.offs[to as usize]) as usize;
        let mut buf = vec![0u8; len];
        // What was written behind is read back only once it is in place.
        if job.settle().is_err() || read_exact_at(&**t, &mut buf, job.offs[from as usize]).is_err()
        {
            return false;
        }
        let at = job.offs[to as usize];
        if job.put_owned(buf, at, self.behind.as_ref()).is_err() {
            return false;
        }
        job.note_written(to);
        job.missing -= 1;
        job.reused += len as u64;
        true
    }

    /// Reads replica file `key` at `offset` (the last file opened stays open).
    pub(super) fn read_replica(&mut self, key: &str, buf: &mut [u8], offset: u64) -> bool {
        if self.reader.as_ref().is_none_or(|(k, _)| k != key) {
            match self.ctx.store.open(key) {
                Ok(f) => self.reader = Some((key.to_string(), f)),
                Err(_) => return false,
            }
        }
        let (_, f) = self.reader.as_ref().expect("just opened");
        read_exact_at(&**f, buf, offset).is_ok()
    }
}

/// The end of the run of local chunks starting at `start`: consecutive
/// chunks, contiguous in one replica file, at most [`RUN_MAX`] bytes.
fn run_end(local: &[(u32, ChunkLoc)], start: usize) -> usize {
    let mut end = start + 1;
    let mut len = local[start].1.len as u64;
    while end < local.len() {
        let (pi, pl) = &local[end - 1];
        let (ni, nl) = &local[end];
        let contiguous =
            *ni == pi + 1 && nl.path == pl.path && nl.offset == pl.offset + pl.len as u64;
        if !contiguous || len + nl.len as u64 > RUN_MAX {
            break;
        }
        len += nl.len as u64;
        end += 1;
    }
    end
}

/// Sorted indexes -> (first, count) runs.
fn runs(idx: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &i in idx {
        match out.last_mut() {
            Some((s, n)) if *s + *n == i => *n += 1,
            _ => out.push((i, 1)),
        }
    }
    out
}

/// Whether a chunk is all zeros. Zero runs are cut into chunks of the
/// largest size (the chunker never finds a cut point in them), so only
/// those are checked: one hash, computed once.
fn is_zero_chunk(c: &ChunkRef) -> bool {
    static ZEROS: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    c.len == crate::chunk::MAX_CHUNK
        && c.hash == *ZEROS.get_or_init(|| Hash::of(&vec![0u8; crate::chunk::MAX_CHUNK as usize]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_compress_consecutive_indexes() {
        assert_eq!(runs(&[0, 1, 2, 5, 7, 8]), vec![(0, 3), (5, 1), (7, 2)]);
        assert!(runs(&[]).is_empty());
    }
}
