//! One file in flight: what the client said about it, where its chunks
//! come from, and how far its staged copy is.

use super::behind::{Behind, Target};
use crate::chunk::{ChunkRef, GroupRef, Hash};
use crate::plan::Fetch;
use crate::store::Staged;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub(super) struct Job {
    pub fetch: Fetch,
    /// The replica file offered as a basis (the old version, or a similar
    /// sibling for a new file) and its fine pieces (offset, len).
    pub basis: Option<(String, Vec<(u64, u32)>)>,
    /// Whether the client's summary arrived.
    pub summarized: bool,
    /// What the file does once its basis is ready (see `bases.rs`); None
    /// when it is not waiting for one.
    pub waiting: Option<super::bases::Waiting>,
    /// Whether the staged file must be read back and every chunk checked
    /// before it is published: it holds chunks written in an earlier pass
    /// (a resumed partial). Otherwise every chunk was checked as it was
    /// written, which checks the file (its id follows from its chunks).
    pub reread: bool,
    pub size: u64,
    pub hash: Hash,
    /// Known chunk list (None for a large file until its groups are resolved).
    pub chunks: Option<Vec<ChunkRef>>,
    pub groups: Vec<GroupRef>,
    pub group_chunks: Vec<Option<Vec<ChunkRef>>>,
    pub groups_missing: usize,
    pub offs: Vec<u64>,
    /// The staged file (None when the store records nothing, or while a
    /// small new file's staging is left to the publishing pool).
    pub tmp: Option<Box<dyn Staged>>,
    /// A large file's staged copy written behind the session thread (see
    /// `behind.rs`): every write goes through it.
    pub behind: Option<Arc<Target>>,
    /// A small new file staged, written and published by the pool (see
    /// `pool.rs`): nothing staged; its chunks are gathered in `body`.
    pub deferred: bool,
    /// That file's content (its chunks, hash-checked, as they arrive).
    pub body: Option<Vec<u8>>,
    /// Bytes this job holds of [`super::assemble::DEFER_BUDGET`].
    pub budget: u64,
    /// Which chunks are in the staged file (hash-checked).
    pub written: Vec<bool>,
    /// Chunk indexes not yet written.
    pub missing: usize,
    /// Chunk indexes this job asked the client for.
    pub asked: HashSet<u32>,
    /// Fine pieces (offset, len) of the old ranges named for a chunk's
    /// second round, until its delta arrives.
    pub fine: HashMap<u32, Vec<(u64, u32)>>,
    /// Chunks whose second round named a wrong piece once: no second round.
    pub no_fine: HashSet<u32>,
    pub received: u64,
    pub reused: u64,
}

impl Job {
    pub fn new(fetch: Fetch) -> Self {
        Job {
            fetch,
            size: 0,
            summarized: false,
            waiting: None,
            basis: None,
            reread: false,
            hash: Hash([0; 32]),
            chunks: None,
            groups: Vec::new(),
            group_chunks: Vec::new(),
            groups_missing: 0,
            offs: Vec::new(),
            tmp: None,
            behind: None,
            deferred: false,
            body: None,
            budget: 0,
            written: Vec::new(),
            missing: 0,
            asked: HashSet::new(),
            fine: HashMap::new(),
            no_fine: HashSet::new(),
            received: 0,
            reused: 0,
        }
    }

    /// Puts checked content at `at`: in the body of a deferred file (sized
    /// on first use; `at` and `data` lie within the file, as its chunk list
    /// says), else in the staged file.
    /// A file written behind hands a copy to the writer (`w`).
    pub fn put(&mut self, data: &[u8], at: u64, w: Option<&Behind>) -> std::io::Result<()> {
        if let (Some(t), Some(w)) = (&self.behind, w) {
            w.write(t, data.to_vec(), at);
            return Ok(());
        }
        if self.deferred {
            let size = self.size as usize;
            let body = self.body.get_or_insert_with(|| vec![0; size]);
            let at = at as usize;
            body[at..at + data.len()].copy_from_slice(data);
            return Ok(());
        }
        match self.tmp.as_mut() {
            Some(t) => t.write_at(data, at),
            None => Ok(()),
        }
    }

    /// As [`Job::put`], handing `data` itself to the writer.
    pub fn put_owned(&mut self, data: Vec<u8>, at: u64, w: Option<&Behind>) -> std::io::Result<()> {
        match (&self.behind, w) {
            (Some(t), Some(w)) => {
                w.write(t, data, at);
                Ok(())
            }
            _ => self.put(&data, at, None),
        }
    }

    /// Waits until what was written behind is in the staged file (see
    /// `behind.rs`); the first write that failed, if any.
    pub fn settle(&self) -> std::io::Result<()> {
        self.behind.as_ref().map_or(Ok(()), |t| t.settle())
    }

    /// Notes that chunk `i`, checked against its hash, is in the staged file.
    pub fn note_written(&mut self, i: u32) {
        if let Some(w) = self.written.get_mut(i as usize) {
            *w = true;
        }
    }

    /// The chunk list (known once the job is being assembled).
    pub fn chunk_list(&self) -> &[ChunkRef] {
        self.chunks.as_deref().expect("chunk list known")
    }
}
