//! Large files written behind the session thread: the staged copy of a
//! file of [`BEHIND_MIN`] bytes or more gets a second handle
//! ([`crate::store::Staged::writer`]), and its checked chunks (runs from
//! the client, copies from the replica) are written by one writer thread
//! while the session thread goes on reading messages. Every write of such
//! a file goes through the writer, in order, so two writes never race.
//!
//! Nothing reads the staged file, keeps it aside or publishes it before
//! [`Target::settle`] says every write handed over is done (or which one
//! failed): chunks are checked before they are handed over, and the file
//! is published only once they are all in it.

use crate::store::WriteAt;
use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};

/// Files at least this large are written behind (smaller new files are
/// written whole by the publishing pool already, see `pool.rs`).
pub(super) const BEHIND_MIN: u64 = 1 << 20;
/// Bytes handed over and not yet written, at most (the session thread
/// waits beyond this): memory stays a few MiB whatever the disk's pace.
const MAX_QUEUED: usize = 8 << 20;

/// One file written behind.
pub(super) struct Target {
    file: Box<dyn WriteAt>,
    state: Mutex<State>,
    idle: Condvar,
}

#[derive(Default)]
struct State {
    /// Writes handed over and not done.
    pending: usize,
    /// The first write that failed.
    error: Option<io::Error>,
}

impl Target {
    pub fn new(file: Box<dyn WriteAt>) -> Arc<Target> {
        Arc::new(Target {
            file,
            state: Mutex::new(State::default()),
            idle: Condvar::new(),
        })
    }

    /// Waits until every write handed over is done; the first failure, if any.
    pub fn settle(&self) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.pending > 0 {
            st = self.idle.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        match st.error.take() {
            Some(e) => {
                // Failed once, failed for good: the file is not published.
                st.error = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn done(&self, r: io::Result<()>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pending -= 1;
        if let Err(e) = r {
            st.error.get_or_insert(e);
        }
        if st.pending == 0 {
            self.idle.notify_all();
        }
    }
}

struct Write {
    to: Arc<Target>,
    data: Vec<u8>,
    at: u64,
}

/// Bytes handed over and not yet written.
#[derive(Default)]
struct Queued {
    bytes: Mutex<usize>,
    drained: Condvar,
}

/// The session thread's end of the writer thread.
pub(super) struct Behind {
    tx: Sender<Write>,
    queued: Arc<Queued>,
}

impl Behind {
    /// Starts the writer in `scope`; it ends when this is dropped, once
    /// every write handed over is done.
    pub fn start<'s>(scope: &'s std::thread::Scope<'s, '_>) -> Behind {
        let (tx, rx) = channel::<Write>();
        let queued = Arc::new(Queued::default());
        let q = queued.clone();
        scope.spawn(move || work(&rx, &q));
        Behind { tx, queued }
    }

    /// Hands `data` over to be written at `at` into `to` (waits while
    /// [`MAX_QUEUED`] bytes are queued). A failure shows in `settle`.
    pub fn write(&self, to: &Arc<Target>, data: Vec<u8>, at: u64) {
        let len = data.len();
        {
            let mut q = self.queued.bytes.lock().unwrap_or_else(|e| e.into_inner());
            while *q > 0 && *q + len > MAX_QUEUED {
                q = self
                    .queued
                    .drained
                    .wait(q)
                    .unwrap_or_else(|e| e.into_inner());
            }
            *q += len;
        }
        to.state.lock().unwrap_or_else(|e| e.into_inner()).pending += 1;
        let w = Write {
            to: to.clone(),
            data,
            at,
        };
        if let Err(back) = self.tx.send(w) {
            // The writer is gone (it only ends with this): write here.
            let w = back.0;
            let r = w.to.file.write_at(&w.data, w.at);
            w.to.done(r);
            self.unqueue(len);
        }
    }

    fn unqueue(&self, len: usize) {
        unqueue(&self.queued, len);
    }
}

fn unqueue(q: &Queued, len: usize) {
    let mut b = q.bytes.lock().unwrap_or_else(|e| e.into_inner());
    *b -= len;
    q.drained.notify_all();
}

fn work(rx: &Receiver<Write>, queued: &Queued) {
    while let Ok(w) = rx.recv() {
        let len = w.data.len();
        let r = w.to.file.write_at(&w.data, w.at);
        drop(w.data);
        w.to.done(r);
        unqueue(queued, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in memory; fails writes at `fail_at`.
    struct Mem {
        data: Mutex<Vec<u8>>,
        fail_at: Option<u64>,
    }

    impl WriteAt for Arc<Mem> {
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if Some(offset) == self.fail_at {
                return Err(io::Error::other("disk full"));
            }
            let mut d = self.data.lock().unwrap();
            let end = offset as usize + buf.len();
            if d.len() < end {
                d.resize(end, 0);
            }
            d[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
    }

    fn mem(fail_at: Option<u64>) -> Arc<Mem> {
        Arc::new(Mem {
            data: Mutex::new(Vec::new()),
            fail_at,
        })
    }

    #[test]
    fn settled_means_every_write_is_in_place_in_order() {
        let m = mem(None);
        std::thread::scope(|s| {
            let behind = Behind::start(s);
            let t = Target::new(Box::new(m.clone()));
            // Overlapping writes land in the order handed over; more bytes
            // than the queue holds.
            for i in 0..40u64 {
                behind.write(&t, vec![i as u8; 1 << 20], i * 1000);
            }
            t.settle().unwrap();
            let d = m.data.lock().unwrap();
            assert_eq!(d.len(), 39 * 1000 + (1 << 20));
            for i in 0..39usize {
                assert_eq!(d[i * 1000], i as u8);
            }
            assert!(d[39_000..].iter().all(|&b| b == 39));
        });
    }

    #[test]
    fn a_failed_write_fails_every_later_settle() {
        let m = mem(Some(4096));
        std::thread::scope(|s| {
            let behind = Behind::start(s);
            let t = Target::new(Box::new(m.clone()));
            behind.write(&t, vec![1; 4096], 0);
            behind.write(&t, vec![2; 4096], 4096);
            behind.write(&t, vec![3; 4096], 8192);
            assert!(t.settle().is_err());
            assert!(t.settle().is_err());
            // The other writes were still done; a second file is unaffected.
            let ok = Target::new(Box::new(mem(None)));
            behind.write(&ok, vec![4; 10], 0);
            ok.settle().unwrap();
        });
        assert_eq!(m.data.lock().unwrap().len(), 3 * 4096);
    }

    #[test]
    fn writes_handed_over_are_done_when_the_writer_ends() {
        let m = mem(None);
        let t = Target::new(Box::new(m.clone()));
        std::thread::scope(|s| {
            let behind = Behind::start(s);
            for i in 0..5u64 {
                behind.write(&t, vec![7; 100], i * 100);
            }
            drop(behind);
        });
        t.settle().unwrap();
        assert_eq!(*m.data.lock().unwrap(), vec![7; 500]);
    }
}
