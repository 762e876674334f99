//! The server's content engine: for each file the plan says to fetch, ask
//! the client for its digest, find what the replica already holds (the same
//! whole file, known groups, known chunks; all verified before use), pull
//! only the missing chunks (each checked against its hash), assemble the
//! file in the store's staging, check its id (derived from the chunk list)
//! and publish it.
//!
//! - `job.rs`: one file in flight.
//! - `requests.rs`: the client's answers (summaries, group lists, chunks),
//!   each checked against what was asked.
//! - `sourcing.rs`: which file asked for a chunk needed by several (pure).
//! - `assemble.rs`: where each chunk comes from; local copies, verified.
//! - `basis.rs`: an old or similar file offered for small-file deltas.
//! - `bases.rs`: a worker reading and cutting those bases ahead, off the
//!   session thread (each `Basis` still goes out before its file's requests).
//! - `fine.rs`: a delta's second round (fine pieces of the old ranges a
//!   chunk's literal gaps replaced).
//! - `moves.rs`: content already in the replica (unchanged, or at a path
//!   this pass removes: renamed, not copied); old versions kept aside.
//! - `publish.rs`: verify and publish, or give up, or set aside as partial.
//! - `behind.rs`: a writer thread writing large files' chunks while the
//!   session thread reads the next messages.
//! - `pool.rs`: worker threads that verify and publish new files in
//!   batches while the session thread handles the next messages; records
//!   and reports are written as files come back.
//!
//! Requests are pipelined within a window ([`MAX_OPEN`] files in flight);
//! small files go first, big ones last.

mod assemble;
mod bases;
mod basis;
mod behind;
mod fine;
mod job;
mod moves;
mod pool;
mod publish;
mod requests;
mod sourcing;

use super::pass::PassCtx;
use crate::error::{Error, Result};
use crate::index::IndexTxn;
use crate::plan::{Fetch, ReplicaView};
use crate::protocol::{ClientMsg, PassStats, ServerMsg};
use crate::store::{ReadAt, Room};
use crate::tree::Kind;
use job::Job;
use sourcing::Sourcing;
use std::collections::{HashMap, HashSet, VecDeque};

/// Most files in flight at once (digest requested, not yet published).
const MAX_OPEN: usize = 1024;
/// Most summaries asked for in one message.
const ASK_BATCH: usize = 256;
/// Files at least this large are fetched after all the others of a pass.
const BIG_FILE: u64 = 16 << 20;

pub(crate) struct Transfer<'c, 'a> {
    ctx: &'c PassCtx<'a>,
    view: &'c ReplicaView,
    /// Whether content is pulled at all: a store that records nothing (a
    /// dry run) only counts what would be fetched.
    pull: bool,
    doomed: Doomed<'c>,
    moved_away: HashSet<String>,
    queue: VecDeque<Fetch>,
    /// Files asked for and not finished, boxed: the table is sized for
    /// MAX_OPEN entries and a `Job` is large, so inline it cost ~14 MB on
    /// every server whatever the pass (heaptrack, issue 18 note).
    jobs: HashMap<u32, Box<Job>>,
    sourcing: Sourcing,
    reader: Option<(String, Box<dyn ReadAt>)>,
    /// Files given up on during this pass (their late messages are ignored).
    dropped: HashSet<u32>,
    /// Old versions kept aside, removed at the end of the pass.
    stashed: Vec<String>,
    /// Replica files by directory (for bases of new files), built on first use.
    siblings: Option<basis::Siblings<'c>>,
    room: Room,
    /// Fine pieces held for second rounds (an upper bound: see `fine.rs`).
    fine_held: usize,
    /// Workers publishing new files, while [`Transfer::run`] runs.
    pool: Option<pool::Pool>,
    /// The worker preparing bases, while [`Transfer::run`] runs (over a
    /// socket only: no basis is offered in process).
    bases: Option<bases::Bases>,
    /// The thread writing large files, while [`Transfer::run`] runs.
    behind: Option<behind::Behind>,
    /// Bytes of deferred files of several chunks not yet handed to the
    /// pool (see `assemble.rs`).
    deferred_bytes: u64,
}

/// What the pass removes, where a file about to be fetched may be found
/// and renamed into place: this page's removals, and in a paged pass those
/// earlier pages deferred.
pub(crate) struct Doomed<'c> {
    pub page: HashSet<String>,
    pub earlier: Option<&'c crate::session::deferred::Deferred>,
}

impl Doomed<'_> {
    /// Whether nothing at all is to be removed (a first copy): no file
    /// needs looking up as a source of moves.
    pub fn is_empty(&self) -> bool {
        self.page.is_empty() && self.earlier.is_none()
    }

    /// Whether `key` or one of its ancestors is to be removed.
    pub fn covers(&self, key: &str) -> bool {
        crate::plan::is_below_any(key, &self.page) || self.earlier.is_some_and(|d| d.covers(key))
    }
}

fn proto(ctx: &PassCtx, why: impl Into<String>) -> Error {
    Error::protocol(&ctx.link.peer, why)
}

impl<'c, 'a> Transfer<'c, 'a> {
    pub fn new(
        ctx: &'c PassCtx<'a>,
        view: &'c ReplicaView,
        doomed: Doomed<'c>,
        mut fetch: Vec<Fetch>,
    ) -> Self {
        // The fetch order: smaller files in manifest order (directory by
        // directory), then the big ones, so a few large files never hold up
        // many small changes. A stable sort keeps manifest order within each
        // part, and the deque takes over the vector's buffer.
        fetch.sort_by_key(|f| is_big(ctx, f));
        Transfer {
            ctx,
            view,
            pull: ctx.store.capabilities().records,
            doomed,
            moved_away: HashSet::new(),
            queue: VecDeque::from(fetch),
            jobs: HashMap::new(),
            sourcing: Sourcing::default(),
            reader: None,
            dropped: HashSet::new(),
            stashed: Vec::new(),
            siblings: None,
            room: Room::new(ctx.min_free),
            fine_held: 0,
            pool: None,
            bases: None,
            behind: None,
            deferred_bytes: 0,
        }
    }

    /// Paths whose content was moved elsewhere (no longer to be removed).
    pub fn moved_away(&self) -> &HashSet<String> {
        &self.moved_away
    }

    /// Takes the paths whose content was moved elsewhere.
    pub fn take_moved_away(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.moved_away)
    }

    /// When the pass fetches big files (which come last), the small files
    /// and symlinks it removes go once the smaller files are done, before
    /// the big ones, instead of at the very end: a deleted small file must
    /// not wait for a large transfer. (A big file's content cannot be in a
    /// smaller file, so no move is lost; directories still go last.)
    pub fn removable_early(&self, remove: &[String]) -> Vec<String> {
        if !self.queue.iter().any(|f| is_big(self.ctx, f)) {
            return Vec::new();
        }
        remove
            .iter()
            .filter(|k| match self.view.get(k).map(|e| &e.kind) {
                Some(Kind::File { size }) => *size < BIG_FILE,
                Some(Kind::Symlink { .. }) => true,
                _ => false,
            })
            .cloned()
            .collect()
    }

    fn key(&self, id: u32) -> &'a str {
        self.ctx.key(id)
    }

    fn entry(&self, id: u32) -> &'a crate::tree::Entry {
        self.ctx.entry(id)
    }

    /// Runs the transfer to its end, or (with `before_big`) until only big
    /// files are left.
    pub fn run(
        &mut self,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
        before_big: bool,
    ) -> Result<()> {
        let store = self.ctx.store;
        let r = std::thread::scope(|scope| {
            if self.pull {
                self.pool = Some(pool::Pool::start(scope, store));
                self.behind = Some(behind::Behind::start(scope));
                if !self.ctx.link.is_in_process() {
                    self.bases = Some(bases::Bases::start(scope, store));
                }
            }
            let r = self.run_until(txn, stats, before_big);
            // Every file handed to the pool is in place (or failed) and
            // indexed before the pass goes on.
            let done = self.collect(txn, stats, true);
            self.pool = None;
            self.bases = None;
            // Every write handed over is done once the writer ends.
            self.behind = None;
            r.and(done)
        });
        if r.is_err() || self.ctx.interrupted() {
            // Large files resume from here next time; other staged files
            // are removed as their jobs drop.
            self.set_aside_all();
        }
        r
    }

    fn run_until(
        &mut self,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
        before_big: bool,
    ) -> Result<()> {
        loop {
            let big_next = self.queue.front().is_some_and(|f| is_big(self.ctx, f));
            if before_big && big_next && self.jobs.is_empty() {
                return Ok(());
            }
            self.ask_more();
            if self.jobs.is_empty() && self.queue.is_empty() {
                return Ok(());
            }
            if self.ctx.interrupted() {
                return Ok(());
            }
            let link = self.ctx.link;
            let msg = match link.try_recv() {
                Some(m) => m,
                None if self.bases.as_ref().is_some_and(|b| b.busy()) => {
                    // Nothing to handle but bases being prepared: their
                    // files' requests go out as soon as they are ready.
                    link.flush();
                    self.take_bases(txn, stats, true)?;
                    continue;
                }
                None => link.recv().map_err(|e| Error::link(&link.peer, e))?,
            };
            self.handle(msg, txn, stats)?;
            self.take_bases(txn, stats, false)?;
            self.collect(txn, stats, false)?;
            txn.checkpoint()?;
        }
    }

    fn ask_more(&mut self) {
        let mut ids = Vec::new();
        while self.jobs.len() < MAX_OPEN && ids.len() < ASK_BATCH {
            let Some(f) = self.queue.pop_front() else {
                break;
            };
            ids.push(f.id);
            self.jobs.insert(f.id, Box::new(Job::new(f)));
        }
        if !ids.is_empty() {
            self.ctx.link.send(ServerMsg::NeedFiles { ids });
        }
    }

    fn handle(&mut self, msg: ClientMsg, txn: &mut IndexTxn, stats: &mut PassStats) -> Result<()> {
        // Messages still in flight for a file the server gave up on are dropped.
        let given_up = |id: u32| self.dropped.contains(&id) && !self.jobs.contains_key(&id);
        if msg.file_id().is_some_and(given_up) {
            return Ok(());
        }
        match msg {
            ClientMsg::Summary {
                id,
                size,
                hash,
                chunks,
            } => self.on_summary(id, size, hash, chunks, txn, stats),
            ClientMsg::GroupHashes {
                id,
                start,
                total,
                groups,
            } => self.on_group_hashes(id, start, total, groups, txn, stats),
            ClientMsg::GroupChunks { id, group, chunks } => {
                self.on_group_chunks(id, group, chunks, txn, stats)
            }
            ClientMsg::Chunk { id, index, data } => {
                let sent = data.len() as u64;
                self.on_chunk(id, index, data, sent, txn, stats)
            }
            ClientMsg::Chunks { id, first, data } => self.on_chunks(id, first, data, txn, stats),
            ClientMsg::ChunkDelta { id, index, ops } => {
                self.on_chunk_delta(id, index, ops, txn, stats)
            }
            ClientMsg::NeedFine { id, index, ranges } => self.on_need_fine(id, index, &ranges),
            ClientMsg::FileFailed { id, reason } => {
                if self.jobs.contains_key(&id) {
                    self.drop_job(id, true);
                    self.ctx
                        .fail(stats, self.key(id), super::pass::Failure::Client(reason));
                }
                Ok(())
            }
            ClientMsg::Skip { id } => {
                if self.jobs.contains_key(&id) {
                    self.drop_job(id, true);
                }
                Ok(())
            }
            other => Err(proto(
                self.ctx,
                format!("unexpected {} during transfer", other.name()),
            )),
        }
    }

    fn job(&mut self, id: u32) -> Result<&mut Job> {
        let ctx = self.ctx;
        self.jobs.get_mut(&id).map(|j| &mut **j).ok_or_else(|| {
            proto(
                ctx,
                format!("message for file {id}, which was not asked for"),
            )
        })
    }

    /// The job of file `id`, which must have asked for its chunk `index`
    /// (`what` names the message in the error).
    fn job_asking(&mut self, id: u32, index: u32, what: &str) -> Result<&mut Job> {
        let ctx = self.ctx;
        let job = self.job(id)?;
        if !job.asked.contains(&index) {
            return Err(proto(
                ctx,
                format!("{what} for chunk {index} of file {id}, which was not asked for"),
            ));
        }
        Ok(job)
    }
}

fn is_big(ctx: &PassCtx, f: &Fetch) -> bool {
    now_size(&ctx.entry(f.id).kind) >= BIG_FILE
}

fn now_size(k: &Kind) -> u64 {
    match k {
        Kind::File { size } => *size,
        _ => u64::MAX,
    }
}
