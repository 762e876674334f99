//! The client's answers about files in flight: summaries, group lists,
//! chunk lists and chunks (whole, in runs, or as deltas), each checked
//! against what was asked before it is used.

use super::bases::Waiting;
use super::basis::{prepare, Prepared};
use super::{proto, Transfer};
use crate::chunk::{group_hash, ChunkRef, GroupRef, Hash, MAX_CHUNK, MIN_CHUNK};
use crate::error::Result;
use crate::index::IndexTxn;
use crate::protocol::{PassStats, ServerMsg};
use crate::session::pass::Failure;

impl Transfer<'_, '_> {
    pub(super) fn on_summary(
        &mut self,
        id: u32,
        size: u64,
        hash: Hash,
        chunks: Option<Vec<ChunkRef>>,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let job = self.job(id)?;
        if job.summarized {
            return Err(proto(self.ctx, format!("second summary for file {id}")));
        }
        job.summarized = true;
        job.size = size;
        job.hash = hash;
        let has_old = job.fetch.has_old;
        let chunks = chunks.map(|c| one_chunk_implied(c, size, hash));
        if let Some(c) = &chunks {
            check_chunk_list(c, size).map_err(|e| proto(self.ctx, e))?;
        }
        if has_old && self.old_content_matches(id, &hash, txn) {
            return self.finish_metadata_only(id, txn, stats);
        }
        if self.try_move(id, &hash, txn, stats)? || self.try_copy(id, &hash, txn, stats)? {
            return Ok(());
        }
        // Only now that the content is known to differ is a basis worth
        // its hashes (an unpacked crate's unchanged files have new mtimes).
        let next = match chunks {
            Some(c) => Waiting::Assemble(c),
            None => Waiting::AskGroups,
        };
        let task = if self.pull {
            self.choose_basis(id, has_old)
        } else {
            None
        };
        let Some(task) = task else {
            return self.go_on(id, next, txn, stats);
        };
        match &mut self.bases {
            Some(bases) => {
                if bases.submit(task) {
                    self.job(id)?.waiting = Some(next);
                    return Ok(());
                }
                self.go_on(id, next, txn, stats)
            }
            None => {
                // No worker (not expected while content is pulled over a
                // socket): prepared here.
                let basis = prepare(self.ctx.store, &task);
                self.basis_ready(id, task.key, basis);
                self.go_on(id, next, txn, stats)
            }
        }
    }

    /// Sends the basis of file `id` (if it could be read) and keeps its pieces.
    fn basis_ready(&mut self, id: u32, key: String, basis: Option<Prepared>) {
        let Some(Prepared {
            avg,
            hashes,
            places,
        }) = basis
        else {
            return;
        };
        self.ctx.link.send(ServerMsg::Basis { id, avg, hashes });
        if let Some(job) = self.jobs.get_mut(&id) {
            job.basis = Some((key, places));
        }
    }

    /// The next step of file `id` once its basis, if any, was sent: its
    /// requests follow the `Basis` message.
    fn go_on(
        &mut self,
        id: u32,
        next: Waiting,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        match next {
            Waiting::Assemble(c) => {
                self.job(id)?.chunks = Some(c);
                self.assemble(id, txn, stats)
            }
            Waiting::AskGroups => {
                self.ctx.link.send(ServerMsg::NeedGroupHashes { id });
                Ok(())
            }
        }
    }

    /// Goes on with the files whose bases are ready (with `wait`, waits
    /// for one first).
    pub(super) fn take_bases(
        &mut self,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
        wait: bool,
    ) -> Result<()> {
        let Some(bases) = &mut self.bases else {
            return Ok(());
        };
        let mut ready = if wait {
            bases.wait_one().into_iter().collect()
        } else {
            Vec::new()
        };
        ready.extend(bases.ready());
        for r in ready {
            // A file given up on meanwhile has no job left.
            let Some(next) = self.jobs.get_mut(&r.id).and_then(|j| j.waiting.take()) else {
                continue;
            };
            self.basis_ready(r.id, r.key, r.basis);
            self.go_on(r.id, next, txn, stats)?;
        }
        Ok(())
    }

    pub(super) fn on_group_hashes(
        &mut self,
        id: u32,
        start: u32,
        total: u32,
        groups: Vec<GroupRef>,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let job = self.job(id)?;
        let max_groups = job.size / MIN_CHUNK as u64 + 1;
        if start as usize != job.groups.len()
            || total as u64 > max_groups
            || job.groups.len() + groups.len() > total as usize
        {
            return Err(proto(ctx, format!("inconsistent group list for file {id}")));
        }
        job.groups.extend(groups);
        if job.groups.len() < total as usize {
            return Ok(());
        }
        let mut resolved = Vec::with_capacity(job.groups.len());
        let mut need = Vec::new();
        for (i, g) in job.groups.iter().enumerate() {
            match txn.find_group(&g.hash)? {
                Some(c) if c.len() == g.count as usize => resolved.push(Some(c)),
                _ => {
                    resolved.push(None);
                    need.push(i as u32);
                }
            }
        }
        job.groups_missing = need.len();
        job.group_chunks = resolved;
        if need.is_empty() {
            return self.groups_done(id, txn, stats);
        }
        for page in need.chunks(4096) {
            ctx.link.send(ServerMsg::NeedGroups {
                id,
                groups: page.to_vec(),
            });
        }
        Ok(())
    }

    pub(super) fn on_group_chunks(
        &mut self,
        id: u32,
        group: u32,
        chunks: Vec<ChunkRef>,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let job = self.job(id)?;
        let Some(g) = job.groups.get(group as usize).copied() else {
            return Err(proto(
                ctx,
                format!("group {group} out of range for file {id}"),
            ));
        };
        if job.group_chunks.len() != job.groups.len() {
            return Err(proto(
                ctx,
                format!("group chunks for file {id} before its group list"),
            ));
        }
        if job.group_chunks[group as usize].is_some()
            || g.count as usize != chunks.len()
            || group_hash(&chunks) != g.hash
        {
            return Err(proto(
                ctx,
                format!("group {group} of file {id} does not match its hash"),
            ));
        }
        job.group_chunks[group as usize] = Some(chunks);
        job.groups_missing -= 1;
        if job.groups_missing == 0 {
            return self.groups_done(id, txn, stats);
        }
        Ok(())
    }

    fn groups_done(&mut self, id: u32, txn: &mut IndexTxn, stats: &mut PassStats) -> Result<()> {
        let ctx = self.ctx;
        let job = self.job(id)?;
        let chunks: Vec<ChunkRef> = job.group_chunks.drain(..).flatten().flatten().collect();
        check_chunk_list(&chunks, job.size).map_err(|e| proto(ctx, e))?;
        job.chunks = Some(chunks);
        self.assemble(id, txn, stats)
    }

    pub(super) fn on_chunk(
        &mut self,
        id: u32,
        index: u32,
        data: Vec<u8>,
        sent: u64,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let job = self.job(id)?;
        let Some(c) = job
            .chunks
            .as_ref()
            .and_then(|c| c.get(index as usize))
            .copied()
        else {
            return Err(proto(
                ctx,
                format!("chunk {index} of file {id} was not asked for"),
            ));
        };
        if data.len() != c.len as usize {
            return Err(proto(
                ctx,
                format!("chunk {index} of file {id} is not of its announced length"),
            ));
        }
        let good = Hash::of(&data) == c.hash;
        self.accept_chunk(id, index, &data, (good, sent), txn, stats)
    }

    /// A run of consecutive chunks: cut at the chunk list's lengths, hashed
    /// in parallel, then taken one by one.
    pub(super) fn on_chunks(
        &mut self,
        id: u32,
        first: u32,
        data: Vec<u8>,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let job = self.job(id)?;
        let Some(chunks) = job.chunks.as_ref() else {
            return Err(proto(
                ctx,
                format!("chunks of file {id} before its chunk list"),
            ));
        };
        let pieces = cut_run(chunks, first, data.len())
            .map_err(|e| proto(ctx, format!("{e} of file {id}")))?;
        let check =
            |&(i, a, b): &(u32, usize, usize)| Hash::of(&data[a..b]) == chunks[i as usize].hash;
        let good: Vec<bool> = if data.len() >= 256 * 1024 {
            use rayon::prelude::*;
            pieces.par_iter().map(check).collect()
        } else {
            pieces.iter().map(check).collect()
        };
        if good.iter().all(|g| *g) && self.own_run(id, &pieces) {
            return self.accept_run(id, first, data, pieces.len() as u32, txn, stats);
        }
        for ((i, a, b), ok) in pieces.into_iter().zip(good) {
            if !self.jobs.contains_key(&id) {
                break; // refused on an earlier chunk of the run
            }
            self.accept_chunk(id, i, &data[a..b], (ok, (b - a) as u64), txn, stats)?;
        }
        Ok(())
    }

    /// Whether a run of chunks (all checked good) goes to file `id` alone:
    /// every chunk asked by it, none awaited elsewhere, its staging open.
    fn own_run(&self, id: u32, pieces: &[(u32, usize, usize)]) -> bool {
        let Some(job) = self.jobs.get(&id) else {
            return false;
        };
        let chunks = job.chunk_list();
        (job.tmp.is_some() || job.deferred)
            && pieces.iter().all(|&(i, _, _)| {
                job.asked.contains(&i) && !self.sourcing.is_awaited(&chunks[i as usize].hash)
            })
    }

    /// Takes `count` consecutive chunks from `first` (all checked good, all
    /// for file `id` alone: [`Self::own_run`]) with one write: a big file
    /// arrives in runs of a megabyte, not in 64 writes of 16 KiB.
    fn accept_run(
        &mut self,
        id: u32,
        first: u32,
        data: Vec<u8>,
        count: u32,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let job = self.jobs.get_mut(&id).expect("checked by own_run");
        let at = job.offs[first as usize];
        let sent = data.len() as u64;
        if let Err(e) = job.put_owned(data, at, self.behind.as_ref()) {
            ctx.fail(stats, ctx.key(id), Failure::store("write", e));
            self.drop_job(id, false);
            return Ok(());
        }
        for i in first..first + count {
            job.asked.remove(&i);
            job.note_written(i);
            self.sourcing.arrived(&job.chunk_list()[i as usize].hash);
        }
        job.received += sent;
        job.missing -= count as usize;
        stats.received += sent;
        ctx.stats.note_received(sent);
        if job.missing == 0 {
            self.publish(id, txn, stats)?;
        }
        Ok(())
    }

    /// Rebuilds a chunk sent as a delta; asks for it whole if that fails.
    pub(super) fn on_chunk_delta(
        &mut self,
        id: u32,
        index: u32,
        ops: Vec<crate::delta::DeltaOp>,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let job = self.job_asking(id, index, "a delta")?;
        let c = job.chunk_list()[index as usize];
        let (basis_key, places) = job.basis.clone().unwrap_or_default();
        let fine = job.fine.remove(&index).unwrap_or_default();
        let literal = crate::delta::literal_bytes(&ops);
        let rebuilt =
            crate::delta::apply_delta(&ops, c.len as usize, (&places, &fine), |off, len| {
                let mut buf = vec![0u8; len];
                self.read_replica(&basis_key, &mut buf, off).then_some(buf)
            });
        match rebuilt {
            Ok(data) if data.len() == c.len as usize && Hash::of(&data) == c.hash => {
                self.on_chunk(id, index, data, literal, txn, stats)
            }
            _ => {
                let second = ops
                    .iter()
                    .any(|o| matches!(o, crate::delta::DeltaOp::Fine { .. }));
                if let Some(j) = self.jobs.get_mut(&id) {
                    if second {
                        // A short fine hash named a wrong piece: ask again,
                        // without a second round for this chunk.
                        j.no_fine.insert(index);
                    } else {
                        // A truncated-hash collision or a changed old
                        // version: ask for it whole.
                        j.basis = None;
                    }
                }
                if !second {
                    ctx.link.send(ServerMsg::Basis {
                        id,
                        avg: crate::delta::AVG_MIN,
                        hashes: Vec::new(),
                    });
                }
                ctx.link.send(ServerMsg::NeedChunks {
                    id,
                    ranges: vec![(index, 1)],
                });
                Ok(())
            }
        }
    }

    /// Takes chunk `index` of file `id` (its length checked; `good`: its
    /// hash matched; `sent`: bytes it cost on the wire) and writes it
    /// wherever it is awaited.
    fn accept_chunk(
        &mut self,
        id: u32,
        index: u32,
        data: &[u8],
        (good, sent): (bool, u64),
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let job = self.job(id)?;
        if !job.asked.remove(&index) {
            return Err(proto(
                ctx,
                format!("chunk {index} of file {id} was not asked for"),
            ));
        }
        let c = job.chunk_list()[index as usize];
        if !good {
            // The client does not hash what it sends a second time: a source
            // file rewritten in place during the pass shows up here. Nothing
            // is published; the next pass sends the file again.
            ctx.fail(stats, ctx.key(id), Failure::ChangedInFlight { index });
            self.drop_job(id, false);
            return Ok(());
        }
        let mut places = vec![(id, index)];
        places.extend(self.sourcing.arrived(&c.hash));
        let mut done = Vec::new();
        for (n, (jid, ji)) in places.into_iter().enumerate() {
            let Some(job) = self.jobs.get_mut(&jid) else {
                continue;
            };
            let at = job.offs[ji as usize];
            if job.tmp.is_none() && !job.deferred {
                continue;
            }
            // A deferred file's chunks wait in its body for the pool.
            if let Err(e) = job.put(data, at, self.behind.as_ref()) {
                ctx.fail(stats, ctx.key(jid), Failure::store("write", e));
                self.drop_job(jid, false);
                continue;
            }
            job.note_written(ji);
            if n == 0 {
                let sent = sent.min(data.len() as u64);
                job.received += sent;
                job.reused += data.len() as u64 - sent;
                stats.received += sent;
                ctx.stats.note_received(sent);
            } else {
                job.reused += data.len() as u64;
            }
            job.missing -= 1;
            if job.missing == 0 {
                done.push(jid);
            }
        }
        for jid in done {
            self.publish(jid, txn, stats)?;
        }
        Ok(())
    }
}

/// Cuts `len` bytes of consecutive chunks from chunk `first` into
/// (index, start, end) pieces, or says why they do not fit the chunk list.
fn cut_run(
    chunks: &[ChunkRef],
    first: u32,
    len: usize,
) -> std::result::Result<Vec<(u32, usize, usize)>, String> {
    let mut pieces = Vec::new();
    let (mut at, mut i) = (0usize, first as usize);
    while at < len {
        let Some(c) = chunks.get(i) else {
            return Err("chunks beyond the end".into());
        };
        let end = at + c.len as usize;
        if end > len {
            return Err(format!("a run of chunks ends inside chunk {i}"));
        }
        pieces.push((i as u32, at, end));
        (at, i) = (end, i + 1);
    }
    if pieces.is_empty() {
        return Err("an empty run of chunks".into());
    }
    Ok(pieces)
}

/// An empty inline chunk list for a non-empty file means one chunk: the
/// whole file (its hash is the file's). Longer than a chunk can be, it
/// stays empty and fails the check.
fn one_chunk_implied(chunks: Vec<ChunkRef>, size: u64, hash: Hash) -> Vec<ChunkRef> {
    if chunks.is_empty() && size > 0 && size <= MAX_CHUNK as u64 {
        vec![ChunkRef {
            hash,
            len: size as u32,
        }]
    } else {
        chunks
    }
}

/// Checks a peer's chunk list against the file size and the chunker bounds.
fn check_chunk_list(chunks: &[ChunkRef], size: u64) -> std::result::Result<(), String> {
    let mut total = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        if c.len == 0 || c.len > MAX_CHUNK || (!last && c.len < MIN_CHUNK) {
            return Err(format!("chunk {i} has an impossible length {}", c.len));
        }
        total += c.len as u64;
    }
    if total != size {
        return Err(format!("chunks add up to {total} bytes, not {size}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(len: u32) -> ChunkRef {
        ChunkRef {
            hash: Hash([0; 32]),
            len,
        }
    }

    #[test]
    fn chunk_lists_are_checked() {
        assert!(check_chunk_list(&[c(MIN_CHUNK), c(10)], MIN_CHUNK as u64 + 10).is_ok());
        assert!(check_chunk_list(&[c(10), c(MIN_CHUNK)], MIN_CHUNK as u64 + 10).is_err());
        assert!(check_chunk_list(&[c(MAX_CHUNK + 1)], MAX_CHUNK as u64 + 1).is_err());
        assert!(check_chunk_list(&[c(5)], 6).is_err());
        assert!(check_chunk_list(&[], 0).is_ok());
    }

    #[test]
    fn an_empty_list_is_one_chunk_of_the_whole_file() {
        let h = Hash([7; 32]);
        let one = one_chunk_implied(Vec::new(), 100, h);
        assert_eq!(one, vec![ChunkRef { hash: h, len: 100 }]);
        assert!(check_chunk_list(&one, 100).is_ok());
        assert!(one_chunk_implied(Vec::new(), 0, h).is_empty());
        let too_big = MAX_CHUNK as u64 + 1;
        assert!(check_chunk_list(&one_chunk_implied(Vec::new(), too_big, h), too_big).is_err());
        assert_eq!(one_chunk_implied(vec![c(5)], 5, h), vec![c(5)]);
    }

    #[test]
    fn runs_of_chunks_are_cut_at_the_list() {
        let list = [c(3), c(4), c(5)];
        assert_eq!(cut_run(&list, 1, 9).unwrap(), vec![(1, 0, 4), (2, 4, 9)]);
        assert!(cut_run(&list, 1, 5).is_err());
        assert!(cut_run(&list, 2, 6).is_err());
        assert!(cut_run(&list, 0, 0).is_err());
    }
}
