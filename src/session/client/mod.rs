//! The client's side of a pass: send the manifest, then answer the server's
//! requests (digests, group lists, chunk bytes) until it reports the pass
//! done. Digests come from the source index when the file's size, mtime and
//! inode are unchanged; otherwise the file is read, and re-read if it changed
//! while being read.
//!
//! - `answers.rs`: the answers to each request.
//! - `digest.rs`: reading a file's digest (and stepping aside in watch mode).

mod answers;
mod bases;
mod digest;
mod second;

pub use digest::{SavedDigest, SavedDigests, StepAside};

use super::link::Link;
use crate::chunk::Digest;
use crate::error::{Error, Result};
use crate::index::{SourceIndex, SourceWriter};
use crate::protocol::{ClientMsg, Op, PassOptions, PassStats, ServerMsg};
use crate::report::{PassSummary, Reporter};
use crate::tree::{Kind, Manifest, PageLinks, Pages, SourceScan};
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
    bases: bases::Bases,
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

    /// A pass over the whole scan, sent as one manifest.
    pub fn run(&self, opts: PassOptions) -> Result<PassOutcome> {
        let mut pass = Running::new(self, opts.dry_run);
        self.send(ClientMsg::BeginPass(opts.clone()))?;
        let stats = match self.run_page(&opts, true, &mut pass)? {
            Ended::Pass(stats) => stats,
            Ended::Page => unreachable!("run_page checks that a last page ends the pass"),
        };
        Ok(pass.finish(self, stats, opts.dry_run, true))
    }

    /// A paged pass: the tree goes as pages of whole directories, each
    /// carried out by the server before the next is read (so neither side
    /// holds the whole tree). The pages' warnings and errors are reported
    /// here. `self.scan` is not used.
    pub fn run_pages(&self, opts: PassOptions, pages: &mut Pages) -> Result<PassOutcome> {
        let mut pass = Running::new(self, opts.dry_run);
        pass.links = Some(PageLinks::default());
        self.send(ClientMsg::BeginPass(opts.clone()))?;
        let mut next = pages.next_page();
        loop {
            let page = next
                .map_err(|e| Error::source(self.root, &e))?
                .unwrap_or_default();
            let last = pages.is_done();
            for w in &page.warnings {
                self.reporter.warn(&w.to_string());
            }
            for e in &page.errors {
                self.reporter.error(&e.to_string());
            }
            let this = ClientPass {
                scan: &page,
                ..*self
            };
            // The next page is read while the server works on this one
            // (two pages in memory at most).
            let (ended, following) = std::thread::scope(|s| {
                let ahead = (!last).then(|| s.spawn(|| pages.next_page()));
                let ended = this.run_page(&opts, last, &mut pass);
                let following = ahead.map(|h| h.join().expect("the page reader does not panic"));
                (ended, following)
            });
            let ended = ended?;
            pass.add_page(&page);
            if let Ended::Pass(stats) = ended {
                return Ok(pass.finish(self, stats, opts.dry_run, false));
            }
            next = following.unwrap_or(Ok(None));
        }
    }

    /// Sends `self.scan` as a manifest (the pass's last one if `last`) and
    /// answers the server until it is done with it.
    fn run_page(&self, opts: &PassOptions, last: bool, pass: &mut Running) -> Result<Ended> {
        self.send_manifest(opts, last, pass.links.as_mut())?;
        let writer = pass.writer.take();
        let ended = loop {
            let msg = self
                .link
                .recv()
                .map_err(|e| Error::link(&self.link.peer, e))?;
            if let Some(ended) = self.on_message(msg, opts, pass, writer.as_ref())? {
                break ended;
            }
        };
        pass.writer = writer;
        if last && matches!(ended, Ended::Page) {
            return Err(Error::protocol(
                &self.link.peer,
                "PageDone after the last page of the pass",
            ));
        }
        pass.state.open.clear();
        pass.state.bases.clear();
        Ok(ended)
    }

    fn send_manifest(
        &self,
        opts: &PassOptions,
        last: bool,
        links: Option<&mut PageLinks>,
    ) -> Result<()> {
        let m = &self.scan.manifest;
        for batch in m.entries.chunks(ENTRIES_PER_MSG) {
            self.send(ClientMsg::Entries(batch.to_vec()))?;
            // One message per hand-over: a few thousand cloned entries in
            // flight at most, not a large part of a big manifest.
            self.link.flush();
        }
        self.send_extras(opts, links)?;
        let (opaque, partial) = (m.opaque.clone(), m.partial.clone());
        self.send(if last {
            ClientMsg::EndManifest { opaque, partial }
        } else {
            ClientMsg::EndPage { opaque, partial }
        })
    }

    /// Hard links among the files (always) and, with `--xattrs`, extended
    /// attributes, between the entries and the end of the manifest.
    fn send_extras(&self, opts: &PassOptions, links: Option<&mut PageLinks>) -> Result<()> {
        use crate::protocol::EXTRAS_PER_MSG;
        let (links, far) = match links {
            Some(l) => l.of_page(self.scan),
            None => (crate::tree::hard_links(self.scan), Vec::new()),
        };
        for batch in links.chunks(EXTRAS_PER_MSG) {
            self.send(ClientMsg::Links(batch.to_vec()))?;
        }
        for batch in far.chunks(EXTRAS_PER_MSG) {
            self.send(ClientMsg::FarLinks(batch.to_vec()))?;
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

    /// Handles one message from the server; whether the page or the pass
    /// is over.
    fn on_message(
        &self,
        msg: ServerMsg,
        opts: &PassOptions,
        pass: &mut Running,
        writer: Option<&SourceWriter>,
    ) -> Result<Option<Ended>> {
        let state = &mut pass.state;
        match msg {
            ServerMsg::Plan { files, bytes } => {
                pass.planned.0 += files;
                pass.planned.1 = pass.planned.1.saturating_add(bytes);
                self.observer().planned(pass.planned.0, pass.planned.1)
            }
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
                state.bases.remove(id);
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
            ServerMsg::PageDone => return Ok(Some(Ended::Page)),
            ServerMsg::PassDone(stats) => return Ok(Some(Ended::Pass(stats))),
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
        if hashes.is_empty() || !state.open.contains_key(&id) {
            // Withdrawn, or for a file no longer in flight: nothing to hold.
            state.bases.remove(id);
            return Ok(());
        }
        state
            .bases
            .offer(id, avg, hashes)
            .map_err(|e| Error::protocol(&self.link.peer, e.to_string()))?;
        Ok(())
    }

    /// Stores the digests read this pass, and forgets files no longer in
    /// the source (only after a full, clean pass, and only when the index
    /// holds more than the tree).
    fn update_index(&self, writer: Option<SourceWriter>, whole: bool) {
        let Some(idx) = self.index else {
            return;
        };
        if let Some(Err(e)) = writer.map(SourceWriter::finish) {
            self.reporter
                .warn(&format!("source index not updated: {e}"));
        }
        // Forgetting needs the whole tree's keys: not after a paged pass.
        let m = &self.scan.manifest;
        let clean =
            whole && m.opaque.is_empty() && m.partial.is_empty() && self.scan.errors.is_empty();
        if clean && idx.count() > count_files(m) {
            let all: Vec<String> = (0..m.entries.len()).map(|i| m.key(i)).collect();
            let keep = all.iter().map(String::as_str).collect();
            let _ = idx.retain(&keep);
        }
    }
}

/// How a page's exchange ended.
enum Ended {
    /// The server carried the page out; the next one may go.
    Page,
    /// The pass is over (possibly stopped before its last page).
    Pass(PassStats),
}

/// What a pass accumulates over its pages.
struct Running {
    state: PassState,
    writer: Option<SourceWriter>,
    wire0: (u64, u64),
    /// Hard-link groups met in earlier pages (a paged pass).
    links: Option<PageLinks>,
    /// Files and bytes the server announced (summed over pages).
    planned: (u64, u64),
    files: u64,
    dirs: u64,
    bytes: u64,
    errors: u64,
}

impl Running {
    /// A dry run reads the source index and never writes it (it changes
    /// nothing in the state directory).
    fn new(pass: &ClientPass, dry_run: bool) -> Self {
        Running {
            state: PassState::default(),
            writer: pass.index.filter(|_| !dry_run).map(SourceIndex::writer),
            wire0: pass.link.counters.total(),
            links: None,
            planned: (0, 0),
            files: 0,
            dirs: 0,
            bytes: 0,
            errors: 0,
        }
    }

    fn add_page(&mut self, scan: &SourceScan) {
        let m = &scan.manifest;
        let listed = listed_entries(m);
        self.files += listed
            .iter()
            .filter(|&&i| matches!(m.entries[i].kind, Kind::File { .. }))
            .count() as u64;
        self.dirs += listed
            .iter()
            .filter(|&&i| m.entries[i].kind.is_dir())
            .count() as u64;
        self.bytes = listed
            .iter()
            .map(|&i| file_size(m, i as u32))
            .fold(self.bytes, u64::saturating_add);
        self.errors += scan.errors.len() as u64;
    }

    fn finish(
        mut self,
        pass: &ClientPass,
        stats: PassStats,
        dry_run: bool,
        whole: bool,
    ) -> PassOutcome {
        pass.update_index(self.writer.take(), whole && !dry_run);
        if whole {
            let m = &pass.scan.manifest;
            self.files = count_files(m);
            self.dirs = m.entries.iter().filter(|e| e.kind.is_dir()).count() as u64;
            self.bytes = m.file_bytes();
            self.errors = pass.scan.errors.len() as u64;
        }
        let (s1, r1) = pass.link.counters.total();
        let summary = PassSummary {
            files: self.files,
            dirs: self.dirs,
            bytes: self.bytes,
            stats,
            wire_sent: s1 - self.wire0.0,
            wire_received: r1 - self.wire0.1,
            client_errors: self.errors,
            dry_run,
            preempted: Vec::new(),
        };
        PassOutcome {
            summary,
            changed_during_pass: self.state.changed,
            preempted: self.state.preempted,
        }
    }
}

/// The entries a page lists in full (the root, and children of
/// directories neither partial nor opaque), each once over a paged pass.
fn listed_entries(m: &Manifest) -> Vec<usize> {
    let partial: std::collections::HashSet<u32> = m.partial.iter().copied().collect();
    let root = usize::from(!partial.contains(&0));
    (1..m.entries.len())
        .filter(|&i| !partial.contains(&m.entries[i].parent))
        .chain((0..root).map(|_| 0))
        .collect()
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
