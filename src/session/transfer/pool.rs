//! Publishing off the session thread: a new file whose chunks are all in
//! its staged copy (or, for a small file whose chunks all came from the
//! client, whose content arrived in memory: the worker stages and writes
//! it) is verified (its chunk list
//! against its id; read back when its chunks were not checked on the way)
//! and published by one of a few worker threads, while
//! the session thread goes on with the next files' messages. Its index
//! record and report are written when the worker hands it back, so the
//! index never names a file before it is in place.
//!
//! Only new files go to the pool (no old version to keep aside, no
//! versions to record): publication stays one rename per file, atomic, and
//! two workers never touch the same path (one job per path in a pass).

use super::job::Job;
use super::publish::{stage_body, verify};
use crate::protocol::OpReport;
use crate::session::pass::Failure;
use crate::store::Store;
use crate::tree::{Entry, Timestamp, Version};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

/// Worker threads publishing at once.
pub(super) const WORKERS: usize = 2;
/// Batches handed over and not yet taken by a worker.
const QUEUED: usize = 8;
/// Files handed over at once: waking a worker per file would cost more
/// than many small files' publication.
const BATCH: usize = 32;
/// Content bytes a batch holds at most (files whose content waits in
/// memory for a worker to write it), so the queue holds a few MiB.
const BATCH_BYTES: usize = 256 << 10;

/// A file to verify and publish.
pub(super) struct Task {
    pub id: u32,
    pub job: Job,
    pub key: String,
    pub mode: Option<u32>,
    pub mtime: Timestamp,
    pub report: OpReport,
}

impl Task {
    pub fn new(id: u32, job: Job, key: &str, e: &Entry, report: OpReport) -> Task {
        Task {
            id,
            job,
            key: key.to_string(),
            mode: e.mode,
            mtime: e.mtime,
            report,
        }
    }
}

/// A file handed back: published (its version), or failed.
pub(super) struct Finished {
    pub id: u32,
    pub job: Job,
    pub report: OpReport,
    pub result: Result<Version, Failure>,
}

/// The session thread's end of the pool.
pub(super) struct Pool {
    tasks: Option<SyncSender<Vec<Task>>>,
    /// The batch being filled.
    batch: Vec<Task>,
    /// Content bytes held by the batch being filled.
    batch_bytes: usize,
    done: Receiver<Vec<Finished>>,
    /// Handed over and not handed back yet.
    pending: usize,
}

impl Pool {
    /// Starts the workers in `scope`; they end when the pool is dropped.
    pub fn start<'s, 'e: 's>(scope: &'s std::thread::Scope<'s, 'e>, store: &'e dyn Store) -> Pool {
        let (tasks, rx) = sync_channel::<Vec<Task>>(QUEUED);
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done) = channel();
        for _ in 0..WORKERS {
            let (rx, done_tx) = (rx.clone(), done_tx.clone());
            scope.spawn(move || work(store, &rx, &done_tx));
        }
        Pool {
            tasks: Some(tasks),
            batch: Vec::with_capacity(BATCH),
            batch_bytes: 0,
            done,
            pending: 0,
        }
    }

    /// Adds a file to the batch; a full batch is handed over (waiting
    /// while the workers are [`QUEUED`] batches behind).
    pub fn submit(&mut self, task: Task) {
        self.batch_bytes += task.job.body.as_ref().map_or(0, Vec::len);
        self.batch.push(task);
        if self.batch.len() >= BATCH || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Hands over the batch being filled.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.batch_bytes = 0;
        if let Some(t) = &self.tasks {
            if t.send(batch).is_ok() {
                self.pending += 1;
            }
        }
    }

    /// Files handed back so far, without waiting.
    pub fn finished(&mut self) -> Vec<Finished> {
        let mut got = Vec::new();
        for b in self.done.try_iter() {
            self.pending -= 1;
            got.extend(b);
        }
        got
    }

    /// The next batch handed back (the one being filled is handed over
    /// first), waiting for it; None when none is out.
    pub fn wait_one(&mut self) -> Option<Vec<Finished>> {
        self.flush();
        if self.pending == 0 {
            return None;
        }
        let f = self.done.recv().ok()?;
        self.pending -= 1;
        Some(f)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue ends the workers once it is empty; a file still
        // queued is published (its staged copy would be removed otherwise).
        self.flush();
        self.tasks = None;
    }
}

fn work(store: &dyn Store, rx: &Mutex<Receiver<Vec<Task>>>, done: &Sender<Vec<Finished>>) {
    loop {
        let batch = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(b) => b,
            Err(_) => return,
        };
        let finished: Vec<Finished> = batch.into_iter().map(|t| publish(store, t)).collect();
        if done.send(finished).is_err() {
            return;
        }
    }
}

fn publish(store: &dyn Store, task: Task) -> Finished {
    let Task {
        id,
        mut job,
        key,
        mode,
        mtime,
        report,
    } = task;
    // A large file written behind is complete once its writes are done.
    let written = job.settle().map_err(|e| Failure::store("write", e));
    let staged = match (job.tmp.take(), job.body.take()) {
        (_, _) if written.is_err() => written.err().map(Err),
        (Some(tmp), _) => Some(Ok(tmp)),
        (None, Some(body)) => Some(stage_body(store, &key, &body)),
        (None, None) => None,
    };
    let result = match staged {
        Some(Err(why)) => Err(why),
        Some(Ok(tmp)) => verify(&mut job, &*tmp).and_then(|()| {
            store
                .publish(tmp, &key, mode, mtime)
                .map_err(|e| Failure::store("rename into place", e))
        }),
        None => Err(Failure::Mismatch),
    };
    Finished {
        id,
        job,
        report,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkRef, Hash};
    use crate::plan::Fetch;
    use crate::protocol::{Op, Reason};
    use crate::session::pass::simple;
    use crate::store::LocalStore;
    use std::collections::HashSet;

    /// A staged file holding `data`, its job claiming `claimed` as content.
    fn task(store: &LocalStore, id: u32, data: &[u8], claimed: &[u8]) -> Task {
        let key = format!("d/f{id}");
        let mut tmp = store.stage(&key).unwrap();
        tmp.write_at(data, 0).unwrap();
        let mut job = Job::new(Fetch {
            id,
            reason: Reason::New,
            has_old: false,
        });
        job.size = claimed.len() as u64;
        // Two chunks not checked on the way (as for a resumed partial): the
        // worker reads the staged file back to check them.
        let half = claimed.len() / 2;
        job.chunks = Some(vec![
            ChunkRef {
                hash: Hash::of(&claimed[..half]),
                len: half as u32,
            },
            ChunkRef {
                hash: Hash::of(&claimed[half..]),
                len: (claimed.len() - half) as u32,
            },
        ]);
        job.hash = crate::chunk::file_id(job.chunk_list());
        job.reread = true;
        job.tmp = Some(tmp);
        let report = simple(Op::Created, &key, Reason::New);
        Task {
            id,
            job,
            key,
            mode: Some(0o640),
            mtime: Timestamp {
                secs: 1_700_000_000 + i64::from(id),
                nanos: 5,
            },
            report,
        }
    }

    #[test]
    fn every_file_handed_over_comes_back_once_published_or_failed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let store = LocalStore::open(dir.path(), false).unwrap();
        let n = 3 * BATCH as u32 + 5;
        let mut back = HashSet::new();
        std::thread::scope(|s| {
            let mut pool = Pool::start(s, &store);
            for id in 0..n {
                let data = format!("file {id}").into_bytes();
                // Every seventh file is not what its hash says: refused.
                let claimed = if id % 7 == 3 {
                    b"other".to_vec()
                } else {
                    data.clone()
                };
                pool.submit(task(&store, id, &data, &claimed));
            }
            while let Some(batch) = pool.wait_one() {
                for f in batch {
                    assert!(back.insert(f.id), "file {} came back twice", f.id);
                    match (f.id % 7 == 3, &f.result) {
                        (false, Ok(_)) | (true, Err(Failure::Mismatch)) => {}
                        (_, r) => panic!("file {}: {:?}", f.id, r.as_ref().err()),
                    }
                }
            }
        });
        assert_eq!(back.len(), n as usize);
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want: Vec<String> = (0..n)
            .filter(|id| id % 7 != 3)
            .map(|id| format!("f{id}"))
            .collect();
        want.sort();
        // Published under their names, nothing staged left behind.
        assert_eq!(names, want);
        for id in (0..n).filter(|id| id % 7 != 3) {
            let p = dir.path().join(format!("d/f{id}"));
            assert_eq!(
                std::fs::read(&p).unwrap(),
                format!("file {id}").into_bytes()
            );
            let m = std::fs::metadata(&p).unwrap();
            let mtime = m.modified().unwrap();
            let secs = mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert_eq!(secs, 1_700_000_000 + u64::from(id));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(m.permissions().mode() & 0o777, 0o640);
            }
        }
    }

    #[test]
    fn a_pool_dropped_with_a_partial_batch_still_publishes_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let store = LocalStore::open(dir.path(), false).unwrap();
        std::thread::scope(|s| {
            let mut pool = Pool::start(s, &store);
            pool.submit(task(&store, 1, b"one", b"one"));
            drop(pool);
        });
        assert_eq!(std::fs::read(dir.path().join("d/f1")).unwrap(), b"one");
    }
}
