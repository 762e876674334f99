//! The client's answers to the server's requests: digests of the files it
//! asks for, group lists, chunk lists, and chunk bytes (whole, in runs, or
//! as deltas against a basis the server offered).

use super::digest::{read_digest_or_step_aside, read_vec_at, DigestResult, StepAside};
use super::{ClientPass, Open, PassState, PREEMPT_AFTER, PREEMPT_MIN, RUN_BYTES, SOURCE_INDEX_MIN};
use crate::chunk::{groups, INLINE_CHUNKS};
use crate::error::{describe_io, Error, Result};
use crate::index::SourceWriter;
use crate::protocol::{ClientMsg, GROUPS_PER_MSG};
use crate::tree::{Kind, Version};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl ClientPass<'_> {
    pub(super) fn answer_need_files(
        &self,
        ids: &[u32],
        checksum: bool,
        state: &mut PassState,
        writer: Option<&SourceWriter>,
    ) -> Result<()> {
        let m = &self.scan.manifest;
        let held: HashSet<String> = self
            .hold
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let (skipped, ids): (Vec<u32>, Vec<u32>) = ids
            .iter()
            .partition(|&&id| !held.is_empty() && held.contains(&m.key(id as usize)));
        for id in skipped {
            self.send(ClientMsg::Skip { id })?;
        }
        let results: Vec<(u32, DigestResult)> = ids
            .par_iter()
            .map(|&id| (id, self.digest_of(id, checksum)))
            .collect();
        let mut records = Vec::new();
        for (id, r) in results {
            match r {
                Ok(None) => {
                    // Stepped aside for newer changes: sent by a later pass.
                    self.send(ClientMsg::Skip { id })?;
                    state.preempted.push(m.key(id as usize));
                }
                Ok(Some((digest, record, data))) => {
                    if let Some(rec) =
                        record.filter(|r| writer.is_some() && r.size >= SOURCE_INDEX_MIN)
                    {
                        records.push((m.key(id as usize), rec));
                    }
                    // A one-chunk file's chunk is the file itself: an empty
                    // list says so (36 bytes less per small file).
                    let chunks = match digest.chunks.len() {
                        1 => Some(Vec::new()),
                        n => (n <= INLINE_CHUNKS).then(|| digest.chunks.clone()),
                    };
                    self.send(ClientMsg::Summary {
                        id,
                        size: digest.size,
                        hash: digest.hash,
                        chunks,
                    })?;
                    let o = Open {
                        digest,
                        group_starts: None,
                        file: None,
                        data,
                        offs: None,
                        first_ask: None,
                    };
                    state.open.insert(id, o);
                }
                Err(reason) => {
                    let key = m.key(id as usize);
                    self.send(ClientMsg::FileFailed {
                        id,
                        reason: format!("cannot read {key}: {reason}"),
                    })?;
                }
            }
        }
        if let (Some(w), false) = (writer, records.is_empty()) {
            w.push(records);
        }
        Ok(())
    }

    /// File `id`'s digest: from the source index if it is unchanged, else read.
    fn digest_of(&self, id: u32, checksum: bool) -> DigestResult {
        let m = &self.scan.manifest;
        let i = id as usize;
        let Some(Kind::File { size }) = m.entries.get(i).map(|e| &e.kind) else {
            return Err("not a regular file in the manifest".to_string());
        };
        let cached = (!checksum && *size >= SOURCE_INDEX_MIN)
            .then(|| {
                self.index.and_then(|x| {
                    let version = Version(self.scan.local[i].ino);
                    x.lookup(&m.key(i), *size, m.entries[i].mtime, version)
                })
            })
            .flatten();
        if let Some(d) = cached {
            return Ok(Some((d, None, None)));
        }
        let aside = self.preempt.map(|waiting| StepAside {
            waiting,
            saved: self.saved_digests,
        });
        read_digest_or_step_aside(&self.root.join(m.rel_path(i)), &m.key(i), aside)
    }

    pub(super) fn answer_group_hashes(&self, id: u32, open: &mut HashMap<u32, Open>) -> Result<()> {
        let Some(o) = open.get_mut(&id) else {
            return self.send(ClientMsg::FileFailed {
                id,
                reason: "no longer available".into(),
            });
        };
        let gs = groups(&o.digest.chunks);
        let mut starts = Vec::with_capacity(gs.len());
        let mut at = 0usize;
        for g in &gs {
            starts.push(at);
            at += g.count as usize;
        }
        o.group_starts = Some(starts);
        let total = gs.len() as u32;
        for (n, page) in gs.chunks(GROUPS_PER_MSG).enumerate() {
            let start = (n * GROUPS_PER_MSG) as u32;
            self.send(ClientMsg::GroupHashes {
                id,
                start,
                total,
                groups: page.to_vec(),
            })?;
        }
        if gs.is_empty() {
            self.send(ClientMsg::GroupHashes {
                id,
                start: 0,
                total: 0,
                groups: Vec::new(),
            })?;
        }
        Ok(())
    }

    pub(super) fn answer_groups(
        &self,
        id: u32,
        wanted: &[u32],
        open: &mut HashMap<u32, Open>,
    ) -> Result<()> {
        let Some(o) = open.get(&id) else {
            return self.send(ClientMsg::FileFailed {
                id,
                reason: "no longer available".into(),
            });
        };
        let Some(starts) = &o.group_starts else {
            return Err(Error::protocol(
                &self.link.peer,
                "groups asked before the group list",
            ));
        };
        for &g in wanted {
            let g = g as usize;
            let Some(&a) = starts.get(g) else {
                return Err(Error::protocol(
                    &self.link.peer,
                    format!("group {g} out of range"),
                ));
            };
            let b = starts.get(g + 1).copied().unwrap_or(o.digest.chunks.len());
            self.send(ClientMsg::GroupChunks {
                id,
                group: g as u32,
                chunks: o.digest.chunks[a..b].to_vec(),
            })?;
        }
        Ok(())
    }

    /// Sends the asked chunks; false if the file changed since its digest.
    pub(super) fn answer_chunks(
        &self,
        id: u32,
        ranges: &[(u32, u32)],
        state: &mut PassState,
    ) -> Result<bool> {
        let Some(o) = state.open.get_mut(&id) else {
            self.send(ClientMsg::FileFailed {
                id,
                reason: "no longer available".into(),
            })?;
            return Ok(false);
        };
        // Only errors and stepping aside name the file: its key is built then.
        let key = || self.scan.manifest.key(id as usize);
        if o.file.is_none() && o.data.is_none() {
            match std::fs::File::open(self.root.join(self.scan.manifest.rel_path(id as usize))) {
                Ok(f) => o.file = Some(f),
                Err(e) => {
                    self.send(ClientMsg::FileFailed {
                        id,
                        reason: format!("cannot read {}: {}", key(), describe_io(&e)),
                    })?;
                    return Ok(true);
                }
            }
        }
        let first_ask = *o.first_ask.get_or_insert_with(Instant::now);
        let may_step_aside = self.preempt.filter(|_| o.digest.size >= PREEMPT_MIN);
        let step_aside = || {
            may_step_aside.is_some_and(|p| p.load(Ordering::Relaxed))
                && first_ask.elapsed() >= PREEMPT_AFTER
        };
        let basis = state.bases.get(&id);
        let second = &mut state.second;
        let offs = o.offs.take().unwrap_or_else(|| o.digest.offsets());
        for &(start, count) in ranges {
            let end = start.saturating_add(count);
            if end as usize > o.digest.chunks.len() {
                return Err(Error::protocol(
                    &self.link.peer,
                    format!("chunks {start}..{end} of {} out of range", key()),
                ));
            }
            let mut i = start;
            while i < end {
                if step_aside() {
                    self.send(ClientMsg::Skip { id })?;
                    state.open.remove(&id);
                    state.preempted.push(key());
                    return Ok(true);
                }
                // Without a basis, consecutive chunks travel together (up to
                // RUN_BYTES); with one, each chunk may become a delta.
                let mut j = i + 1;
                if basis.is_none() {
                    while j < end && offs[j as usize + 1] - offs[i as usize] <= RUN_BYTES {
                        j += 1;
                    }
                }
                let (at, len) = (offs[i as usize], offs[j as usize] - offs[i as usize]);
                let Some(data) = chunk_bytes(o, at, len) else {
                    self.send(ClientMsg::FileFailed {
                        id,
                        reason: format!(
                            "{} changed while being sent; it will be sent again",
                            key()
                        ),
                    })?;
                    state.open.remove(&id);
                    return Ok(false);
                };
                self.send_chunks(id, (i, j), data, basis.map(|b| (b, &mut *second)))?;
                i = j;
            }
        }
        o.offs = Some(offs);
        Ok(true)
    }

    /// Sends chunks `i..j` of file `id` (their bytes in `data`), as one
    /// chunk, a run, or a delta against the basis.
    fn send_chunks(
        &self,
        id: u32,
        (i, j): (u32, u32),
        data: Vec<u8>,
        basis: Option<(&crate::delta::BasisMap, &mut super::second::SecondRound)>,
    ) -> Result<()> {
        let len = data.len() as u64;
        if let Some((b, second)) = basis {
            if let Some(ops) = crate::delta::make_delta(&data, b) {
                return self.send_delta((id, i), ops, b, second);
            }
        }
        self.observer().content_sent(len);
        self.send(if j == i + 1 {
            ClientMsg::Chunk { id, index: i, data }
        } else {
            ClientMsg::Chunks { id, first: i, data }
        })?;
        if len >= RUN_BYTES / 2 {
            // Large messages go one per hand-over, so the queues hold a few
            // MiB, not 64 of them.
            self.link.flush();
        }
        Ok(())
    }
}

/// `len` bytes of an open file at `at`: the very bytes that were digested
/// (small files, consistent by construction), or read again (not hashed
/// here: the server checks every chunk against the digest, and refuses the
/// file if it changed since). None if they cannot be read.
fn chunk_bytes(o: &Open, at: u64, len: u64) -> Option<Vec<u8>> {
    match (&o.data, &o.file) {
        (Some(all), _) => Some(all[at as usize..(at + len) as usize].to_vec()),
        (None, Some(file)) => read_vec_at(file, len as usize, at).ok(),
        (None, None) => None,
    }
}
