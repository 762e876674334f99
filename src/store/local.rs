//! The replica as a directory on a local disk. Every operation is resolved
//! one component at a time from an open handle on DEST without following
//! symlinks, so nothing is ever read, written or removed outside DEST or
//! through a link planted inside it.
//!
//! Files are staged as a temporary file beside their target
//! (`.replica-tmp-…`), given their mode and mtime, then renamed over the
//! target. A staged file dropped before [`Store::publish`] removes itself;
//! stale ones left by a kill are removed by the next pass. A file's version
//! is its inode number; keeping a version aside is a hard link.

use super::{beside, split_key, Capabilities, ReadAt, Space, Staged, Store, Version};
use crate::plan::ReplicaEntry;
use crate::tree::{Kind, Timestamp};
use cap_fs_ext::DirExt;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

mod extras;
mod meta;
use meta::{
    entry_of, file_version, not_file, open_dir_handle, set_dir_meta, set_file_meta, set_file_mode,
    set_mtime_at, when,
};

/// Prefix of temporary files written beside their target.
pub const TEMP_PREFIX: &str = ".replica-tmp-";

/// A directory on a local disk holding the replica.
pub struct LocalStore {
    root: Dir,
    root_path: PathBuf,
    fsync: bool,
    /// The directories last opened, each inside the one before: reused by
    /// the next operation on the same directory or below it.
    chain: Mutex<Vec<(String, Dir)>>,
    /// Versions, hard links, extended attributes (`local/extras.rs`).
    extras: extras::Extras,
}

/// A file being written beside its final name.
struct LocalStaged {
    file: std::fs::File,
    dir: Dir,
    name: String,
    key: String,
    published: bool,
}

impl Drop for LocalStaged {
    fn drop(&mut self) {
        if !self.published {
            let _ = self.dir.remove_file(&self.name);
        }
    }
}

impl ReadAt for LocalStaged {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        pread(&self.file, buf, offset)
    }
}

impl Staged for LocalStaged {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        // Zeros over a hole stay a hole: sparse files stay sparse.
        crate::sparse::write_at(&self.file, buf, offset)
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }

    fn writer(&self) -> Option<Box<dyn super::WriteAt>> {
        let file = self.file.try_clone().ok()?;
        Some(Box::new(StagedWriter(file)))
    }
}

/// A second handle on a staged file (see [`Staged::writer`]).
struct StagedWriter(std::fs::File);

impl super::WriteAt for StagedWriter {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        crate::sparse::write_at(&self.0, buf, offset)
    }
}

/// A replica file open for reading.
struct LocalFile(std::fs::File);

impl ReadAt for LocalFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        pread(&self.0, buf, offset)
    }
}

fn not_dir(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotADirectory,
        format!("{key} is not a directory"),
    )
}

impl LocalStore {
    /// Opens DEST, creating it if missing; `fsync`: published files reach
    /// the disk before they appear.
    pub fn open(path: &Path, fsync: bool) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let root = Dir::open_ambient_dir(path, ambient_authority())?;
        Ok(LocalStore {
            root,
            root_path: path.to_path_buf(),
            fsync,
            chain: Mutex::new(Vec::new()),
            extras: Default::default(),
        })
    }

    /// Forgets cached handles (a directory may have moved).
    fn forget(&self) {
        self.chain.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Runs `f` on directory `key`, opened one component at a time from
    /// DEST (or from the deepest cached directory on its way), refusing
    /// symlinks at every step.
    fn with_dir<R>(&self, key: &str, f: impl FnOnce(&Dir) -> io::Result<R>) -> io::Result<R> {
        if key.is_empty() {
            return f(&self.root);
        }
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        let within = |k: &str| key == k || (key.starts_with(k) && key.as_bytes()[k.len()] == b'/');
        let keep = chain
            .iter()
            .rposition(|(k, _)| within(k))
            .map_or(0, |i| i + 1);
        chain.truncate(keep);
        let done = chain.last().map_or(0, |(k, _)| k.len() + 1);
        if done < key.len() + 1 {
            for comp in key[done..].split('/') {
                let parent = chain.last().map_or(&self.root, |(_, d)| d);
                let dir = match parent.open_dir_nofollow(comp) {
                    Ok(d) => d,
                    Err(e) => {
                        // Say why in the usual terms (a symlink or a file is "not a directory").
                        return Err(match parent.symlink_metadata(comp) {
                            Ok(m) if !m.is_dir() => not_dir(key),
                            Ok(_) => e,
                            Err(e2) => e2,
                        });
                    }
                };
                let end = chain.last().map_or(0, |(k, _)| k.len() + 1) + comp.len();
                chain.push((key[..end].to_string(), dir));
            }
        }
        f(&chain.last().expect("at least one component").1)
    }

    fn with_parent<R>(
        &self,
        key: &str,
        f: impl FnOnce(&Dir, &str) -> io::Result<R>,
    ) -> io::Result<R> {
        let (parent, name) = split_key(key);
        self.with_dir(parent, |d| f(d, name))
    }

    /// Replaces the file at `key` by a private copy with the given metadata
    /// (the same content: no version of it is kept).
    fn copy_in_place(&self, key: &str, mode: Option<u32>, mtime: Timestamp) -> io::Result<()> {
        let src = self.open(key)?;
        let mut tmp = self.stage(key)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            let n = src.read_at(&mut buf, at)?;
            if n == 0 {
                break;
            }
            tmp.write_at(&buf[..n], at)?;
            at += n as u64;
        }
        self.publish_as(tmp, key, mode, mtime, false).map(|_| ())
    }

    /// [`Store::publish`]; `retire`: what it replaces goes to the versions.
    fn publish_as(
        &self,
        staged: Box<dyn Staged>,
        key: &str,
        mode: Option<u32>,
        mtime: Timestamp,
        retire: bool,
    ) -> io::Result<Version> {
        let Ok(mut tmp) = staged.into_any().downcast::<LocalStaged>() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not staged by this store",
            ));
        };
        set_file_mode(&tmp.file, mode)?;
        tmp.file
            .set_times(std::fs::FileTimes::new().set_modified(mtime.to_system()))?;
        if self.fsync {
            tmp.file.sync_all()?;
        }
        let version = file_version(&tmp.file);
        let (_, name) = split_key(key);
        if retire {
            self.retire_file_at(&tmp.dir, name, key)?;
        }
        tmp.dir.rename(&tmp.name, &tmp.dir, name)?;
        tmp.published = true;
        Ok(version)
    }
}

impl Store for LocalStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            symlinks: true,
            modes: cfg!(unix),
            cheap_rename: true,
            hard_links: true,
            records: true,
            server_copy: false,
        }
    }

    fn stat(&self, key: &str) -> io::Result<Option<ReplicaEntry>> {
        if key.is_empty() {
            let m = self.root.dir_metadata()?;
            return entry_of(&self.root, ".", &m).map(Some);
        }
        let r = self.with_parent(key, |dir, name| match dir.symlink_metadata(name) {
            Ok(m) => {
                self.note_links(key, &m);
                Ok(Some(entry_of(dir, name, &m)?))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        });
        match r {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            r => r,
        }
    }

    fn list(&self, key: &str) -> io::Result<Vec<String>> {
        self.with_dir(key, list_names)
    }

    fn open(&self, key: &str) -> io::Result<Box<dyn ReadAt>> {
        let open = |dir: &Dir, name: &str| {
            if !dir.symlink_metadata(name)?.is_file() {
                return Err(not_file());
            }
            let mut opts = OpenOptions::new();
            opts.read(true);
            let f = dir.open_with(name, &opts)?.into_std();
            Ok(Box::new(LocalFile(f)) as Box<dyn ReadAt>)
        };
        // A version (`--versions`), as the index names it.
        if let Some(vkey) = key.strip_prefix(crate::versions::INDEX_PREFIX) {
            let (dir, name) = self.version_parent(vkey)?;
            return open(&dir, &name);
        }
        self.with_parent(key, |dir, name| open(dir, name))
    }

    fn mkdir(&self, key: &str) -> io::Result<()> {
        self.with_parent(key, |dir, name| match dir.create_dir(name) {
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && dir.symlink_metadata(name)?.is_dir() =>
            {
                Ok(())
            }
            r => r,
        })
    }

    fn symlink(&self, key: &str, target: &str) -> io::Result<()> {
        self.with_parent(key, |dir, name| {
            let tmp = temp_name(name);
            // The target is only text: create it verbatim (cap-std's own
            // symlink refuses absolute targets, which are legitimate here).
            #[cfg(unix)]
            rustix::fs::symlinkat(target, dir, tmp.as_str()).map_err(io::Error::from)?;
            #[cfg(windows)]
            dir.symlink_file(target, &tmp)?;
            dir.rename(&tmp, dir, name).inspect_err(|_| {
                let _ = dir.remove_file_or_symlink(&tmp);
            })
        })
    }

    fn set_meta(
        &self,
        key: &str,
        kind: &Kind,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<()> {
        if key.is_empty() {
            let f = open_dir_handle(&self.root_path)?;
            set_file_mode(&f, mode)?;
            return f.set_times(std::fs::FileTimes::new().set_modified(mtime.to_system()));
        }
        let in_place = self.with_parent(key, |dir, name| match kind {
            Kind::Symlink { .. } => set_mtime_at(dir, name, mtime, when(mtime), true).map(|_| true),
            Kind::Dir => set_dir_meta(dir, name, mode, mtime).map(|_| true),
            Kind::File { .. } => set_file_meta(dir, name, mode, mtime),
        })?;
        if in_place {
            Ok(())
        } else {
            self.copy_in_place(key, mode, mtime)
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (fdir, fname) = split_key(from);
        let (tdir, tname) = split_key(to);
        let target = self.with_dir(tdir, |d| d.try_clone())?;
        self.forget();
        self.retire_file_at(&target, tname, to)?;
        self.with_dir(fdir, |d| d.rename(fname, &target, tname))
    }

    fn remove(&self, key: &str) -> io::Result<u64> {
        let r = self.with_parent(key, |dir, name| {
            let meta = match dir.symlink_metadata(name) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                Ok(Some((dir.try_clone()?, true)))
            } else {
                if meta.is_file() && self.versions_on() && !name.starts_with(TEMP_PREFIX) {
                    self.retire(dir, name, key)?;
                } else {
                    dir.remove_file_or_symlink(name)?;
                }
                Ok(Some((dir.try_clone()?, false)))
            }
        })?;
        let Some((dir, is_dir)) = r else {
            return Ok(0);
        };
        if !is_dir {
            return Ok(1);
        }
        // The chain may hold handles inside the tree about to go.
        self.forget();
        let name = split_key(key).1;
        let n = count_tree(&dir.open_dir_nofollow(name)?)?;
        self.retire(&dir, name, key)?;
        dir.remove_dir_all(name)?;
        Ok(n + 1)
    }

    fn count(&self, key: &str) -> io::Result<u64> {
        self.with_parent(key, |dir, name| match dir.symlink_metadata(name) {
            Ok(m) if m.is_dir() => Ok(1 + count_tree(&dir.open_dir_nofollow(name)?)?),
            Ok(_) => Ok(1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        })
    }

    fn keep_aside(&self, key: &str) -> io::Result<String> {
        self.with_parent(key, |dir, name| {
            let tmp = temp_name(name);
            dir.hard_link(name, dir, &tmp)?;
            Ok(beside(key, &tmp))
        })
    }

    fn stage(&self, key: &str) -> io::Result<Box<dyn Staged>> {
        self.with_parent(key, |dir, name| {
            let owned = dir.try_clone()?;
            let tmp = temp_name(name);
            let mut opts = OpenOptions::new();
            opts.read(true).write(true).create_new(true);
            let file = dir.open_with(&tmp, &opts)?.into_std();
            Ok(Box::new(LocalStaged {
                file,
                dir: owned,
                key: beside(key, &tmp),
                name: tmp,
                published: false,
            }) as Box<dyn Staged>)
        })
    }

    /// Its directory is resolved again from DEST and must still hold that
    /// very file under its name. Otherwise the file is let go (its name is
    /// not removed through the old handle, which may now point outside DEST).
    fn resume(&self, key: &str, staged: Box<dyn Staged>) -> io::Result<Box<dyn Staged>> {
        let gone = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the kept partial file is no longer in place",
            )
        };
        let Ok(mut old) = staged.into_any().downcast::<LocalStaged>() else {
            return Err(gone());
        };
        // However this ends, `old` must not remove anything through its handle.
        old.published = true;
        let same = matches!(
            self.stat(&old.key)?,
            Some(ReplicaEntry { kind: Kind::File { .. }, version, .. }) if version == file_version(&old.file)
        );
        if !same || split_key(&old.key).0 != split_key(key).0 {
            return Err(gone());
        }
        let dir = self.with_parent(key, |d, _| d.try_clone())?;
        Ok(Box::new(LocalStaged {
            file: old.file.try_clone()?,
            dir,
            name: old.name.clone(),
            key: old.key.clone(),
            published: false,
        }))
    }

    fn publish(
        &self,
        staged: Box<dyn Staged>,
        key: &str,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<Version> {
        self.publish_as(staged, key, mode, mtime, true)
    }

    fn is_staging(&self, name: &str) -> bool {
        name.starts_with(TEMP_PREFIX)
    }

    fn refresh(&self) -> io::Result<()> {
        // A directory may have been moved away since the last pass: never
        // reuse a handle across passes.
        self.forget();
        self.forget_links();
        Ok(())
    }

    fn space(&self) -> Option<Space> {
        Some(Space {
            free: fs4::available_space(&self.root_path).ok()?,
            total: fs4::total_space(&self.root_path).ok()?,
        })
    }

    fn file_links(&self, key: &str) -> io::Result<Option<(u64, u64)>> {
        self.links_of(key)
    }

    fn take_linked(&self) -> Vec<(String, u64)> {
        self.take_linked_files()
    }

    fn hard_link(&self, from: &str, to: &str) -> io::Result<()> {
        self.link_over(from, to)
    }

    fn own_copy(&self, key: &str, mode: Option<u32>, mtime: Timestamp) -> io::Result<()> {
        self.copy_in_place(key, mode, mtime)
    }

    fn set_xattrs(
        &self,
        key: &str,
        kind: &Kind,
        want: &[crate::tree::xattr::Xattr],
    ) -> Result<bool, crate::tree::xattr::XattrError> {
        self.xattrs_to(key, kind, want)
    }

    fn take_retired(&self) -> Vec<(String, String)> {
        self.take_retired_files()
    }

    fn prune_versions(&self) -> io::Result<Vec<String>> {
        self.prune()
    }
}

fn list_names(dir: &Dir) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for item in dir.entries()? {
        let item = item?;
        // Names that are not UTF-8 cannot come from the source; leave them be.
        if let Ok(n) = item.file_name().into_string() {
            names.push(n);
        }
    }
    Ok(names)
}

fn count_tree(dir: &Dir) -> io::Result<u64> {
    let mut n = 0;
    for item in dir.entries()? {
        let item = item?;
        n += 1;
        if item.file_type()?.is_dir() {
            n += count_tree(&dir.open_dir_nofollow(item.file_name())?)?;
        }
    }
    Ok(n)
}

fn temp_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut cut = name.len().min(100);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let short = &name[..cut];
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    format!("{TEMP_PREFIX}{pid:x}-{n:x}.{short}")
}

/// Reads at `offset` (fewer bytes than asked only at the end).
pub fn pread(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        file.seek_read(buf, offset)
    }
}

/// Writes all of `buf` at `offset`.
pub fn pwrite_all(file: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
    crate::sparse::write_all_at(file, buf, offset)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::store::DryRun;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn stamp(secs: i64) -> Timestamp {
        Timestamp { secs, nanos: 5 }
    }

    fn mode_and_mtime(p: &Path) -> (u32, i64, i64) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.permissions().mode() & 0o7777, m.mtime(), m.mtime_nsec())
    }

    #[test]
    fn metadata_is_set_and_never_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let (dest, outside) = (t.path().join("dest"), t.path().join("outside"));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f"), b"x").unwrap();
        let s = LocalStore::open(&dest, false).unwrap();
        s.mkdir("d").unwrap();
        s.set_meta("d", &Kind::Dir, Some(0o700), stamp(1_000_000))
            .unwrap();
        assert_eq!(mode_and_mtime(&dest.join("d")), (0o700, 1_000_000, 5));
        std::fs::write(dest.join("d/f"), b"y").unwrap();
        let file = Kind::File { size: 1 };
        s.set_meta("d/f", &file, Some(0o600), stamp(2_000_000))
            .unwrap();
        assert_eq!(mode_and_mtime(&dest.join("d/f")), (0o600, 2_000_000, 5));

        // Symlinks where a directory or a file is expected are refused.
        std::os::unix::fs::symlink(&outside, dest.join("l")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), dest.join("lf")).unwrap();
        let before = (mode_and_mtime(&outside), mode_and_mtime(&outside.join("f")));
        assert!(s.set_meta("l", &Kind::Dir, Some(0o777), stamp(5)).is_err());
        assert!(s.set_meta("lf", &file, Some(0o777), stamp(5)).is_err());
        assert!(s.set_meta("l/f", &file, Some(0o777), stamp(5)).is_err());
        let after = (mode_and_mtime(&outside), mode_and_mtime(&outside.join("f")));
        assert_eq!(before, after);

        // A directory its owner cannot read still gets its metadata.
        s.set_meta("d", &Kind::Dir, Some(0o300), stamp(3_000_000))
            .unwrap();
        s.set_meta("d", &Kind::Dir, Some(0o311), stamp(4_000_000))
            .unwrap();
        assert_eq!(mode_and_mtime(&dest.join("d")), (0o311, 4_000_000, 5));
        s.set_meta("d", &Kind::Dir, Some(0o755), stamp(4_000_000))
            .unwrap();
    }

    #[test]
    fn staged_files_appear_whole_at_publish_and_vanish_when_dropped() {
        let t = tempfile::tempdir().unwrap();
        let s = LocalStore::open(t.path(), false).unwrap();
        let mut f = s.stage("a").unwrap();
        f.write_at(b"world", 6).unwrap();
        f.write_at(b"hello ", 0).unwrap();
        assert!(s.stat("a").unwrap().is_none());
        assert!(s.is_staging(split_key(f.key()).1));
        let v = s.publish(f, "a", Some(0o640), stamp(7)).unwrap();
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"hello world");
        assert_eq!(s.stat("a").unwrap().unwrap().version, v);
        let dropped = s.stage("b").unwrap();
        let key = dropped.key().to_string();
        assert!(s.stat(&key).unwrap().is_some());
        drop(dropped);
        assert!(s.stat(&key).unwrap().is_none());
        assert_eq!(s.list("").unwrap(), vec!["a".to_string()]);
    }

    #[test]
    fn a_dry_run_reads_through_and_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let s = LocalStore::open(t.path(), false).unwrap();
        s.mkdir("d").unwrap();
        std::fs::write(t.path().join("d/f"), b"data").unwrap();
        let shadow = crate::store::dry_run::Shadow::create(&scratch.path().join("s")).unwrap();
        let dry = DryRun::new(&s, &shadow);
        assert!(!dry.capabilities().records);
        assert_eq!(dry.count("d").unwrap(), 2);
        dry.mkdir("e").unwrap();
        dry.rename("d", "e/d2").unwrap();
        assert_eq!(dry.list("e/d2").unwrap(), vec!["f".to_string()]);
        let f = dry.stat("e/d2/f").unwrap().unwrap();
        assert_eq!(f.version, s.stat("d/f").unwrap().unwrap().version);
        let mut buf = [0u8; 8];
        assert_eq!(dry.open("e/d2/f").unwrap().read_at(&mut buf, 0).unwrap(), 4);
        let v = dry.publish_unwritten("h", 10, None, stamp(1)).unwrap();
        assert_eq!(dry.stat("h").unwrap().unwrap().version, v);
        assert_eq!(
            dry.list("").unwrap(),
            vec!["e".to_string(), "h".to_string()]
        );
        assert_eq!(dry.remove("e").unwrap(), 3);
        assert_eq!(dry.list("").unwrap(), vec!["h".to_string()]);
        assert_eq!(dry.stat("d/f").unwrap(), None);
        let mut names = s.list("").unwrap();
        names.sort();
        assert_eq!(names, vec!["d".to_string()]);
        assert_eq!(s.list("d").unwrap(), vec!["f".to_string()]);
    }
}
