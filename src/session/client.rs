//! The client's side of a pass: send the manifest, then answer the server's
//! requests (digests, group lists, chunk bytes) until it reports the pass
//! done. Digests come from the source index when the file's size, mtime and
//! inode are unchanged; otherwise the file is read, and re-read if it changed
//! while being read.

use super::link::Link;
use crate::chunk::{
    digest_partly, digest_reader_sized, groups, Digest, DigestState, INLINE_CHUNKS,
};
use crate::error::{describe_io, Error, Result};
use crate::index::{FileRecord, SourceIndex, SourceWriter};
use crate::protocol::{ClientMsg, Op, PassOptions, ServerMsg, GROUPS_PER_MSG};
use crate::report::{PassSummary, Reporter};
use crate::tree::Version;
use crate::tree::{scan::mtime_of, Kind, SourceScan};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub type ClientLink = Link<ClientMsg, ServerMsg>;

/// A file's digest, and the record to store in the source index if it was read.
/// A file's digest, its record for the source index, and its bytes (small
/// files); `None` when it stepped aside; `Err` says why it could not be read.
type DigestResult =
    std::result::Result<Option<(Digest, Option<FileRecord>, Option<Vec<u8>>)>, String>;

/// Files up to this size are read into memory once, for digest and chunks.
const KEEP_SMALL: u64 = 256 * 1024;

/// Most manifest entries per message.
const ENTRIES_PER_MSG: usize = 2048;

/// Optional observers of a pass (progress display).
pub trait PassObserver: Sync {
    /// The server will check or fetch `files` files of `bytes` bytes in all.
    fn planned(&self, _files: u64, _bytes: u64) {}
    /// Chunk bytes sent.
    fn content_sent(&self, _bytes: u64) {}
    /// The server is done with a file of `bytes` bytes.
    fn file_done(&self, _bytes: u64) {}
}

struct NoObserver;
impl PassObserver for NoObserver {}

/// What the client keeps about a file the server is working on.
struct Open {
    digest: Digest,
    group_starts: Option<Vec<usize>>,
    file: Option<std::fs::File>,
    /// The content read for the digest (small files), so chunks are sent
    /// without reading the file again.
    data: Option<Vec<u8>>,
    /// Chunk offsets (computed on the first request).
    offs: Option<Vec<u64>>,
    /// When the server first asked for its content.
    first_ask: Option<Instant>,
}

pub struct ClientPass<'a> {
    pub link: &'a ClientLink,
    pub root: &'a Path,
    pub scan: &'a SourceScan,
    pub index: Option<&'a SourceIndex>,
    pub reporter: &'a Reporter,
    pub observer: Option<&'a dyn PassObserver>,
    /// Files still being written (watch mode): not sent this pass.
    pub hold: Option<&'a std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Set when newer changes wait (watch mode): a large file being sent
    /// steps aside for them (the server keeps what it received).
    pub preempt: Option<&'a AtomicBool>,
    /// Large files' digests interrupted by `preempt`, resumed later.
    pub saved_digests: &'a SavedDigests,
}

/// Most bytes of consecutive chunks sent in one message.
const RUN_BYTES: u64 = 1 << 20;

/// Files below this size are not recorded in the source index: reading
/// one again costs about what looking it up does.
const SOURCE_INDEX_MIN: u64 = 64 * 1024;

/// Files at least this large step aside for waiting changes...
const PREEMPT_MIN: u64 = 16 << 20;
/// ...once they have been sent for this long in the pass (so they always
/// progress, however busy the source).
const PREEMPT_AFTER: Duration = Duration::from_millis(200);

/// How a pass went, beyond the summary.
pub struct PassOutcome {
    pub summary: PassSummary,
    /// Files that changed while being sent: a follow-up pass will fix them.
    pub changed_during_pass: usize,
    /// Large files that stepped aside for newer changes (keys): to be sent
    /// again by the next pass, which resumes them.
    pub preempted: Vec<String>,
}

impl ClientPass<'_> {
    fn observer(&self) -> &dyn PassObserver {
        self.observer.unwrap_or(&NoObserver)
    }

    fn send(&self, m: ClientMsg) -> Result<()> {
        if self.link.send(m) {
            Ok(())
        } else {
            Err(self.link_error())
        }
    }

    fn link_error(&self) -> Error {
        Error::Net {
            peer: self.link.peer.clone(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "connection lost"),
        }
    }

    pub fn run(&self, opts: PassOptions) -> Result<PassOutcome> {
        let m = &self.scan.manifest;
        let (wire0_sent, wire0_recv) = self.link.counters.total();
        self.send(ClientMsg::BeginPass(opts.clone()))?;
        for batch in m.entries.chunks(ENTRIES_PER_MSG) {
            self.send(ClientMsg::Entries(batch.to_vec()))?;
            // One message per hand-over: a few thousand cloned entries in
            // flight at most, not a large part of a big manifest.
            self.link.flush();
        }
        self.send(ClientMsg::EndManifest {
            opaque: m.opaque.clone(),
            partial: m.partial.clone(),
        })?;
        let files = m
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::File { .. }))
            .count() as u64;
        let mut open: HashMap<u32, Open> = HashMap::new();
        let mut bases: HashMap<u32, HashMap<u32, u32>> = HashMap::new();
        let writer = self.index.map(SourceIndex::writer);
        let mut changed = 0usize;
        let mut preempted = Vec::new();
        let stats = loop {
            let msg = self
                .link
                .recv()
                .map_err(|e| Error::link(&self.link.peer, e))?;
            match msg {
                ServerMsg::Plan { files, bytes } => self.observer().planned(files, bytes),
                ServerMsg::Basis { id, hashes } => {
                    if hashes.len() > crate::delta::MAX_PIECES {
                        return Err(Error::protocol(
                            &self.link.peer,
                            "basis with too many pieces",
                        ));
                    }
                    if hashes.is_empty() {
                        bases.remove(&id);
                    } else {
                        let mut map = HashMap::with_capacity(hashes.len());
                        for (i, h) in hashes.into_iter().enumerate() {
                            map.entry(h).or_insert(i as u32);
                        }
                        bases.insert(id, map);
                    }
                }
                ServerMsg::NeedFiles { ids } => self.answer_need_files(
                    &ids,
                    opts.checksum,
                    &mut open,
                    writer.as_ref(),
                    &mut preempted,
                )?,
                ServerMsg::NeedGroupHashes { id } => self.answer_group_hashes(id, &mut open)?,
                ServerMsg::NeedGroups { id, groups } => {
                    self.answer_groups(id, &groups, &mut open)?
                }
                ServerMsg::NeedChunks { id, ranges } => {
                    if !self.answer_chunks(
                        id,
                        &ranges,
                        &mut open,
                        bases.get(&id),
                        &mut preempted,
                    )? {
                        changed += 1;
                    }
                }
                ServerMsg::Done { id } => {
                    open.remove(&id);
                    bases.remove(&id);
                    self.observer().file_done(file_size(m, id));
                }
                ServerMsg::Report(r) => {
                    self.reporter.op(&r);
                    if r.op == Op::Error {
                        continue;
                    }
                }
                ServerMsg::PassDone(stats) => break stats,
                ServerMsg::Fatal { reason } => {
                    return Err(Error::Refused {
                        peer: self.link.peer.clone(),
                        reason,
                    })
                }
            }
        };
        if let Some(idx) = self.index {
            if let Some(Err(e)) = writer.map(SourceWriter::finish) {
                self.reporter
                    .warn(&format!("source index not updated: {e}"));
            }
            // Forget files no longer in the source (only after a full,
            // clean pass, and only when the index holds more than the tree).
            let clean = m.opaque.is_empty() && m.partial.is_empty() && self.scan.errors.is_empty();
            if clean && idx.count() > files {
                let all: Vec<String> = (0..m.entries.len()).map(|i| m.key(i)).collect();
                let keep = all.iter().map(String::as_str).collect();
                let _ = idx.retain(&keep);
            }
        }
        let (s1, r1) = self.link.counters.total();
        let summary = PassSummary {
            files,
            dirs: m.entries.iter().filter(|e| e.kind.is_dir()).count() as u64,
            bytes: m.file_bytes(),
            stats,
            wire_sent: s1 - wire0_sent,
            wire_received: r1 - wire0_recv,
            client_errors: self.scan.errors.len() as u64,
            dry_run: opts.dry_run,
            preempted: Vec::new(),
        };
        Ok(PassOutcome {
            summary,
            changed_during_pass: changed,
            preempted,
        })
    }

    fn answer_need_files(
        &self,
        ids: &[u32],
        checksum: bool,
        open: &mut HashMap<u32, Open>,
        writer: Option<&SourceWriter>,
        preempted: &mut Vec<String>,
    ) -> Result<()> {
        let m = &self.scan.manifest;
        let held: std::collections::HashSet<String> = self
            .hold
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let (skipped, ids): (Vec<u32>, Vec<u32>) = ids
            .iter()
            .partition(|&&id| !held.is_empty() && held.contains(&m.key(id as usize)));
        for id in skipped {
            self.send(ClientMsg::Skip { id })?;
        }
        let aside = self.preempt.map(|waiting| StepAside {
            waiting,
            saved: self.saved_digests,
        });
        let results: Vec<(u32, DigestResult)> = ids
            .par_iter()
            .map(|&id| {
                let i = id as usize;
                let r = match m.entries.get(i).map(|e| &e.kind) {
                    Some(Kind::File { size }) => {
                        let cached = (!checksum && *size >= SOURCE_INDEX_MIN)
                            .then(|| {
                                self.index.and_then(|x| {
                                    x.lookup(
                                        &m.key(i),
                                        *size,
                                        m.entries[i].mtime,
                                        Version(self.scan.local[i].ino),
                                    )
                                })
                            })
                            .flatten();
                        match cached {
                            Some(d) => Ok(Some((d, None, None))),
                            None => read_digest_or_step_aside(
                                &self.root.join(m.rel_path(i)),
                                &m.key(i),
                                aside,
                            ),
                        }
                    }
                    _ => Err("not a regular file in the manifest".to_string()),
                };
                (id, r)
            })
            .collect();
        let mut records = Vec::new();
        for (id, r) in results {
            match r {
                Ok(None) => {
                    // Stepped aside for newer changes: sent by a later pass.
                    self.send(ClientMsg::Skip { id })?;
                    preempted.push(m.key(id as usize));
                }
                Ok(Some((digest, record, data))) => {
                    if let Some(rec) =
                        record.filter(|r| writer.is_some() && r.size >= SOURCE_INDEX_MIN)
                    {
                        records.push((m.key(id as usize), rec));
                    }
                    let chunks =
                        (digest.chunks.len() <= INLINE_CHUNKS).then(|| digest.chunks.clone());
                    self.send(ClientMsg::Summary {
                        id,
                        size: digest.size,
                        hash: digest.hash,
                        chunks,
                    })?;
                    open.insert(
                        id,
                        Open {
                            digest,
                            group_starts: None,
                            file: None,
                            data,
                            offs: None,
                            first_ask: None,
                        },
                    );
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

    fn answer_group_hashes(&self, id: u32, open: &mut HashMap<u32, Open>) -> Result<()> {
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

    fn answer_groups(&self, id: u32, wanted: &[u32], open: &mut HashMap<u32, Open>) -> Result<()> {
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
    fn answer_chunks(
        &self,
        id: u32,
        ranges: &[(u32, u32)],
        open: &mut HashMap<u32, Open>,
        basis: Option<&HashMap<u32, u32>>,
        preempted: &mut Vec<String>,
    ) -> Result<bool> {
        let Some(o) = open.get_mut(&id) else {
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
                if may_step_aside.is_some_and(|p| p.load(Ordering::Relaxed))
                    && first_ask.elapsed() >= PREEMPT_AFTER
                {
                    self.send(ClientMsg::Skip { id })?;
                    open.remove(&id);
                    preempted.push(key());
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
                let (data, ok) = match (&o.data, &o.file) {
                    (Some(all), _) => {
                        // The very bytes that were digested: consistent by construction.
                        (all[at as usize..(at + len) as usize].to_vec(), true)
                    }
                    (None, Some(file)) => {
                        // Not hashed again here: the server checks every
                        // chunk against the digest, and refuses the file if
                        // it changed since.
                        let mut data = vec![0u8; len as usize];
                        let ok = read_exact_at(file, &mut data, at).is_ok();
                        (data, ok)
                    }
                    (None, None) => (Vec::new(), false),
                };
                if !ok {
                    self.send(ClientMsg::FileFailed {
                        id,
                        reason: format!(
                            "{} changed while being sent; it will be sent again",
                            key()
                        ),
                    })?;
                    open.remove(&id);
                    return Ok(false);
                }
                if let Some(ops) = basis.and_then(|b| crate::delta::make_delta(&data, b)) {
                    let literal = crate::delta::literal_bytes(&ops);
                    self.observer().content_sent(literal);
                    self.send(ClientMsg::ChunkDelta { id, index: i, ops })?;
                } else {
                    self.observer().content_sent(len);
                    self.send(if j == i + 1 {
                        ClientMsg::Chunk { id, index: i, data }
                    } else {
                        ClientMsg::Chunks { id, first: i, data }
                    })?;
                    if len >= RUN_BYTES / 2 {
                        // Large messages go one per hand-over, so the
                        // queues hold a few MiB, not 64 of them.
                        self.link.flush();
                    }
                }
                i = j;
            }
        }
        if let Some(o) = open.get_mut(&id) {
            o.offs = Some(offs);
        }
        Ok(true)
    }
}

fn file_size(m: &crate::tree::Manifest, id: u32) -> u64 {
    match m.entries.get(id as usize).map(|e| &e.kind) {
        Some(Kind::File { size }) => *size,
        _ => 0,
    }
}

/// A large file's digest interrupted to let newer changes through (watch
/// mode), resumed by the next pass if the file is still the same.
pub struct SavedDigest {
    size: u64,
    mtime: crate::tree::Timestamp,
    ino: u64,
    state: DigestState,
}

/// Digests set aside, by key.
pub type SavedDigests = std::sync::Mutex<HashMap<String, SavedDigest>>;

/// Most digests kept set aside at once.
const MAX_SAVED_DIGESTS: usize = 8;

/// What may interrupt a large file's digest: the flag saying newer changes
/// wait, and where interrupted digests are kept.
#[derive(Clone, Copy)]
pub struct StepAside<'a> {
    pub waiting: &'a AtomicBool,
    pub saved: &'a SavedDigests,
}

/// Reads and digests a file, re-reading it if it changed meanwhile. With
/// `aside`, a large file's digest may stop halfway when newer changes wait
/// (`Ok(None)`), to resume in a later pass.
fn read_digest_or_step_aside(path: &PathBuf, key: &str, aside: Option<StepAside>) -> DigestResult {
    let started = Instant::now();
    for _ in 0..3 {
        let mut file = std::fs::File::open(path).map_err(|e| describe_io(&e))?;
        let before = file.metadata().map_err(|e| describe_io(&e))?;
        let (digest, data) = if before.len() <= KEEP_SMALL {
            let mut data = Vec::with_capacity(before.len() as usize + 1);
            std::io::Read::read_to_end(&mut file, &mut data).map_err(|e| describe_io(&e))?;
            (crate::chunk::digest_bytes(&data), Some(data))
        } else if let Some(aside) = aside.filter(|_| before.len() >= PREEMPT_MIN) {
            let (mtime, ino) = (mtime_of(&before), crate::tree::scan::local_of(&before).ino);
            let mut saved = aside.saved.lock().unwrap_or_else(|e| e.into_inner());
            let state = match saved.remove(key) {
                Some(s) if s.size == before.len() && s.mtime == mtime && s.ino == ino => s.state,
                _ => DigestState::default(),
            };
            drop(saved);
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(state.offset))
                .map_err(|e| describe_io(&e))?;
            let stop =
                || aside.waiting.load(Ordering::Relaxed) && started.elapsed() >= PREEMPT_AFTER;
            match digest_partly(&file, before.len(), state, &stop).map_err(|e| describe_io(&e))? {
                Ok(d) => (d, None),
                Err(state) => {
                    let mut saved = aside.saved.lock().unwrap_or_else(|e| e.into_inner());
                    if saved.len() < MAX_SAVED_DIGESTS {
                        let size = before.len();
                        saved.insert(
                            key.to_string(),
                            SavedDigest {
                                size,
                                mtime,
                                ino,
                                state,
                            },
                        );
                    }
                    return Ok(None);
                }
            }
        } else {
            (
                digest_reader_sized(&file, before.len()).map_err(|e| describe_io(&e))?,
                None,
            )
        };
        let after = std::fs::metadata(path).map_err(|e| describe_io(&e))?;
        let stable = before.len() == after.len()
            && mtime_of(&before) == mtime_of(&after)
            && digest.size == after.len()
            && crate::tree::scan::local_of(&before) == crate::tree::scan::local_of(&after);
        if stable {
            let rec = FileRecord {
                size: digest.size,
                mtime: mtime_of(&after),
                version: Version(crate::tree::scan::local_of(&after).ino),
                digest: digest.clone(),
            };
            return Ok(Some((digest, Some(rec), data)));
        }
    }
    Err("it kept changing while being read".into())
}

/// Reads exactly `buf.len()` bytes of a source file at `offset`.
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            let n = file.seek_read(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}
