//! The server's index of the replica's content. A pass's writes are held
//! in memory (`pending.rs`) and handed, a checkpoint's worth at a time, to
//! a thread that writes and commits them in order (`writer.rs`); lookups
//! read the held writes first. A dry run's writes go to an overlay
//! ([`DryIndex`]): a scratch database beside the index, written the same
//! way, whose removals are kept as tombstones; its lookups read the
//! overlay first, then the index itself, which the dry run never writes
//! (so later pages of a dry run see what earlier ones would have
//! recorded, on disk, not in memory). An index opened empty
//! remembers every key written since (`fresh.rs`): a lookup of a key never
//! written skips the database.

use super::fresh::{Probe, Table, Written};
use super::pending::{Pending, MAX_HELD};
use super::writer::Writer;
use super::{
    index_err, one_chunk, open_db, ChunkLoc, FileRecord, GroupLoc, CHECKPOINT_WRITES, CHUNKS,
    FILES, GROUPS, WHOLE,
};
use crate::chunk::{groups, offsets, ChunkRef, Hash, INLINE_CHUNKS};
use crate::error::{Error, Result};
use crate::tree::Version;
use redb::{Database, ReadTransaction, ReadableTableMetadata};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The server's index of the replica's content.
pub struct ReplicaIndex {
    db: Arc<Database>,
    path: PathBuf,
    /// Set when the index was rebuilt on open; the reason, for the log.
    pub rebuilt: Option<String>,
    /// Every key written since the index was opened empty (None: it was
    /// not empty). Only this object writes the database (redb locks the
    /// file to one process), so a key it never saw is not there.
    written: Mutex<Option<Written>>,
    /// The database was closed after an I/O error and could not be opened
    /// again yet ([`ReplicaIndex::reopen_if_failed`]); `db` is a stand-in.
    detached: bool,
}

impl ReplicaIndex {
    pub fn open(path: &Path) -> Result<Self> {
        let (db, rebuilt) = open_db(path)?;
        let written = is_empty(&db, path)?;
        Ok(ReplicaIndex {
            db: Arc::new(db),
            path: path.to_path_buf(),
            rebuilt,
            written: Mutex::new(written.then(Written::default)),
            detached: false,
        })
    }

    /// After an I/O error (a full disk, a failing device) redb refuses every
    /// later transaction until the database is closed and opened again.
    /// A server outlives its sessions, so before each one it calls this:
    /// a failed database is closed and opened again (what was committed
    /// before the error is kept), and the next pass runs once the cause is
    /// gone. Returns whether it reopened; an error if it could not.
    pub fn reopen_if_failed(&mut self) -> Result<bool> {
        if !self.detached {
            match self.db.begin_write() {
                // Dropped unused: aborted, nothing written.
                Ok(_) => return Ok(false),
                Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {}
                Err(e) => return Err(index_err(&self.path, e)),
            }
            // redb locks its file while open: close it before opening it
            // again. The stand-in holds nothing; `detached` keeps it unused.
            let stand_in = redb::Builder::new()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(|e| index_err(&self.path, e))?;
            self.db = Arc::new(stand_in);
            self.detached = true;
        }
        let (db, rebuilt) = open_db(&self.path)?;
        self.db = Arc::new(db);
        self.detached = false;
        if rebuilt.is_some() {
            // For the log. A fresh-index filter stays valid: it may now
            // claim keys that are gone, never miss one that is there.
            self.rebuilt = rebuilt;
        }
        Ok(true)
    }

    /// Fails while the database is detached (see `reopen_if_failed`).
    fn attached(&self) -> Result<()> {
        if self.detached {
            return Err(index_err(
                &self.path,
                "closed after an I/O error and not yet opened again",
            ));
        }
        Ok(())
    }

    /// Whether lookups of keys never written skip the database (the index
    /// was empty when opened).
    pub fn tracks_writes(&self) -> bool {
        self.written().is_some()
    }

    /// Lookups read the database whatever was written (tests compare the
    /// two ways).
    #[cfg(test)]
    pub(crate) fn forget_writes(&self) {
        *self.written() = None;
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Option<Written>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// False if key `p` cannot be in the database: the index was opened
    /// empty and nothing wrote `p` since.
    fn may_hold(&self, p: Probe) -> bool {
        self.written().as_ref().is_none_or(|w| w.may_hold(p))
    }

    /// A path beside the index for a pass's scratch database (`what`
    /// names it).
    pub fn scratch_path(&self, what: &str) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{what}"));
        self.path.with_file_name(name)
    }

    /// Starts the pass's transaction (and its writer thread).
    pub fn begin(&self) -> Result<IndexTxn<'_>> {
        self.attached()?;
        let writer = Writer::start(self.db.clone(), self.path.clone(), true)?;
        Ok(self.txn(writer, None))
    }

    /// A new, empty overlay for a dry run, beside the index (a stale one
    /// from a killed dry run is replaced); deleted when dropped.
    pub fn dry_overlay(&self) -> Result<DryIndex> {
        let path = self.scratch_path("dry-run");
        let _ = std::fs::remove_file(&path);
        let db = redb::Builder::new()
            .set_cache_size(super::CACHE_BYTES / 4)
            .create(&path)
            .map_err(|e| index_err(&path, e))?;
        Ok(DryIndex {
            db: Arc::new(db),
            path,
        })
    }

    /// A transaction of a dry run: its writes go to `overlay` (committed
    /// there, never here); its lookups read the overlay, then this index.
    pub fn begin_overlay(&self, overlay: &DryIndex) -> Result<IndexTxn<'_>> {
        self.attached()?;
        let base = self.db.begin_read().map_err(|e| index_err(&self.path, e))?;
        let writer = Writer::start(overlay.db.clone(), overlay.path.clone(), false)?;
        Ok(self.txn(writer, Some(base)))
    }

    fn txn(&self, writer: Writer, base: Option<ReadTransaction>) -> IndexTxn<'_> {
        IndexTxn {
            index: self,
            db: Some(Box::new(writer)),
            base,
            writes: 0,
            pending: Pending::default(),
            cached: std::cell::RefCell::new(None),
            last_whole: std::cell::RefCell::new(None),
        }
    }
}

/// A dry run's overlay of the replica index: a scratch database holding
/// what the pass would have written (removals as empty values), deleted
/// when dropped. It lasts the whole pass, so later pages see what earlier
/// ones would have recorded.
pub struct DryIndex {
    db: Arc<Database>,
    path: PathBuf,
}

impl Drop for DryIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Looks `$key` up in table `$def`: in what the writer committed and, for
/// an overlay, then in the index itself (if `$probe` may be there); maps a
/// found value with `$map`. In an overlay an empty value is a removal.
macro_rules! db_get {
    ($self:ident, $def:expr, $key:expr, $probe:expr, |$v:ident| $map:expr) => {{
        let w = $self.db.as_ref().expect("open until committed");
        let mut settled = false;
        let mut out = None;
        match w.read().open_table($def) {
            Ok(t) => {
                if let Some($v) = t.get($key).map_err(|e| $self.err(e))? {
                    settled = true;
                    if $self.base.is_none() || !$v.value().is_empty() {
                        out = $map;
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err($self.err(e)),
        }
        if let (false, Some(base)) = (settled, &$self.base) {
            if $self.index.may_hold($probe) {
                match base.open_table($def) {
                    Ok(t) => {
                        if let Some($v) = t.get($key).map_err(|e| $self.err(e))? {
                            out = $map;
                        }
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err($self.err(e)),
                }
            }
        }
        out
    }};
}

/// A write transaction on the replica index.
pub struct IndexTxn<'a> {
    index: &'a ReplicaIndex,
    /// The writer thread (None once committed).
    db: Option<Box<Writer>>,
    /// A dry run's overlay (see [`ReplicaIndex::begin_overlay`]): the
    /// writer writes the overlay, and this reads the index below it.
    base: Option<ReadTransaction>,
    writes: usize,
    /// Writes not yet handed over; reads look here first, then in the
    /// batches the writer has not committed yet, then in the database.
    pending: Pending,
    /// The last record decoded for a group lookup (large files have many groups).
    cached: std::cell::RefCell<Option<(String, std::rc::Rc<FileRecord>)>>,
    /// The last whole-file lookup and its answer, until the next write: a
    /// one-chunk file's id is looked up as a file, then as a chunk.
    last_whole: std::cell::RefCell<Option<(Hash, Option<String>)>>,
}

impl IndexTxn<'_> {
    fn err(&self, e: impl std::fmt::Display) -> Error {
        index_err(&self.index.path, e)
    }

    /// What the held writes (newest first) say about an entry, if any.
    fn held<T>(&self, get: impl Fn(&Pending) -> Option<T>) -> Option<T> {
        if let Some(x) = get(&self.pending) {
            return Some(x);
        }
        self.db.as_ref().and_then(|w| w.in_flight().find_map(get))
    }

    /// False if `p` is in neither the overlay nor the index: only the
    /// index itself is filtered (an overlay is read whatever).
    fn may_hold(&self, p: Probe) -> bool {
        self.base.is_some() || self.index.may_hold(p)
    }

    pub fn file(&self, path: &str) -> Result<Option<FileRecord>> {
        if let Some(held) = self.held(|p| p.files.get(path).cloned()) {
            return Ok(held);
        }
        let probe = Probe::of_path(path);
        if !self.may_hold(probe) {
            return Ok(None);
        }
        Ok(db_get!(self, FILES, path, probe, |v| postcard::from_bytes(
            v.value()
        )
        .ok()))
    }

    /// The chunk table's entry for `hash` (not one-chunk files).
    fn chunk_entry(&self, hash: &Hash) -> Result<Option<ChunkLoc>> {
        if let Some(held) = self.held(|p| p.chunks.get(hash).cloned()) {
            return Ok(held);
        }
        let probe = Probe::of_hash(Table::Chunks, hash);
        if !self.may_hold(probe) {
            return Ok(None);
        }
        Ok(db_get!(self, CHUNKS, &hash.0[..], probe, |v| {
            postcard::from_bytes(v.value()).ok()
        }))
    }

    pub fn find_chunk(&self, hash: &Hash) -> Result<Option<ChunkLoc>> {
        let found = self.chunk_entry(hash)?;
        if found.is_some() {
            return Ok(found);
        }
        // One-chunk files are findable by their file id only.
        let Some(path) = self.find_whole(hash)? else {
            return Ok(None);
        };
        Ok(self
            .file(&path)?
            .and_then(|rec| match rec.digest.chunks[..] {
                [c] if c.hash == *hash => Some(ChunkLoc {
                    path,
                    offset: 0,
                    len: c.len,
                }),
                _ => None,
            }))
    }

    pub fn find_whole(&self, hash: &Hash) -> Result<Option<String>> {
        if let Some(held) = self.held(|p| p.whole.get(hash).cloned()) {
            return Ok(held);
        }
        let probe = Probe::of_hash(Table::Whole, hash);
        if !self.may_hold(probe) {
            return Ok(None);
        }
        if let Some((h, found)) = &*self.last_whole.borrow() {
            if h == hash {
                return Ok(found.clone());
            }
        }
        let found = db_get!(self, WHOLE, &hash.0[..], probe, |v| Some(
            v.value().to_string()
        ));
        *self.last_whole.borrow_mut() = Some((*hash, found.clone()));
        Ok(found)
    }

    fn group_entry(&self, hash: &Hash) -> Result<Option<GroupLoc>> {
        if let Some(held) = self.held(|p| p.groups.get(hash).cloned()) {
            return Ok(held);
        }
        let probe = Probe::of_hash(Table::Groups, hash);
        if !self.may_hold(probe) {
            return Ok(None);
        }
        Ok(db_get!(self, GROUPS, &hash.0[..], probe, |v| {
            postcard::from_bytes(v.value()).ok()
        }))
    }

    /// The chunk list of a group, if some indexed file still holds it.
    pub fn find_group(&self, hash: &Hash) -> Result<Option<Vec<ChunkRef>>> {
        let Some(loc) = self.group_entry(hash)? else {
            return Ok(None);
        };
        let hit = self
            .cached
            .borrow()
            .as_ref()
            .filter(|(p, _)| *p == loc.path)
            .map(|(_, r)| r.clone());
        let rec = match hit {
            Some(r) => r,
            None => {
                let Some(rec) = self.file(&loc.path)? else {
                    return Ok(None);
                };
                let rec = std::rc::Rc::new(rec);
                *self.cached.borrow_mut() = Some((loc.path.clone(), rec.clone()));
                rec
            }
        };
        let (a, n) = (loc.first as usize, loc.count as usize);
        let Some(run) = rec.digest.chunks.get(a..a + n) else {
            return Ok(None);
        };
        Ok((crate::chunk::group_hash(run) == *hash).then(|| run.to_vec()))
    }

    /// Records a file and makes its chunks, groups and whole hash findable.
    pub fn put_file(&mut self, path: &str, rec: &FileRecord) -> Result<()> {
        self.remove_file(path)?;
        let held = &mut self.pending;
        // An overlay's writes never reach the index: its filter stays.
        let mut written = self.base.is_none().then(|| self.index.written());
        let mut note = |p: Probe| {
            if let Some(w) = written.as_mut().and_then(|w| w.as_mut()) {
                w.insert(p);
            }
        };
        held.files.insert(path.to_string(), Some(rec.clone()));
        note(Probe::of_path(path));
        if !one_chunk(rec) {
            let offs = offsets(&rec.digest.chunks);
            for (c, off) in rec.digest.chunks.iter().zip(offs) {
                let loc = ChunkLoc {
                    path: path.to_string(),
                    offset: off,
                    len: c.len,
                };
                held.chunks.insert(c.hash, Some(loc));
                note(Probe::of_hash(Table::Chunks, &c.hash));
            }
        }
        held.whole.insert(rec.digest.hash, Some(path.to_string()));
        note(Probe::of_hash(Table::Whole, &rec.digest.hash));
        if rec.digest.chunks.len() > INLINE_CHUNKS {
            let mut first = 0u32;
            for g in groups(&rec.digest.chunks) {
                let loc = GroupLoc {
                    path: path.to_string(),
                    first,
                    count: g.count,
                };
                held.groups.insert(g.hash, Some(loc));
                note(Probe::of_hash(Table::Groups, &g.hash));
                first += g.count;
            }
        }
        drop(written);
        self.writes += 1;
        self.flush_if_full()
    }

    /// Forgets a file, and every reverse entry that pointed into it.
    pub fn remove_file(&mut self, path: &str) -> Result<()> {
        *self.cached.borrow_mut() = None;
        *self.last_whole.borrow_mut() = None;
        let Some(rec) = self.file(path)? else {
            return Ok(());
        };
        self.pending.files.insert(path.to_string(), None);
        if !one_chunk(&rec) {
            for c in &rec.digest.chunks {
                if self.chunk_entry(&c.hash)?.is_some_and(|l| l.path == path) {
                    self.pending.chunks.insert(c.hash, None);
                }
            }
        }
        if self
            .find_whole(&rec.digest.hash)?
            .is_some_and(|p| p == path)
        {
            self.pending.whole.insert(rec.digest.hash, None);
        }
        *self.last_whole.borrow_mut() = None;
        self.writes += 1;
        self.flush_if_full()
    }

    /// Renames a file's record (after a rename on disk), keeping its digest.
    pub fn rename_file(
        &mut self,
        from: &str,
        to: &str,
        mut rec: FileRecord,
        version: Version,
    ) -> Result<()> {
        self.remove_file(from)?;
        rec.version = version;
        self.put_file(to, &rec)
    }

    /// The keys of the file records strictly below `prefix` (and `prefix`
    /// itself with `with_self`): every write is first in the database. In
    /// an overlay: its live keys and the index's, less its removals.
    fn keys_below(&mut self, prefix: &str, with_self: bool) -> Result<Vec<String>> {
        self.hand_over(false)?;
        let w = self.db.as_mut().expect("open until committed");
        w.wait_all()?;
        let start = format!("{prefix}/");
        let end = format!("{prefix}0"); // '0' follows '/'
                                        // Key -> live (false: removed in the overlay).
        let mut keys: std::collections::BTreeMap<String, bool> = Default::default();
        let tombstones = self.base.is_some();
        let mut scan =
            |t: &redb::ReadOnlyTable<&'static str, &'static [u8]>, top: bool| -> Result<()> {
                let mut note = |k: &str, v: &[u8]| {
                    let live = !(top && tombstones && v.is_empty());
                    keys.entry(k.to_string()).or_insert(live);
                };
                for r in t
                    .range(start.as_str()..end.as_str())
                    .map_err(|e| self.err(e))?
                {
                    let (k, v) = r.map_err(|e| self.err(e))?;
                    note(k.value(), v.value());
                }
                if with_self {
                    if let Some(v) = t.get(prefix).map_err(|e| self.err(e))? {
                        note(prefix, v.value());
                    }
                }
                Ok(())
            };
        let w = self.db.as_ref().expect("open until committed");
        match w.read().open_table(FILES) {
            Ok(t) => scan(&t, true)?,
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err(e)),
        }
        if let Some(base) = &self.base {
            match base.open_table(FILES) {
                Ok(t) => scan(&t, false)?,
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(keys
            .into_iter()
            .filter(|(_, live)| *live)
            .map(|(k, _)| k)
            .collect())
    }

    /// Removes every record at or below `prefix` (a removed directory).
    pub fn remove_tree(&mut self, prefix: &str) -> Result<()> {
        for k in self.keys_below(prefix, true)? {
            self.remove_file(&k)?;
        }
        Ok(())
    }

    /// Re-keys every record at or below `from` to the same place below `to`
    /// (after a directory rename on disk).
    pub fn rename_tree(&mut self, from: &str, to: &str) -> Result<()> {
        for k in self.keys_below(from, false)? {
            if let Some(rec) = self.file(&k)? {
                let new_key = format!("{to}{}", &k[from.len()..]);
                self.remove_file(&k)?;
                self.put_file(&new_key, &rec)?;
            }
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<()> {
        if self.pending.len() >= MAX_HELD {
            self.hand_over(false)?;
        }
        Ok(())
    }

    /// Hands the held writes on to the writer as a batch (`last`: the
    /// pass's final commit).
    fn hand_over(&mut self, last: bool) -> Result<()> {
        if self.pending.is_empty() && !last {
            return Ok(());
        }
        let held = std::mem::take(&mut self.pending);
        let w = self.db.as_mut().expect("open until committed");
        w.send(held, last)
    }

    /// Hands the held writes to the writer if many piled up since the
    /// last batch, which commits them (checkpoints bound what a
    /// transaction holds in memory and what a crash loses).
    pub fn checkpoint(&mut self) -> Result<()> {
        if let Some(w) = &mut self.db {
            w.poll()?;
        }
        if self.writes >= CHECKPOINT_WRITES {
            self.hand_over(false)?;
            self.writes = 0;
        }
        Ok(())
    }

    /// Commits (durably, unless an overlay's) and waits for it.
    pub fn commit(mut self) -> Result<()> {
        self.hand_over(true)?;
        match self.db.take() {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }
}

/// Whether no table of the index holds an entry.
fn is_empty(db: &Database, path: &Path) -> Result<bool> {
    let e = |e: redb::Error| index_err(path, e);
    let r = db.begin_read().map_err(|x| e(x.into()))?;
    macro_rules! empty {
        ($def:expr) => {
            match r.open_table($def) {
                Ok(t) => t.is_empty().map_err(|x| e(x.into()))?,
                Err(redb::TableError::TableDoesNotExist(_)) => true,
                Err(x) => return Err(e(x.into())),
            }
        };
    }
    Ok(empty!(FILES) && empty!(CHUNKS) && empty!(WHOLE) && empty!(GROUPS))
}

#[cfg(test)]
mod held_tests;

#[cfg(test)]
mod reopen_tests;
