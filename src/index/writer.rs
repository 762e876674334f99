//! The thread that writes a pass's index: the session thread hands it
//! batches of held writes (`pending.rs`), each written and committed in
//! order, and goes on at once. Until the writer says a batch is committed
//! the session keeps it and reads it before the database; it lets go of a
//! batch only after opening a read transaction that sees its commit, so a
//! lookup never misses a write.
//!
//! A pass that ends without its commit (an error, a killed server) leaves
//! the index as of the last batch committed: a prefix of the pass's
//! writes, as with checkpoints on one thread.

use super::index_err;
use super::pending::{write_held, Pending};
use crate::error::{Error, Result};
use redb::{Database, Durability, ReadTransaction};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// Batches handed over and not yet committed, at most (the session waits
/// beyond): each holds at most a checkpoint's writes.
const IN_FLIGHT: usize = 2;

/// A batch to write and commit; `last` commits durably and ends the writer.
struct Batch {
    seq: u64,
    held: Arc<Pending>,
    last: bool,
}

/// The session thread's end of the writer.
pub(super) struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    tx: Option<SyncSender<Batch>>,
    acks: Receiver<Result<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Handed over, not known to be committed: newest last.
    in_flight: VecDeque<(u64, Arc<Pending>)>,
    next_seq: u64,
    /// Sees every batch no longer in `in_flight`.
    read: ReadTransaction,
}

impl Writer {
    /// A writer of `db`; `durable`: the index itself (the last batch is
    /// synced, removals remove). Otherwise a dry run's overlay: nothing is
    /// synced and removals are written as empty values (tombstones over
    /// the index below).
    pub fn start(db: Arc<Database>, path: PathBuf, durable: bool) -> Result<Writer> {
        let read = db.begin_read().map_err(|e| index_err(&path, e))?;
        let (tx, rx) = sync_channel::<Batch>(IN_FLIGHT);
        let (ack_tx, acks) = std::sync::mpsc::channel();
        let (wdb, wpath) = (db.clone(), path.clone());
        let thread = std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || {
                let r = write_batches(&wdb, &wpath, durable, &rx, &ack_tx);
                if let Err(e) = r {
                    let _ = ack_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::io(&path, e))?;
        Ok(Writer {
            db,
            path,
            tx: Some(tx),
            acks,
            thread: Some(thread),
            in_flight: VecDeque::new(),
            next_seq: 0,
            read,
        })
    }

    /// The read transaction lookups go to after the batches in flight.
    pub fn read(&self) -> &ReadTransaction {
        &self.read
    }

    /// Batches handed over and not known to be committed, newest first.
    pub fn in_flight(&self) -> impl Iterator<Item = &Pending> {
        self.in_flight.iter().rev().map(|(_, p)| &**p)
    }

    /// Hands a batch over (waiting while [`IN_FLIGHT`] are queued).
    pub fn send(&mut self, held: Pending, last: bool) -> Result<()> {
        self.poll()?;
        let held = Arc::new(held);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push_back((seq, held.clone()));
        let tx = self.tx.as_ref().expect("open until the last batch");
        if tx.send(Batch { seq, held, last }).is_err() {
            // The writer stopped: its error is in the acks.
            return self.wait_all().and(Err(self.stopped()));
        }
        if last {
            self.tx = None;
        }
        Ok(())
    }

    fn stopped(&self) -> Error {
        index_err(&self.path, "the index writer stopped")
    }

    /// Takes the writer's answers so far, without waiting.
    pub fn poll(&mut self) -> Result<()> {
        let mut done = None;
        loop {
            match self.acks.try_recv() {
                Ok(r) => done = Some(r?),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    if self.in_flight.is_empty() {
                        break;
                    }
                    return Err(self.stopped());
                }
            }
        }
        if let Some(seq) = done {
            self.committed(seq)?;
        }
        Ok(())
    }

    /// Batches up to `seq` are committed: a fresh read transaction sees
    /// them, so they need not be kept.
    fn committed(&mut self, seq: u64) -> Result<()> {
        self.read = self.db.begin_read().map_err(|e| index_err(&self.path, e))?;
        while self.in_flight.front().is_some_and(|(s, _)| *s <= seq) {
            self.in_flight.pop_front();
        }
        Ok(())
    }

    /// Waits until every batch handed over is committed.
    pub fn wait_all(&mut self) -> Result<()> {
        while let Some(&(last, _)) = self.in_flight.back() {
            let seq = match self.acks.recv() {
                Ok(r) => r?,
                Err(_) => return Err(self.stopped()),
            };
            self.committed(seq)?;
            if seq >= last {
                break;
            }
        }
        Ok(())
    }

    /// Waits for the last batch and the thread's end.
    pub fn finish(mut self) -> Result<()> {
        let r = self.wait_all();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Without its last batch the writer's open transaction is dropped
        // uncommitted: the index stays as of its last commit.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_batches(
    db: &Database,
    path: &std::path::Path,
    durable: bool,
    rx: &Receiver<Batch>,
    acks: &std::sync::mpsc::Sender<Result<u64>>,
) -> Result<()> {
    for Batch { seq, held, last } in rx.iter() {
        let mut txn = db.begin_write().map_err(|e| index_err(path, e))?;
        // A checkpoint need not reach the disk: the end of the pass
        // commits durably, and one lost in a crash only costs hints.
        txn.set_durability(match (durable, last) {
            (false, _) => Durability::None,
            (true, true) => Durability::Immediate,
            (true, false) => Durability::Eventual,
        });
        write_held(&txn, &held, path, !durable)?;
        txn.commit().map_err(|e| index_err(path, e))?;
        drop(held);
        if acks.send(Ok(seq)).is_err() || last {
            return Ok(());
        }
    }
    Ok(())
}
