//! Bases read and cut ahead, off the session thread: when a file's summary
//! says its content is new, the session thread only chooses its basis
//! (`basis.rs`) and hands it to a worker, which reads the replica file and
//! cuts and hashes its pieces while the session thread handles the next
//! messages. The file waits ([`Waiting`]) until its basis comes back; then
//! the `Basis` message goes out and only after it the file's requests
//! (`NeedChunks`, `NeedGroupHashes`): the client reads each file's basis
//! before the requests that may use it, as before.

use super::basis::{prepare, BasisTask, Prepared};
use crate::chunk::ChunkRef;
use crate::store::Store;
use std::sync::mpsc::{channel, Receiver, Sender};

/// What a file waiting for its basis does next.
pub(super) enum Waiting {
    /// Its chunk list came with the summary: assemble it.
    Assemble(Vec<ChunkRef>),
    /// A large file: ask for its group list.
    AskGroups,
}

/// A basis handed back: the file and its basis (None: it could not be read).
pub(super) struct Ready {
    pub id: u32,
    pub key: String,
    pub basis: Option<Prepared>,
}

/// The session thread's end of the bases worker.
pub(super) struct Bases {
    tasks: Option<Sender<BasisTask>>,
    done: Receiver<Ready>,
    /// Handed over and not handed back yet.
    pending: usize,
}

impl Bases {
    /// Starts the worker in `scope`; it ends when this is dropped (once
    /// what was handed over is done).
    pub fn start<'s, 'e: 's>(scope: &'s std::thread::Scope<'s, 'e>, store: &'e dyn Store) -> Bases {
        let (tasks, rx) = channel::<BasisTask>();
        let (done_tx, done) = channel();
        scope.spawn(move || work(store, &rx, &done_tx));
        Bases {
            tasks: Some(tasks),
            done,
            pending: 0,
        }
    }

    /// Hands a basis over (false: the worker is gone).
    pub fn submit(&mut self, task: BasisTask) -> bool {
        let sent = self.tasks.as_ref().is_some_and(|t| t.send(task).is_ok());
        self.pending += usize::from(sent);
        sent
    }

    /// Whether bases are out.
    pub fn busy(&self) -> bool {
        self.pending > 0
    }

    /// Bases handed back so far, without waiting.
    pub fn ready(&mut self) -> Vec<Ready> {
        let got: Vec<Ready> = self.done.try_iter().collect();
        self.pending -= got.len();
        got
    }

    /// The next basis handed back, waiting for it; None when none is out.
    pub fn wait_one(&mut self) -> Option<Ready> {
        if self.pending == 0 {
            return None;
        }
        let r = self.done.recv().ok()?;
        self.pending -= 1;
        Some(r)
    }
}

impl Drop for Bases {
    fn drop(&mut self) {
        self.tasks = None;
    }
}

fn work(store: &dyn Store, rx: &Receiver<BasisTask>, done: &Sender<Ready>) {
    while let Ok(task) = rx.recv() {
        let basis = prepare(store, &task);
        let ready = Ready {
            id: task.id,
            key: task.key,
            basis,
        };
        if done.send(ready).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[test]
    fn every_basis_comes_back_in_order_read_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("a.html"), &body).unwrap();
        let store = LocalStore::open(dir.path(), false).unwrap();
        let want = crate::delta::basis_of(&body, 2048);
        std::thread::scope(|s| {
            let mut bases = Bases::start(s, &store);
            for id in 0..10u32 {
                // Every third names a file that is not there.
                let key = if id % 3 == 2 { "gone.html" } else { "a.html" };
                assert!(bases.submit(BasisTask {
                    id,
                    key: key.into(),
                    size: body.len() as u64,
                    avg: 2048,
                }));
            }
            assert!(bases.busy());
            let mut back = Vec::new();
            while let Some(r) = bases.wait_one() {
                back.push(r);
            }
            assert!(!bases.busy());
            assert_eq!(
                back.iter().map(|r| r.id).collect::<Vec<_>>(),
                (0..10).collect::<Vec<_>>()
            );
            for r in back {
                match (r.id % 3 == 2, r.basis) {
                    (true, None) => {}
                    (false, Some(p)) => {
                        assert_eq!((p.avg, &p.places, &p.hashes), (2048, &want.0, &want.1));
                    }
                    (gone, b) => panic!("file {}: gone {gone}, basis {}", r.id, b.is_some()),
                }
            }
        });
    }

    #[test]
    fn a_basis_shorter_than_recorded_is_not_offered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.rs"), vec![b'x'; 5000]).unwrap();
        let store = LocalStore::open(dir.path(), false).unwrap();
        let t = |size| BasisTask {
            id: 1,
            key: "a.rs".into(),
            size,
            avg: 256,
        };
        assert!(prepare(&store, &t(6000)).is_none());
        assert_eq!(
            prepare(&store, &t(5000))
                .unwrap()
                .places
                .iter()
                .map(|p| p.1 as u64)
                .sum::<u64>(),
            5000
        );
    }
}
