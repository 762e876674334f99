//! The server's content engine: for each file the plan says to fetch, ask
//! the client for its digest, find what the replica already holds (the same
//! whole file, known groups, known chunks; all verified before use), pull
//! only the missing chunks, assemble the file beside its target, verify the
//! whole-file hash and publish it.
//!
//! Requests are pipelined within a window ([`MAX_OPEN`] files in flight), a
//! chunk needed by several files in the same pass is requested once, and a
//! file whose content sits at a path this pass removes is renamed, not copied.

use super::partial::RESUME_MIN;
use super::server::{failure, simple, PassCtx};
use crate::apply::{read_at, write_at, TempFile};
use crate::chunk::{
    digest_reader, group_hash, hash_reader, offsets, ChunkRef, Digest, GroupRef, Hash, MAX_CHUNK,
    MIN_CHUNK,
};
use crate::error::{Error, Result};
use crate::index::{FileRecord, IndexTxn};
use crate::plan::{is_below_any, Fetch, ReplicaView};
use crate::protocol::{ClientMsg, Op, OpReport, PassStats, Reason, ServerMsg};
use crate::tree::{Kind, Timestamp};
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Most files in flight at once (digest requested, not yet published).
const MAX_OPEN: usize = 1024;
/// How long a free-space answer is trusted.
const SPACE_RECHECK: Duration = Duration::from_secs(1);
/// Most summaries asked for in one message.
const ASK_BATCH: usize = 256;

struct Job {
    fetch: Fetch,
    /// The replica file offered as a basis (the old version, or a similar
    /// sibling for a new file) and its fine pieces (offset, len).
    basis: Option<(String, Vec<(u64, u32)>)>,
    /// Whether the client's summary arrived.
    summarized: bool,
    /// Running whole-file hash and the next chunk index it expects.
    inc: Option<(blake3::Hasher, u32)>,
    size: u64,
    hash: Hash,
    /// Known chunk list (None for a large file until its groups are resolved).
    chunks: Option<Vec<ChunkRef>>,
    groups: Vec<GroupRef>,
    group_total: u32,
    group_chunks: Vec<Option<Vec<ChunkRef>>>,
    groups_missing: usize,
    offs: Vec<u64>,
    tmp: Option<TempFile>,
    /// Which chunks are in the temporary file (hash-checked).
    written: Vec<bool>,
    /// Chunk indexes not yet written.
    missing: usize,
    /// Chunk indexes this job asked the client for.
    asked: HashSet<u32>,
    received: u64,
    reused: u64,
}

pub(crate) struct Transfer<'c, 'a> {
    ctx: &'c PassCtx<'a>,
    view: &'c ReplicaView,
    doomed: HashSet<String>,
    moved_away: HashSet<String>,
    queue: VecDeque<Fetch>,
    jobs: HashMap<u32, Job>,
    awaiting_summary: usize,
    /// Chunks asked of the client this pass: hash -> (owner id, index).
    owner: HashMap<Hash, (u32, u32)>,
    /// Other (id, index) places waiting for a chunk asked by its owner.
    waiters: HashMap<Hash, Vec<(u32, u32)>>,
    reader: Option<(String, std::fs::File)>,
    /// Files given up on during this pass (their late messages are ignored).
    dropped: HashSet<u32>,
    /// Old versions linked aside, removed at the end of the pass.
    stashed: Vec<String>,
    /// Replica files by directory (for bases of new files), built on first use.
    siblings: Option<HashMap<String, Vec<(u64, &'c str)>>>,
    /// Last free-space answer: when, free bytes, reserve kept.
    room: Cell<(Option<Instant>, u64, u64)>,
    /// Bytes allotted to files since that answer.
    allotted: Cell<u64>,
    /// Small removals to do before the big files (see `remove_small_early`).
    early: Vec<String>,
    removed_early: Vec<String>,
}

fn proto(ctx: &PassCtx, why: impl Into<String>) -> Error {
    Error::protocol(&ctx.link.peer, why)
}

impl<'c, 'a> Transfer<'c, 'a> {
    pub fn new(
        ctx: &'c PassCtx<'a>,
        view: &'c ReplicaView,
        doomed: HashSet<String>,
        fetch: Vec<Fetch>,
    ) -> Self {
        Transfer {
            ctx,
            view,
            doomed,
            moved_away: HashSet::new(),
            queue: small_first(ctx, fetch),
            jobs: HashMap::new(),
            awaiting_summary: 0,
            owner: HashMap::new(),
            waiters: HashMap::new(),
            reader: None,
            dropped: HashSet::new(),
            stashed: Vec::new(),
            siblings: None,
            room: Cell::new((None, 0, 0)),
            allotted: Cell::new(0),
            early: Vec::new(),
            removed_early: Vec::new(),
        }
    }

    /// Paths whose content was moved elsewhere (no longer to be removed),
    /// and paths already removed during the transfer.
    pub fn into_moved(self) -> (HashSet<String>, HashSet<String>) {
        (self.moved_away, self.removed_early.into_iter().collect())
    }

    /// When the pass fetches big files (which come last), the small files
    /// and symlinks it removes go once the smaller files are done, before
    /// the big ones, instead of at the very end: a deleted small file must
    /// not wait for a large transfer. (A big file's content cannot be in a
    /// smaller file, so no move is lost; directories still go last.)
    pub fn remove_small_early(&mut self, remove: &[String]) {
        if !self.queue.iter().any(|f| self.is_big(f)) {
            return;
        }
        self.early = remove
            .iter()
            .filter(|k| match self.view.get(k).map(|e| &e.kind) {
                Some(Kind::File { size }) => *size < BIG_FILE,
                Some(Kind::Symlink { .. }) => true,
                _ => false,
            })
            .cloned()
            .collect();
    }

    fn is_big(&self, f: &Fetch) -> bool {
        is_big(self.ctx, f)
    }

    /// Removes the old versions kept aside during the pass.
    pub fn clean_stash(&mut self, txn: &mut IndexTxn) -> Result<()> {
        for key in std::mem::take(&mut self.stashed) {
            txn.remove_file(&key)?;
            let _ = self.ctx.st.replica.remove(&key);
        }
        Ok(())
    }

    /// Keeps the version of `key` about to be replaced reachable (a hard
    /// link beside it) until the end of the pass: a later file of the same
    /// pass may be built from it (names swapped, content moved elsewhere).
    fn stash_old(&mut self, key: &str, txn: &mut IndexTxn) -> Result<()> {
        let Some(rec) = txn.file(key)? else {
            return Ok(());
        };
        let replica = &self.ctx.st.replica;
        let Ok(Some(now)) = replica.stat(key) else {
            return Ok(());
        };
        let Kind::File { size } = now.kind else {
            return Ok(());
        };
        if !rec.matches(size, now.mtime, now.ino) {
            return Ok(());
        }
        if let Ok(stash) = replica.link_aside(key) {
            txn.put_file(&stash, &rec)?;
            self.stashed.push(stash);
        }
        Ok(())
    }

    fn key(&self, id: u32) -> &'a str {
        &self.ctx.keys[id as usize]
    }

    fn entry(&self, id: u32) -> &'a crate::tree::Entry {
        &self.ctx.manifest.entries[id as usize]
    }

    pub fn run(&mut self, txn: &mut IndexTxn, stats: &mut PassStats) -> Result<()> {
        let r = self.run_until_done(txn, stats);
        if r.is_err() || self.ctx.interrupted() {
            // Large files resume from here next time; other temp files are
            // removed as their jobs drop.
            self.set_aside_all();
        }
        r
    }

    fn run_until_done(&mut self, txn: &mut IndexTxn, stats: &mut PassStats) -> Result<()> {
        loop {
            let big_next = self.queue.front().is_some_and(|f| self.is_big(f));
            if !self.early.is_empty() && self.jobs.is_empty() && big_next {
                let early = std::mem::take(&mut self.early);
                self.ctx
                    .remove_extras(&early, &self.moved_away, txn, stats)?;
                self.removed_early = early;
            }
            self.ask_more();
            if self.jobs.is_empty() && self.queue.is_empty() {
                return Ok(());
            }
            if self.ctx.interrupted() {
                return Ok(());
            }
            let msg = self.ctx_recv()?;
            self.handle(msg, txn, stats)?;
            txn.checkpoint()?;
        }
    }

    fn ctx_recv(&self) -> Result<ClientMsg> {
        self.ctx.link.recv().map_err(|e| proto(self.ctx, e))
    }

    fn ask_more(&mut self) {
        let mut ids = Vec::new();
        while self.jobs.len() < MAX_OPEN && ids.len() < ASK_BATCH {
            let Some(f) = self.queue.pop_front() else {
                break;
            };
            ids.push(f.id);
            let mut job = Job::new(f);
            if !self.ctx.dry {
                job.basis = self.offer_basis(f.id, f.has_old);
            }
            self.jobs.insert(f.id, job);
            self.awaiting_summary += 1;
        }
        if !ids.is_empty() {
            self.ctx.link.send(ServerMsg::NeedFiles { ids });
        }
    }

    /// Describes the old version at the file's path to the client, if small.
    fn offer_basis(&mut self, id: u32, has_old: bool) -> Option<(String, Vec<(u64, u32)>)> {
        use crate::delta::{basis_of, BASIS_MAX_FILE, BASIS_MIN_FILE};
        let key = self.key(id);
        let Kind::File { size: new_size } = self.entry(id).kind else {
            return None;
        };
        if !(BASIS_MIN_FILE..=BASIS_MAX_FILE).contains(&new_size) {
            return None;
        }
        let basis_key = if has_old {
            match self.view.get(key)?.kind {
                Kind::File { size } if (BASIS_MIN_FILE..=BASIS_MAX_FILE).contains(&size) => {
                    key.to_string()
                }
                _ => return None,
            }
        } else {
            self.similar_sibling(key, new_size)?
        };
        let mut data = Vec::new();
        let f = self.ctx.st.replica.open_read(&basis_key).ok()?;
        std::io::Read::read_to_end(&mut std::io::Read::take(f, BASIS_MAX_FILE), &mut data).ok()?;
        let (places, hashes) = basis_of(&data);
        self.ctx.link.send(ServerMsg::Basis { id, hashes });
        Some((basis_key, places))
    }

    /// For a new file: a replica file in the same directory with the same
    /// extension and the closest size (pages of one site, modules of one
    /// crate… share most of their text).
    fn similar_sibling(&mut self, key: &str, size: u64) -> Option<String> {
        use crate::delta::{BASIS_MAX_FILE, BASIS_MIN_FILE};
        let siblings = self.siblings.get_or_insert_with(|| {
            let mut by_kind: HashMap<String, Vec<(u64, &'c str)>> = HashMap::new();
            let ctx = self.ctx;
            let unchanged = ctx
                .manifest
                .entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let Kind::File { size } = e.kind else {
                        return None;
                    };
                    self.view.is_same(i as u32).then(|| (&ctx.keys[i], size))
                });
            let differing = self.view.differing().filter_map(|(k, e)| match e.kind {
                Kind::File { size } => Some((k.as_str(), size)),
                _ => None,
            });
            for (k, size) in unchanged.chain(differing) {
                if (BASIS_MIN_FILE..=BASIS_MAX_FILE).contains(&size) {
                    by_kind.entry(sibling_class(k)).or_default().push((size, k));
                }
            }
            for v in by_kind.values_mut() {
                v.sort_unstable();
            }
            by_kind
        });
        let same = siblings.get(&sibling_class(key))?;
        // The closest sizes sit on either side of where `size` would go.
        let at = same.partition_point(|(s, _)| *s < size);
        let lo = same[..at].iter().rev().find(|(_, k)| *k != key);
        let hi = same[at..].iter().find(|(_, k)| *k != key);
        match (lo, hi) {
            (Some(a), Some(b)) => Some(if size - a.0 <= b.0 - size { a } else { b }),
            (a, b) => a.or(b),
        }
        .map(|(_, k)| k.to_string())
    }

    /// Rebuilds a chunk sent as a delta; asks for it whole if that fails.
    fn on_chunk_delta(
        &mut self,
        id: u32,
        index: u32,
        ops: Vec<crate::delta::DeltaOp>,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let ctx = self.ctx;
        let job = self.job(id)?;
        if !job.asked.contains(&index) {
            return Err(proto(
                ctx,
                format!("chunk {index} of file {id} was not asked for"),
            ));
        }
        let c = job.chunks.as_ref().expect("chunk list known")[index as usize];
        let (basis_key, places) = job.basis.clone().unwrap_or_default();
        let literal = crate::delta::literal_bytes(&ops);
        let rebuilt = crate::delta::apply_delta(&ops, c.len as usize, |i| {
            let &(off, len) = places.get(i as usize)?;
            let mut buf = vec![0u8; len as usize];
            self.read_replica(&basis_key, &mut buf, off).then_some(buf)
        });
        match rebuilt {
            Ok(data) if data.len() == c.len as usize && Hash::of(&data) == c.hash => {
                self.on_chunk(id, index, data, literal, txn, stats)
            }
            _ => {
                // A truncated-hash collision or a changed old version: ask for it whole.
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.basis = None;
                }
                ctx.link.send(ServerMsg::Basis {
                    id,
                    hashes: Vec::new(),
                });
                ctx.link.send(ServerMsg::NeedChunks {
                    id,
                    ranges: vec![(index, 1)],
                });
                Ok(())
            }
        }
    }

    fn handle(&mut self, msg: ClientMsg, txn: &mut IndexTxn, stats: &mut PassStats) -> Result<()> {
        // Messages still in flight for a file the server gave up on are dropped.
        let about = match &msg {
            ClientMsg::Summary { id, .. }
            | ClientMsg::GroupHashes { id, .. }
            | ClientMsg::GroupChunks { id, .. }
            | ClientMsg::Chunk { id, .. }
            | ClientMsg::Chunks { id, .. }
            | ClientMsg::ChunkDelta { id, .. }
            | ClientMsg::FileFailed { id, .. }
            | ClientMsg::Skip { id } => Some(*id),
            _ => None,
        };
        if about.is_some_and(|id| self.dropped.contains(&id) && !self.jobs.contains_key(&id)) {
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
            ClientMsg::Chunks { id, first, data } => self.on_chunks(id, first, &data, txn, stats),
            ClientMsg::ChunkDelta { id, index, ops } => {
                self.on_chunk_delta(id, index, ops, txn, stats)
            }
            ClientMsg::FileFailed { id, reason } => {
                if self.jobs.contains_key(&id) {
                    self.drop_job(id, true);
                    let r = OpReport {
                        detail: Some(reason),
                        ..simple(Op::Error, self.key(id), Reason::Failed)
                    };
                    self.ctx.report(stats, r);
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
                format!(
                    "unexpected {} during transfer",
                    super::server::msg_name(&other)
                ),
            )),
        }
    }

    fn job(&mut self, id: u32) -> Result<&mut Job> {
        let ctx = self.ctx;
        self.jobs.get_mut(&id).ok_or_else(|| {
            proto(
                ctx,
                format!("message for file {id}, which was not asked for"),
            )
        })
    }

    fn on_summary(
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
        self.awaiting_summary = self.awaiting_summary.saturating_sub(1);
        if let Some(c) = &chunks {
            check_chunk_list(c, size).map_err(|e| proto(self.ctx, e))?;
        }
        if has_old && self.old_content_matches(id, &hash, txn) {
            return self.finish_metadata_only(id, txn, stats);
        }
        if self.try_move(id, &hash, txn, stats)? {
            return Ok(());
        }
        match chunks {
            Some(c) => {
                self.job(id)?.chunks = Some(c);
                self.assemble(id, txn, stats)
            }
            None => {
                self.ctx.link.send(ServerMsg::NeedGroupHashes { id });
                Ok(())
            }
        }
    }

    /// Whether the replica file already at the path has this content.
    fn old_content_matches(&mut self, id: u32, hash: &Hash, txn: &mut IndexTxn) -> bool {
        let key = self.key(id);
        let Some(v) = self.view.get(key) else {
            return false;
        };
        let Kind::File { size } = v.kind else {
            return false;
        };
        if let Ok(Some(rec)) = txn.file(key) {
            if rec.matches(size, v.mtime, v.ino) {
                return rec.digest.hash == *hash;
            }
        }
        // Not indexed (or stale): digest it locally, which also indexes it.
        let Ok(file) = self.ctx.st.replica.open_read(key) else {
            return false;
        };
        let Ok(d) = digest_reader(std::io::BufReader::with_capacity(1 << 20, file)) else {
            return false;
        };
        let same = d.hash == *hash;
        let _ = txn.put_file(
            key,
            &FileRecord {
                size: d.size,
                mtime: v.mtime,
                ino: v.ino,
                digest: d,
            },
        );
        same
    }

    fn finish_metadata_only(
        &mut self,
        id: u32,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<()> {
        let key = self.key(id);
        let e = self.entry(id);
        self.jobs.remove(&id);
        self.ctx.link.send(ServerMsg::Done { id });
        // Only files with an old version (in the view) get here.
        if self
            .view
            .get(key)
            .is_none_or(|v| v.mtime == e.mtime && v.mode == e.mode)
        {
            return Ok(());
        }
        if !self.ctx.dry {
            if let Err(err) = self.ctx.st.replica.set_meta(key, &e.kind, e.mode, e.mtime) {
                self.ctx.report(stats, failure(key, "set metadata", &err));
                return Ok(());
            }
            if let (Ok(Some(mut rec)), Ok(Some(now))) =
                (txn.file(key), self.ctx.st.replica.stat(key))
            {
                rec.mtime = now.mtime;
                rec.ino = now.ino;
                txn.put_file(key, &rec)?;
            }
        }
        self.ctx
            .report(stats, simple(Op::Metadata, key, Reason::MetadataChanged));
        Ok(())
    }

    /// If a file this pass removes holds exactly this content, rename it here.
    fn try_move(
        &mut self,
        id: u32,
        hash: &Hash,
        txn: &mut IndexTxn,
        stats: &mut PassStats,
    ) -> Result<bool> {
        let Some(from) = txn.find_whole(hash)? else {
            return Ok(false);
        };
        if !is_below_any(&from, &self.doomed) || self.moved_away.contains(&from) {
            return Ok(false);
        }
        let Some(rec) = txn.file(&from)? else {
            return Ok(false);
        };
        let Ok(Some(now)) = self.ctx.st.replica.stat(&from) else {
            return Ok(false);
        };
        if !matches!(now.kind, Kind::File { .. })
            || !rec.matches(rec.size, now.mtime, now.ino)
            || rec.size != now_size(&now.kind)
        {
            return Ok(false);
        }
        let key = self.key(id);
        let e = self.entry(id);
        let size = rec.size;
        if !self.ctx.dry {
            if self.jobs.get(&id).is_some_and(|j| j.fetch.has_old) {
                self.stash_old(key, txn)?;
            }
            let r = self
                .ctx
                .st
                .replica
                .rename(&from, key)
                .and_then(|_| self.ctx.st.replica.set_meta(key, &e.kind, e.mode, e.mtime));
            if let Err(err) = r {
                self.ctx.report(stats, failure(key, "move", &err));
                self.jobs.remove(&id);
                self.ctx.link.send(ServerMsg::Done { id });
                return Ok(true);
            }
            let ino = self
                .ctx
                .st
                .replica
                .stat(key)
                .ok()
                .flatten()
                .map(|s| s.ino)
                .unwrap_or(0);
            let mut rec = rec;
            rec.mtime = e.mtime;
            txn.rename_file(&from, key, rec, ino)?;
        }
        self.moved_away.insert(from.clone());
        self.jobs.remove(&id);
        self.ctx.link.send(ServerMsg::Done { id });
        let r = OpReport {
            from: Some(from),
            reused: size,
            ..simple(Op::Moved, key, self.reason(id))
        };
        stats.reused += size;
        self.ctx.report(stats, r);
        Ok(true)
    }

    fn reason(&self, id: u32) -> Reason {
        self.jobs
            .get(&id)
            .map(|j| j.fetch.reason)
            .unwrap_or(Reason::New)
    }

    fn on_group_hashes(
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
        job.group_total = total;
        job.groups.extend(groups);
        if job.groups.len() < total as usize {
            return Ok(());
        }
        let mut resolved = Vec::with_capacity(job.groups.len());
        let mut need = Vec::new();
        let groups = job.groups.clone();
        for (i, g) in groups.iter().enumerate() {
            match txn.find_group(&g.hash)? {
                Some(c) if c.len() == g.count as usize => resolved.push(Some(c)),
                _ => {
                    resolved.push(None);
                    need.push(i as u32);
                }
            }
        }
        let job = self.job(id)?;
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

    fn on_group_chunks(
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

    /// Builds the file from local content where possible and asks for the rest.
    fn assemble(&mut self, id: u32, txn: &mut IndexTxn, stats: &mut PassStats) -> Result<()> {
        let key = self.key(id);
        let dry = self.ctx.dry;
        if let Some(why) = self.no_room(id) {
            let r = OpReport {
                detail: Some(why),
                ..simple(Op::Error, key, Reason::Failed)
            };
            self.ctx.report(stats, r);
            self.drop_job(id, false);
            return Ok(());
        }
        let (size, hash) = {
            let job = &self.jobs[&id];
            (job.size, job.hash)
        };
        let n_chunks = self.jobs[&id].chunks.as_ref().map_or(0, Vec::len);
        // A partial kept from an earlier pass for this very content resumes.
        let resumed = if dry || size < RESUME_MIN {
            None
        } else {
            let st = self.ctx.st;
            st.partials.take(&st.replica, key, size, &hash, n_chunks)
        };
        let (tmp, prewritten) = match resumed {
            Some((t, written)) => (Some(t), written),
            None if dry => (None, Vec::new()),
            None => match self.ctx.st.replica.create_temp(key) {
                Ok(t) => (Some(t), Vec::new()),
                Err(e) => {
                    self.ctx.report(stats, failure(key, "create file", &e));
                    self.jobs.remove(&id);
                    self.ctx.link.send(ServerMsg::Done { id });
                    return Ok(());
                }
            },
        };
        let job = self.jobs.get_mut(&id).expect("job exists");
        let chunks = job.chunks.clone().expect("chunk list known");
        job.offs = offsets(&chunks);
        if chunks.len() <= 1 || !prewritten.is_empty() {
            // One chunk: verified in memory (its hash is the file's).
            // Resumed: read back and hashed whole before publishing.
            job.inc = None;
        }
        job.tmp = tmp;
        job.written = vec![false; chunks.len()];
        job.missing = chunks.len();
        // 1. Where each chunk comes from.
        let mut ask: Vec<u32> = Vec::new();
        let mut local: Vec<(u32, crate::index::ChunkLoc)> = Vec::new();
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
        for (i, c) in chunks.iter().enumerate() {
            if prewritten.get(i).copied().unwrap_or(false) {
                continue;
            }
            let i = i as u32;
            if let Some(&first) = first_local.get(&c.hash) {
                repeats.push((first, i));
            } else if self.owner.contains_key(&c.hash) {
                self.waiters.entry(c.hash).or_default().push((id, i));
            } else if let Some(loc) = txn.find_chunk(&c.hash)?.filter(|l| l.len == c.len) {
                first_local.insert(c.hash, i);
                local.push((i, loc));
            } else {
                failed_set_ask(self, id, i, &chunks, &mut ask);
            }
        }
        // 2. Copy what the replica holds, in contiguous runs, verified.
        let failed = self.copy_local_runs(id, &chunks, &local);
        let failed_set: HashSet<u32> = failed.iter().copied().collect();
        // 3. Repeats copy their first occurrence; anything that failed is asked for.
        for (first, i) in repeats {
            if failed_set.contains(&first) || !self.copy_within(id, first, i) {
                failed_set_ask(self, id, i, &chunks, &mut ask);
            }
        }
        for i in failed {
            failed_set_ask(self, id, i, &chunks, &mut ask);
        }
        ask.sort_unstable();
        let job = self.jobs.get_mut(&id).expect("job exists");
        job.asked = ask.iter().copied().collect();
        if dry {
            let would_send: u64 = ask.iter().map(|&i| chunks[i as usize].len as u64).sum();
            for &i in &ask {
                self.owner.remove(&chunks[i as usize].hash);
            }
            job.received = would_send;
            return self.publish(id, txn, stats);
        }
        if !ask.is_empty() {
            self.ctx.link.send(ServerMsg::NeedChunks {
                id,
                ranges: runs(&ask),
            });
        }
        if self.jobs[&id].missing == 0 {
            return self.publish(id, txn, stats);
        }
        Ok(())
    }

    /// Copies chunks found in the replica into file `id`'s temp file, reading
    /// contiguous runs at once and checking every chunk's hash (in parallel)
    /// before use. Returns the chunks that could not be used.
    fn copy_local_runs(
        &mut self,
        id: u32,
        chunks: &[ChunkRef],
        local: &[(u32, crate::index::ChunkLoc)],
    ) -> Vec<u32> {
        const RUN_MAX: u64 = 16 << 20;
        if local.len() > 16 {
            // Copying can take a while: let queued requests go out first.
            self.ctx.link.flush();
        }
        let mut failed = Vec::new();
        let mut start = 0;
        while start < local.len() {
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
            let run = &local[start..end];
            start = end;
            if self.ctx.dry {
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
            let all_good = good.iter().all(|g| *g);
            if !all_good {
                job.inc = None; // some chunks will come later, out of order
            }
            let t = job.tmp.as_ref().expect("temp file open");
            let dest = job.offs[run[0].0 as usize];
            if all_good {
                if write_at(&t.file, &buf, dest).is_err() {
                    failed.extend(run.iter().map(|(i, _)| *i));
                    continue;
                }
                for &(i, o, l) in &pieces {
                    job.note_written(i, &buf[o..o + l]);
                }
                job.missing -= run.len();
                job.reused += len;
                continue;
            }
            for (&(i, o, l), ok) in pieces.iter().zip(good) {
                if ok && write_at(&t.file, &buf[o..o + l], job.offs[i as usize]).is_ok() {
                    job.written[i as usize] = true;
                    job.missing -= 1;
                    job.reused += l as u64;
                } else {
                    failed.push(i);
                }
            }
        }
        failed
    }

    /// Why file `id` must be refused for lack of space, if it must.
    fn no_room(&self, id: u32) -> Option<String> {
        let size = self.jobs.get(&id)?.size;
        let (free, keep) = self.space_for(size)?;
        (size.saturating_add(keep) > free).then(|| {
            use crate::report::human_bytes;
            format!(
                "not enough space on the destination: the file needs {}, {} is free and --min-free keeps {}",
                human_bytes(size),
                human_bytes(free),
                human_bytes(keep)
            )
        })
    }

    /// Free space and the --min-free reserve, for a file of `size` bytes.
    /// The file system is asked at most once a second while files keep
    /// fitting (the answer is reduced by what was allotted since), and
    /// again whenever the cached answer says no.
    fn space_for(&self, size: u64) -> Option<(u64, u64)> {
        let (at, free, keep) = self.room.get();
        let free_now = free.saturating_sub(self.allotted.get());
        if at.is_some_and(|t| t.elapsed() < SPACE_RECHECK) && size.saturating_add(keep) <= free_now
        {
            self.allotted.set(self.allotted.get().saturating_add(size));
            return Some((free_now, keep));
        }
        let root = self.ctx.st.replica.root_path();
        let free = fs4::available_space(root).ok()?;
        let keep = self.ctx.st.min_free.bytes(fs4::total_space(root).ok()?);
        self.room.set((Some(Instant::now()), free, keep));
        self.allotted.set(size);
        Some((free, keep))
    }

    fn copy_within(&mut self, id: u32, from: u32, to: u32) -> bool {
        let job = self.jobs.get_mut(&id).expect("job exists");
        let Some(t) = &job.tmp else {
            job.missing -= 1;
            return true;
        };
        let len = (job.offs[to as usize + 1] - job.offs[to as usize]) as usize;
        let mut buf = vec![0u8; len];
        if read_at(&t.file, &mut buf, job.offs[from as usize]).is_err()
            || write_at(&t.file, &buf, job.offs[to as usize]).is_err()
        {
            return false;
        }
        job.note_written(to, &buf);
        job.missing -= 1;
        job.reused += len as u64;
        true
    }

    fn read_replica(&mut self, key: &str, buf: &mut [u8], offset: u64) -> bool {
        if self.reader.as_ref().is_none_or(|(k, _)| k != key) {
            match self.ctx.st.replica.open_read(key) {
                Ok(f) => self.reader = Some((key.to_string(), f)),
                Err(_) => return false,
            }
        }
        let (_, f) = self.reader.as_ref().unwrap();
        read_at(f, buf, offset).is_ok()
    }

    fn on_chunk(
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
        self.accept_chunk(id, index, &data, good, sent, txn, stats)
    }

    /// A run of consecutive chunks: cut at the chunk list's lengths, hashed
    /// in parallel, then taken one by one.
    fn on_chunks(
        &mut self,
        id: u32,
        first: u32,
        data: &[u8],
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
        let mut pieces: Vec<(u32, usize, usize)> = Vec::new();
        let (mut at, mut i) = (0usize, first as usize);
        while at < data.len() {
            let Some(c) = chunks.get(i) else {
                return Err(proto(ctx, format!("chunks beyond the end of file {id}")));
            };
            let end = at + c.len as usize;
            if end > data.len() {
                return Err(proto(
                    ctx,
                    format!("a run of chunks of file {id} ends inside chunk {i}"),
                ));
            }
            pieces.push((i as u32, at, end));
            (at, i) = (end, i + 1);
        }
        if pieces.is_empty() {
            return Err(proto(ctx, format!("an empty run of chunks for file {id}")));
        }
        let check =
            |&(i, a, b): &(u32, usize, usize)| Hash::of(&data[a..b]) == chunks[i as usize].hash;
        let good: Vec<bool> = if data.len() >= 256 * 1024 {
            use rayon::prelude::*;
            pieces.par_iter().map(check).collect()
        } else {
            pieces.iter().map(check).collect()
        };
        for ((i, a, b), ok) in pieces.into_iter().zip(good) {
            if !self.jobs.contains_key(&id) {
                break; // refused on an earlier chunk of the run
            }
            self.accept_chunk(id, i, &data[a..b], ok, (b - a) as u64, txn, stats)?;
        }
        Ok(())
    }

    /// Takes chunk `index` of file `id` (its length checked; `good`: its
    /// hash matched) and writes it wherever it is awaited.
    #[allow(clippy::too_many_arguments)]
    fn accept_chunk(
        &mut self,
        id: u32,
        index: u32,
        data: &[u8],
        good: bool,
        sent: u64,
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
        let c = job.chunks.as_ref().expect("chunk list known")[index as usize];
        if !good {
            // The client does not hash what it sends a second time: a source
            // file rewritten in place during the pass shows up here. Nothing
            // is published; the next pass sends the file again.
            let r = OpReport {
                detail: Some(format!(
                    "content changed while being sent (chunk {index} does not match its hash); left unchanged"
                )),
                ..simple(Op::Error, self.key(id), Reason::Failed)
            };
            self.ctx.report(stats, r);
            self.drop_job(id, false);
            return Ok(());
        }
        self.owner.remove(&c.hash);
        let mut done = Vec::new();
        let mut places = vec![(id, index)];
        places.extend(self.waiters.remove(&c.hash).unwrap_or_default());
        for (n, (jid, ji)) in places.into_iter().enumerate() {
            let Some(job) = self.jobs.get_mut(&jid) else {
                continue;
            };
            let Some(t) = &job.tmp else { continue };
            if let Err(e) = write_at(&t.file, data, job.offs[ji as usize]) {
                let key = self.key(jid);
                self.ctx.report(stats, failure(key, "write", &e));
                self.drop_job(jid, false);
                continue;
            }
            job.note_written(ji, data);
            if n == 0 {
                let sent = sent.min(data.len() as u64);
                job.received += sent;
                job.reused += data.len() as u64 - sent;
                stats.received += sent;
                self.ctx.st.stats.note_received(sent);
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

    /// Verifies the assembled file and renames it into place.
    fn publish(&mut self, id: u32, txn: &mut IndexTxn, stats: &mut PassStats) -> Result<()> {
        let Some(mut job) = self.jobs.remove(&id) else {
            return Ok(());
        };
        self.ctx.link.send(ServerMsg::Done { id });
        let key = self.key(id);
        let e = self.entry(id);
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
        if self.ctx.dry {
            stats.received += job.received;
        }
        if let Some(tmp) = job.tmp.take() {
            // A one-chunk file was verified in memory, chunk hash = file hash;
            // larger files are read back and hashed whole.
            let verified = match job.chunks.as_deref() {
                Some([c]) => c.hash == job.hash && c.len as u64 == job.size,
                Some([]) => job.size == 0 && job.hash == Hash::of(&[]),
                _ => false,
            };
            // Written in order: the whole-file hash was computed on the way.
            let streamed = match job.inc.take() {
                Some((h, next)) if next as usize == job.offs.len().saturating_sub(1) => {
                    Some(Hash(*h.finalize().as_bytes()))
                }
                _ => None,
            };
            let check = if verified {
                Ok((job.size, job.hash))
            } else if let Some(hash) = streamed {
                Ok((job.size, hash))
            } else {
                std::fs::File::try_clone(&tmp.file).and_then(|f| {
                    use std::io::{Seek, SeekFrom};
                    let mut f = f;
                    f.seek(SeekFrom::Start(0))?;
                    hash_reader(f, job.size)
                })
            };
            match check {
                Ok((size, hash)) if hash == job.hash && size == job.size => {}
                Ok(_) => {
                    let r = OpReport {
                        detail: Some(
                            "assembled content does not match the source hash; left unchanged"
                                .into(),
                        ),
                        ..simple(Op::Error, key, Reason::Failed)
                    };
                    self.ctx.report(stats, r);
                    return Ok(());
                }
                Err(err) => {
                    self.ctx.report(stats, failure(key, "verify", &err));
                    return Ok(());
                }
            }
            let mtime: Timestamp = e.mtime;
            if job.fetch.has_old {
                self.stash_old(key, txn)?;
            }
            match self
                .ctx
                .st
                .replica
                .publish(tmp, key, e.mode, mtime, self.ctx.st.fsync)
            {
                Ok(ino) => {
                    let digest = Digest {
                        size: job.size,
                        hash: job.hash,
                        chunks: job.chunks.take().unwrap_or_default(),
                    };
                    if let Some(siblings) = &mut self.siblings {
                        use crate::delta::{BASIS_MAX_FILE, BASIS_MIN_FILE};
                        if (BASIS_MIN_FILE..=BASIS_MAX_FILE).contains(&job.size) {
                            let same = siblings.entry(sibling_class(key)).or_default();
                            let item = (job.size, key);
                            let at = same.partition_point(|x| *x < item);
                            same.insert(at, item);
                        }
                    }
                    txn.put_file(
                        key,
                        &FileRecord {
                            size: job.size,
                            mtime,
                            ino,
                            digest,
                        },
                    )?;
                }
                Err(err) => {
                    self.ctx
                        .report(stats, failure(key, "rename into place", &err));
                    return Ok(());
                }
            }
        }
        self.ctx.st.stats.note_reused(job.reused);
        self.ctx.report(stats, report);
        Ok(())
    }

    /// Forgets a job; chunks it owned are asked again through a waiter.
    /// Gives up on file `id` for this pass; with `keep`, what it received
    /// so far is set aside for a later pass (large files only).
    fn drop_job(&mut self, id: u32, keep: bool) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        if !job.summarized {
            self.awaiting_summary = self.awaiting_summary.saturating_sub(1);
        }
        let job = if keep {
            self.set_aside(id, job)
        } else {
            Some(job)
        };
        self.dropped.insert(id);
        let owned: Vec<Hash> = self
            .owner
            .iter()
            .filter(|(_, (o, _))| *o == id)
            .map(|(h, _)| *h)
            .collect();
        for h in owned {
            self.owner.remove(&h);
            let mut ws = self.waiters.remove(&h).unwrap_or_default();
            ws.retain(|(w, _)| *w != id && self.jobs.contains_key(w));
            if let Some((wid, wi)) = ws.first().copied() {
                self.owner.insert(h, (wid, wi));
                if let Some(j) = self.jobs.get_mut(&wid) {
                    j.asked.insert(wi);
                }
                self.waiters.insert(h, ws[1..].to_vec());
                self.ctx.link.send(ServerMsg::NeedChunks {
                    id: wid,
                    ranges: vec![(wi, 1)],
                });
            }
        }
        for ws in self.waiters.values_mut() {
            ws.retain(|(w, _)| *w != id);
        }
        drop(job);
        self.ctx.link.send(ServerMsg::Done { id });
    }

    /// Keeps a large file's temporary file and written chunks as a partial
    /// (see [`super::partial`]); gives the job back if it is not kept.
    fn set_aside(&self, id: u32, mut job: Job) -> Option<Job> {
        let st = self.ctx.st;
        if self.ctx.dry || job.chunks.is_none() || job.tmp.is_none() {
            return Some(job);
        }
        let tmp = job.tmp.take().expect("checked");
        let written = std::mem::take(&mut job.written);
        let pass = st.pass_seq.load(std::sync::atomic::Ordering::Relaxed);
        st.partials
            .keep(self.key(id), tmp, job.size, job.hash, written, pass);
        None
    }

    /// At an interruption or a broken link: sets aside what large files
    /// received so far; the rest is removed.
    fn set_aside_all(&mut self) {
        let jobs: Vec<(u32, Job)> = self.jobs.drain().collect();
        for (id, job) in jobs {
            let _ = self.set_aside(id, job);
        }
    }
}

impl Job {
    /// Feeds the running whole-file hash while chunks are written in order;
    /// the first write out of order gives it up (the file is read back).
    fn note_written(&mut self, i: u32, data: &[u8]) {
        if let Some(w) = self.written.get_mut(i as usize) {
            *w = true;
        }
        if let Some((h, next)) = &mut self.inc {
            if *next == i {
                if data.len() >= 1 << 20 {
                    h.update_rayon(data);
                } else {
                    h.update(data);
                }
                *next += 1;
            } else {
                self.inc = None;
            }
        }
    }

    fn new(fetch: Fetch) -> Self {
        Job {
            fetch,
            size: 0,
            summarized: false,
            basis: None,
            inc: Some((blake3::Hasher::new(), 0)),
            hash: Hash([0; 32]),
            chunks: None,
            groups: Vec::new(),
            group_total: 0,
            group_chunks: Vec::new(),
            groups_missing: 0,
            offs: Vec::new(),
            tmp: None,
            written: Vec::new(),
            missing: 0,
            asked: HashSet::new(),
            received: 0,
            reused: 0,
        }
    }
}

/// Chunk `i` of file `id` could not be copied locally: wait for it if
/// another file asked for it, else ask for it.
fn failed_set_ask(t: &mut Transfer, id: u32, i: u32, chunks: &[ChunkRef], ask: &mut Vec<u32>) {
    let h = chunks[i as usize].hash;
    match t.owner.entry(h) {
        std::collections::hash_map::Entry::Occupied(_) => {
            t.waiters.entry(h).or_default().push((id, i))
        }
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert((id, i));
            ask.push(i);
        }
    }
}

fn parent_key(key: &str) -> &str {
    key.rfind('/').map(|i| &key[..i]).unwrap_or("")
}

/// Files at least this large are fetched after all the others of a pass.
const BIG_FILE: u64 = 16 << 20;

/// The fetch order: smaller files in manifest order (directory by
/// directory), then the big ones, so a few large files never hold up many
/// small changes.
fn is_big(ctx: &PassCtx, f: &Fetch) -> bool {
    now_size(&ctx.manifest.entries[f.id as usize].kind) >= BIG_FILE
}

fn small_first(ctx: &PassCtx, mut fetch: Vec<Fetch>) -> VecDeque<Fetch> {
    // A stable sort on "is big" keeps manifest order within each part, and
    // the deque takes over the vector's buffer (no copy of a million items).
    fetch.sort_by_key(|f| is_big(ctx, f));
    VecDeque::from(fetch)
}

/// Directory and extension of a key: files of one class are siblings.
fn sibling_class(key: &str) -> String {
    format!("{}\0{}", parent_key(key), extension(key))
}

fn extension(key: &str) -> &str {
    let name = &key[key.rfind('/').map(|i| i + 1).unwrap_or(0)..];
    name.rfind('.').map(|i| &name[i..]).unwrap_or("")
}

fn now_size(k: &Kind) -> u64 {
    match k {
        Kind::File { size } => *size,
        _ => u64::MAX,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_compress_consecutive_indexes() {
        assert_eq!(runs(&[0, 1, 2, 5, 7, 8]), vec![(0, 3), (5, 1), (7, 2)]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn chunk_lists_are_checked() {
        let c = |len| ChunkRef {
            hash: Hash([0; 32]),
            len,
        };
        assert!(check_chunk_list(&[c(MIN_CHUNK), c(10)], MIN_CHUNK as u64 + 10).is_ok());
        assert!(check_chunk_list(&[c(10), c(MIN_CHUNK)], MIN_CHUNK as u64 + 10).is_err());
        assert!(check_chunk_list(&[c(MAX_CHUNK + 1)], MAX_CHUNK as u64 + 1).is_err());
        assert!(check_chunk_list(&[c(5)], 6).is_err());
        assert!(check_chunk_list(&[], 0).is_ok());
    }
}
