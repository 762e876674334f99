//! The client's side of a pass: send the manifest, then answer the server's
//! requests (digests, group lists, chunk bytes) until it reports the pass
//! done. Digests come from the source index when the file's size, mtime and
//! inode are unchanged; otherwise the file is read, and re-read if it changed
//! while being read.
//!
//! - `answers.rs`: the answers to each request.
//! - `digest.rs`: reading a file's digest (and stepping aside in watch mode).

mod answers;
mod digest;
mod second;

pub use digest::{SavedDigest, SavedDigests, StepAside};

use super::link::Link;
use crate::chunk::Digest;
use crate::error::{Error, Result};
use crate::index::{SourceIndex, SourceWriter};
use crate::protocol::{ClientMsg, Op, PassOptions, PassStats, ServerMsg};
use crate::report::{PassSummary, Reporter};
use crate::tree::{Kind, Manifest, SourceScan};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

pub type ClientLink = Link<ClientMsg, ServerMsg>;

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

/// What the client keeps while answering the server during a pass.
#[derive(Default)]
struct PassState {
    /// Files the server is working on.
    open: HashMap<u32, Open>,
    /// Bases the server offered, by file.
    bases: HashMap<u32, crate::delta::BasisMap>,
    /// Chunk deltas waiting for a second round.
    second: second::SecondRound,
    /// Files that changed while being sent.
    changed: usize,
    /// Large files that stepped aside (keys).
    preempted: Vec<String>,
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
        let wire0 = self.link.counters.total();
        self.send_manifest(&opts)?;
        let writer = self.index.map(SourceIndex::writer);
        let mut state = PassState::default();
        let stats = loop {
            let msg = self
                .link
                .recv()
                .map_err(|e| Error::link(&self.link.peer, e))?;
            if let Some(stats) = self.on_message(msg, &opts, &mut state, writer.as_ref())? {
                break stats;
            }
        };
        self.update_index(writer);
        let m = &self.scan.manifest;
        let (s1, r1) = self.link.counters.total();
        let summary = PassSummary {
            files: count_files(m),
            dirs: m.entries.iter().filter(|e| e.kind.is_dir()).count() as u64,
            bytes: m.file_bytes(),
            stats,
            wire_sent: s1 - wire0.0,
            wire_received: r1 - wire0.1,
            client_errors: self.scan.errors.len() as u64,
            dry_run: opts.dry_run,
            preempted: Vec::new(),
        };
        Ok(PassOutcome {
            summary,
            changed_during_pass: state.changed,
            preempted: state.preempted,
        })
    }

    fn send_manifest(&self, opts: &PassOptions) -> Result<()> {
        let m = &self.scan.manifest;
        self.send(ClientMsg::BeginPass(opts.clone()))?;
        for batch in m.entries.chunks(ENTRIES_PER_MSG) {
            self.send(ClientMsg::Entries(batch.to_vec()))?;
            // One message per hand-over: a few thousand cloned entries in
            // flight at most, not a large part of a big manifest.
            self.link.flush();
        }
        self.send_extras(opts)?;
        self.send(ClientMsg::EndManifest {
            opaque: m.opaque.clone(),
            partial: m.partial.clone(),
        })
    }

    /// Hard links among the files (always) and, with `--xattrs`, extended
    /// attributes, between the entries and the end of the manifest.
    fn send_extras(&self, opts: &PassOptions) -> Result<()> {
        use crate::protocol::EXTRAS_PER_MSG;
        let links = crate::tree::hard_links(self.scan);
        for batch in links.chunks(EXTRAS_PER_MSG) {
            self.send(ClientMsg::Links(batch.to_vec()))?;
        }
        if opts.xattrs {
            let (attrs, errors) = crate::tree::xattr::read_tree(self.root, &self.scan.manifest);
            for e in errors {
                self.reporter.warn(&e.to_string());
            }
            for batch in attrs.chunks(EXTRAS_PER_MSG) {
                self.send(ClientMsg::Xattrs(batch.to_vec()))?;
                self.link.flush();
            }
        }
        Ok(())
    }

    /// Handles one message from the server; the pass's stats when it is over.
    fn on_message(
        &self,
        msg: ServerMsg,
        opts: &PassOptions,
        state: &mut PassState,
        writer: Option<&SourceWriter>,
    ) -> Result<Option<PassStats>> {
        match msg {
            ServerMsg::Plan { files, bytes } => self.observer().planned(files, bytes),
            ServerMsg::Basis { id, avg, hashes } => self.note_basis(id, avg, &hashes, state)?,
            ServerMsg::NeedFiles { ids } => {
                self.answer_need_files(&ids, opts.checksum, state, writer)?
            }
            ServerMsg::NeedGroupHashes { id } => self.answer_group_hashes(id, &mut state.open)?,
            ServerMsg::NeedGroups { id, groups } => {
                self.answer_groups(id, &groups, &mut state.open)?
            }
            ServerMsg::NeedChunks { id, ranges } => {
                if !self.answer_chunks(id, &ranges, state)? {
                    state.changed += 1;
                }
            }
            ServerMsg::Done { id } => {
                state.open.remove(&id);
                state.bases.remove(&id);
                state.second.forget(id);
                self.observer()
                    .file_done(file_size(&self.scan.manifest, id));
            }
            ServerMsg::Report(r) => {
                self.reporter.op(&r);
                if r.op == Op::Error {
                    return Ok(None);
                }
            }
            ServerMsg::PassDone(stats) => return Ok(Some(stats)),
            ServerMsg::Fine {
                id,
                index,
                counts,
                hashes,
            } => self.on_fine((id, index), &counts, &hashes, &mut state.second)?,
            ServerMsg::Fatal { reason } => {
                return Err(Error::Refused {
                    peer: self.link.peer.clone(),
                    reason,
                })
            }
        }
        Ok(None)
    }

    /// The server offers (or, empty, withdraws) a basis for file `id`.
    fn note_basis(&self, id: u32, avg: u32, hashes: &[u8], state: &mut PassState) -> Result<()> {
        if hashes.is_empty() {
            state.bases.remove(&id);
            return Ok(());
        }
        let basis = crate::delta::BasisMap::parse(avg, hashes)
            .map_err(|e| Error::protocol(&self.link.peer, e.to_string()))?;
        state.bases.insert(id, basis);
        Ok(())
    }

    /// Stores the digests read this pass, and forgets files no longer in
    /// the source (only after a full, clean pass, and only when the index
    /// holds more than the tree).
    fn update_index(&self, writer: Option<SourceWriter>) {
        let Some(idx) = self.index else {
            return;
        };
        if let Some(Err(e)) = writer.map(SourceWriter::finish) {
            self.reporter
                .warn(&format!("source index not updated: {e}"));
        }
        let m = &self.scan.manifest;
        let clean = m.opaque.is_empty() && m.partial.is_empty() && self.scan.errors.is_empty();
        if clean && idx.count() > count_files(m) {
            let all: Vec<String> = (0..m.entries.len()).map(|i| m.key(i)).collect();
            let keep = all.iter().map(String::as_str).collect();
            let _ = idx.retain(&keep);
        }
    }
}

fn count_files(m: &Manifest) -> u64 {
    m.entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .count() as u64
}

fn file_size(m: &Manifest, id: u32) -> u64 {
    match m.entries.get(id as usize).map(|e| &e.kind) {
        Some(Kind::File { size }) => *size,
        _ => 0,
    }
}
