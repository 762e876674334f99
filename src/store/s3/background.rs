//! Writes that run while the session goes on: PUTs of small files and
//! markers, server-side copies, a bounded number at once (the session
//! waits for a slot, so bodies held in memory are bounded too), and deletes
//! gathered into batches of a thousand.
//!
//! Each write is registered under the store keys it touches; any later
//! operation on one of them waits for it first. Deletes run only once every
//! write started before them is over (a copy may still read what is about
//! to go), and a new write to a doomed object takes it off the list.
//! Failures are kept for the end of the pass ([`Background::finish`]).

use super::client::Conn;
use super::writes;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Background writes in flight at once.
const WRITES_AT_ONCE: usize = 32;
/// Deletes gathered before they are sent.
const DELETE_BATCH: usize = 1000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One write in flight, shared by the keys it touches.
#[derive(Clone)]
struct Pending {
    done: watch::Receiver<bool>,
    error: Arc<Mutex<Option<io::Error>>>,
}

pub struct Background {
    conn: Arc<Conn>,
    pending: Mutex<HashMap<String, Pending>>,
    failures: Mutex<Vec<(String, io::Error)>>,
    slots: Arc<tokio::sync::Semaphore>,
    doomed: Mutex<HashSet<String>>,
}

impl Background {
    pub fn new(conn: Arc<Conn>) -> Background {
        Background {
            conn,
            pending: Mutex::new(HashMap::new()),
            failures: Mutex::new(Vec::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(WRITES_AT_ONCE)),
            doomed: Mutex::new(HashSet::new()),
        }
    }

    /// Waits for the write registered under `key`, if any; its failure is
    /// returned (and kept for the end of the pass, once).
    pub fn wait(&self, key: &str) -> io::Result<()> {
        let p = lock(&self.pending).remove(key);
        let Some(mut p) = p else {
            return Ok(());
        };
        let _ = self.conn.run(p.done.wait_for(|d| *d));
        let error = lock(&p.error).take();
        match error {
            None => Ok(()),
            Some(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                lock(&self.failures).push((key.to_string(), e));
                Err(copy)
            }
        }
    }

    /// Waits for the writes at or below `key` (all of them for `""`).
    pub fn wait_below(&self, key: &str) {
        let inside = format!("{key}/");
        let keys: Vec<String> = lock(&self.pending)
            .keys()
            .filter(|k| key.is_empty() || *k == key || k.starts_with(&inside))
            .cloned()
            .collect();
        for k in keys {
            let _ = self.wait(&k);
        }
    }

    /// Settles the writes already over (the map stays small).
    fn sweep(&self) {
        if lock(&self.pending).len() < 4 * WRITES_AT_ONCE {
            return;
        }
        let over: Vec<String> = lock(&self.pending)
            .iter()
            .filter(|(_, p)| *p.done.borrow())
            .map(|(k, _)| k.clone())
            .collect();
        for k in over {
            let _ = self.wait(&k);
        }
    }

    /// Starts `f` for the store keys `keys`, after their earlier writes;
    /// `objects` are the objects it writes (taken off the delete list).
    pub fn start<F>(&self, keys: &[&str], objects: &[&str], f: F)
    where
        F: std::future::Future<Output = io::Result<()>> + Send + 'static,
    {
        for k in keys {
            let _ = self.wait(k);
        }
        {
            let mut doomed = lock(&self.doomed);
            for o in objects {
                doomed.remove(*o);
            }
        }
        self.sweep();
        let slot = self.conn.run(self.slots.clone().acquire_owned());
        let (tx, rx) = watch::channel(false);
        let error = Arc::new(Mutex::new(None));
        let err2 = error.clone();
        self.conn.spawn(async move {
            let _slot = slot;
            if let Err(e) = f.await {
                *lock(&err2) = Some(e);
            }
            let _ = tx.send(true);
        });
        let p = Pending { done: rx, error };
        let mut pending = lock(&self.pending);
        for k in keys {
            pending.insert(k.to_string(), p.clone());
        }
    }

    /// A write of `object` outside this module: no delete may follow it.
    pub fn spare(&self, object: &str) {
        lock(&self.doomed).remove(object);
    }

    /// Deletes `object` later, in a batch.
    pub fn doom(&self, object: String) -> io::Result<()> {
        let full = {
            let mut d = lock(&self.doomed);
            d.insert(object);
            d.len() >= DELETE_BATCH
        };
        if full {
            self.delete_doomed()?;
        }
        Ok(())
    }

    /// Sends the gathered deletes, once every write before them is over.
    fn delete_doomed(&self) -> io::Result<()> {
        self.wait_below("");
        let objects: Vec<String> = lock(&self.doomed).drain().collect();
        if objects.is_empty() {
            return Ok(());
        }
        self.conn.run(writes::delete_many(&self.conn, objects))
    }

    /// Waits for every write and sends the deletes; returns the failures
    /// since the last call.
    pub fn finish(&self) -> Vec<(String, io::Error)> {
        if let Err(e) = self.delete_doomed() {
            lock(&self.failures).push((String::new(), e));
        }
        std::mem::take(&mut *lock(&self.failures))
    }
}
