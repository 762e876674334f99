//! The replica on disk: every filesystem operation the server makes on
//! DEST, each resolved one component at a time from an open handle on DEST
//! without following symlinks, so nothing is ever read, written or removed
//! outside DEST or through a link planted inside it.
//!
//! Files are written to a temporary file beside their target
//! (`.replica-tmp-…`), completed, given their mode and mtime, then renamed
//! over the target: a reader never sees a half-written file under its final
//! name. A [`TempFile`] that is dropped before [`Replica::publish`] removes
//! itself; stale ones left by a kill are removed by the next scan.

use crate::error::describe_io;
use crate::filter::Filter;
use crate::plan::{identical, ReplicaEntry, ReplicaView};
use crate::tree::{Kind, Manifest, Timestamp};
use cap_fs_ext::{DirExt, SystemTimeSpec};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of temporary files written beside their target.
pub const TEMP_PREFIX: &str = ".replica-tmp-";

/// The destination tree.
pub struct Replica {
    root: Dir,
    root_path: PathBuf,
    /// The last parent directory opened, by key, reused by siblings.
    cached: RefCell<Option<(String, Dir)>>,
    /// `--versions DIR`: where removed and replaced files go, and how long
    /// they stay.
    versions: Option<(Dir, std::time::Duration)>,
    /// Files moved into the versions since last asked: (key, key in DIR).
    retired: RefCell<Vec<(String, String)>>,
}

/// A file being written beside its final name.
pub struct TempFile {
    pub file: std::fs::File,
    dir: Dir,
    name: String,
    published: bool,
}

impl TempFile {
    /// Its name in its directory.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = self.dir.remove_file(&self.name);
        }
    }
}

fn split_key(key: &str) -> (&str, &str) {
    match key.rfind('/') {
        Some(i) => (&key[..i], &key[i + 1..]),
        None => ("", key),
    }
}

/// The key of `name` in the same directory as `key`.
pub fn beside(key: &str, name: &str) -> String {
    match split_key(key).0 {
        "" => name.to_string(),
        parent => format!("{parent}/{name}"),
    }
}

fn not_dir(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotADirectory,
        format!("{key} is not a directory"),
    )
}

/// What a replica scan found besides the view.
#[derive(Debug, Default)]
pub struct ScanExtras {
    /// Stale temporary files (from a killed pass), by key.
    pub stale_temps: Vec<String>,
    /// Entries that could not be examined, with the reason.
    pub problems: Vec<(String, String)>,
    /// Files with more than one link, by key, with their inode (so the
    /// pass can tell which share one).
    pub linked: Vec<(String, u64)>,
}

impl Replica {
    /// Opens DEST, creating it if missing.
    pub fn open(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let root = Dir::open_ambient_dir(path, ambient_authority())?;
        Ok(Replica {
            root,
            root_path: path.to_path_buf(),
            cached: RefCell::new(None),
            versions: None,
            retired: RefCell::new(Vec::new()),
        })
    }

    /// Moves removed and replaced files into `dir` (checked by
    /// [`crate::versions::check_dir`]) instead of deleting them.
    pub fn with_versions(mut self, v: &crate::versions::VersionsOptions) -> io::Result<Self> {
        let dir = Dir::open_ambient_dir(&v.dir, ambient_authority())?;
        self.versions = Some((dir, v.keep));
        Ok(self)
    }

    /// With `--versions`: moves the regular files at or below `key` into
    /// the versions directory (temporary files excepted).
    fn retire(&self, dir: &Dir, name: &str, key: &str) -> io::Result<()> {
        let Some((into, _)) = &self.versions else {
            return Ok(());
        };
        if name.starts_with(TEMP_PREFIX) {
            return Ok(());
        }
        let stamp = crate::versions::stamp(std::time::SystemTime::now());
        let mut moved = self.retired.borrow_mut();
        crate::versions::retire(dir, name, key, into, &stamp, &mut moved).map(|_| ())
    }

    /// The files moved into the versions since the last call: (key, key in
    /// the versions directory).
    pub fn take_retired(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.retired.borrow_mut())
    }

    /// With `--versions`: removes versions older than `--keep-versions`;
    /// returns their keys in the versions directory.
    pub fn prune_versions(&self) -> io::Result<Vec<String>> {
        let Some((into, keep)) = &self.versions else {
            return Ok(Vec::new());
        };
        crate::versions::prune_dir(into, std::time::SystemTime::now(), *keep)
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Opens the directory `key` (`""` is the root), refusing symlinks at every step.
    pub fn open_dir(&self, key: &str) -> io::Result<Dir> {
        if key.is_empty() {
            return self.root.try_clone();
        }
        if let Some((k, d)) = self.cached.borrow().as_ref() {
            if k == key {
                return d.try_clone();
            }
        }
        let mut dir = self.root.try_clone()?;
        for comp in key.split('/') {
            let meta = dir.symlink_metadata(comp)?;
            if !meta.is_dir() {
                return Err(not_dir(key));
            }
            dir = dir.open_dir_nofollow(comp)?;
        }
        *self.cached.borrow_mut() = Some((key.to_string(), dir.try_clone()?));
        Ok(dir)
    }

    /// Forgets cached handles (after removals or renames of directories).
    pub fn forget_cache(&self) {
        *self.cached.borrow_mut() = None;
    }

    fn parent_of<'k>(&self, key: &'k str) -> io::Result<(Dir, &'k str)> {
        let (parent, name) = split_key(key);
        Ok((self.open_dir(parent)?, name))
    }

    /// The entry at `key`, without following a final symlink.
    pub fn stat(&self, key: &str) -> io::Result<Option<ReplicaEntry>> {
        if key.is_empty() {
            let m = self.root.dir_metadata()?;
            return entry_of(&self.root, ".", &m).map(Some);
        }
        let (dir, name) = match self.parent_of(key) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        match dir.symlink_metadata(name) {
            Ok(m) => Ok(Some(entry_of(&dir, name, &m)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes whatever is at `key` (a whole directory tree included).
    /// Returns the number of entries removed.
    pub fn remove(&self, key: &str) -> io::Result<u64> {
        let (dir, name) = self.parent_of(key)?;
        let meta = match dir.symlink_metadata(name) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        self.forget_cache();
        if meta.is_dir() {
            let n = count_tree(&dir.open_dir_nofollow(name)?)?;
            self.retire(&dir, name, key)?;
            dir.remove_dir_all(name)?;
            Ok(n + 1)
        } else if meta.is_file() && self.versions.is_some() && !name.starts_with(TEMP_PREFIX) {
            self.retire(&dir, name, key)?;
            Ok(1)
        } else {
            dir.remove_file_or_symlink(name)?;
            Ok(1)
        }
    }

    /// Removes `key` like [`Replica::remove`], except entries for which
    /// `keep(key, is_dir)` holds (excluded paths), and the directories
    /// holding them. Returns the number of entries removed and whether
    /// anything was kept.
    pub fn remove_keeping(
        &self,
        key: &str,
        keep: &dyn Fn(&str, bool) -> bool,
    ) -> io::Result<(u64, bool)> {
        let Some(entry) = self.stat(key)? else {
            return Ok((0, false));
        };
        let is_dir = entry.kind.is_dir();
        if keep(key, is_dir) {
            return Ok((0, true));
        }
        if !is_dir {
            return self.remove(key).map(|n| (n, false));
        }
        let names = list_names(&self.open_dir(key)?)?;
        let (mut removed, mut kept) = (0, false);
        for name in names {
            let (n, k) = self.remove_keeping(&format!("{key}/{name}"), keep)?;
            removed += n;
            kept |= k;
        }
        if !kept {
            removed += self.remove(key)?;
        }
        Ok((removed, kept))
    }

    /// Counts the entries a removal of `key` would remove.
    pub fn count(&self, key: &str) -> io::Result<u64> {
        let (dir, name) = self.parent_of(key)?;
        match dir.symlink_metadata(name) {
            Ok(m) if m.is_dir() => Ok(1 + count_tree(&dir.open_dir_nofollow(name)?)?),
            Ok(_) => Ok(1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    pub fn mkdir(&self, key: &str) -> io::Result<()> {
        let (dir, name) = self.parent_of(key)?;
        match dir.create_dir(name) {
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && dir.symlink_metadata(name)?.is_dir() =>
            {
                Ok(())
            }
            r => r,
        }
    }

    pub fn symlink(&self, key: &str, target: &str) -> io::Result<()> {
        let (dir, name) = self.parent_of(key)?;
        let tmp = temp_name(name);
        // The target is only text: create it verbatim (cap-std's own
        // symlink refuses absolute targets, which are legitimate here).
        #[cfg(unix)]
        rustix::fs::symlinkat(target, &dir, tmp.as_str()).map_err(io::Error::from)?;
        #[cfg(windows)]
        dir.symlink_file(target, &tmp)?;
        dir.rename(&tmp, &dir, name).inspect_err(|_| {
            let _ = dir.remove_file_or_symlink(&tmp);
        })
    }

    /// Sets mode and mtime of a directory or symlink (files get theirs before publishing).
    pub fn set_meta(
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
        let (dir, name) = self.parent_of(key)?;
        let when = Some(SystemTimeSpec::Absolute(
            cap_std::time::SystemTime::from_std(mtime.to_system()),
        ));
        match kind {
            Kind::Symlink { .. } => set_mtime_at(&dir, name, mtime, when, true),
            Kind::Dir => {
                set_mode_at(&dir, name, mode)?;
                set_mtime_at(&dir, name, mtime, when, false)
            }
            Kind::File { .. } => {
                let m = dir.symlink_metadata(name)?;
                if !m.is_file() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a regular file",
                    ));
                }
                #[cfg(unix)]
                {
                    use cap_std::fs::MetadataExt;
                    if m.nlink() > 1 {
                        // A hard link (maybe planted from outside DEST): changing
                        // its metadata in place would change the other name too.
                        return self.rewrite_as_copy(key, mode, mtime);
                    }
                }
                set_mode_at(&dir, name, mode)?;
                set_mtime_at(&dir, name, mtime, when, false)
            }
        }
    }

    /// Gives `to` the file at `from` as another name of it (a hard link),
    /// replacing what `to` held; never through a symlink.
    pub fn hard_link_over(&self, from: &str, to: &str) -> io::Result<()> {
        let (fdir, fname) = self.parent_of(from)?;
        if !fdir.symlink_metadata(fname)?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let (tdir, tname) = self.parent_of(to)?;
        let tmp = temp_name(tname);
        fdir.hard_link(fname, &tdir, &tmp)?;
        self.retire_file_at(&tdir, tname, to)?;
        tdir.rename(&tmp, &tdir, tname).inspect_err(|_| {
            let _ = tdir.remove_file(&tmp);
        })
    }

    /// The inode and link count of the regular file at `key` (None: no
    /// regular file there; (0, 1) where the platform has no inodes).
    pub fn file_links(&self, key: &str) -> io::Result<Option<(u64, u64)>> {
        let (dir, name) = self.parent_of(key)?;
        let m = match dir.symlink_metadata(name) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        #[cfg(unix)]
        {
            use cap_std::fs::MetadataExt;
            Ok(Some((m.ino(), m.nlink())))
        }
        #[cfg(not(unix))]
        {
            let _ = m;
            Ok(Some((0, 1)))
        }
    }

    /// Makes the `user.*` extended attributes of the file or directory at
    /// `key` equal to `want`; returns whether anything changed. Never
    /// through a symlink; a file with other names is first replaced by a
    /// private copy (its other names keep their attributes).
    pub fn set_xattrs(
        &self,
        key: &str,
        kind: &Kind,
        want: &[crate::tree::xattr::Xattr],
    ) -> Result<bool, crate::tree::xattr::XattrError> {
        use crate::tree::xattr::{apply_fd, SUPPORTED};
        if !SUPPORTED && want.is_empty() {
            return Ok(false);
        }
        match kind {
            Kind::Dir => apply_fd(&self.open_dir_for_reading(key)?, want),
            Kind::File { .. } => {
                if let Some((_, links)) = self.file_links(key)? {
                    if links > 1 && !self.read_xattrs_equal(key, want)? {
                        let m = self
                            .stat(key)?
                            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
                        self.rewrite_as_copy(key, m.mode, m.mtime)?;
                    }
                }
                apply_fd(&self.open_read(key)?, want)
            }
            Kind::Symlink { .. } => Ok(false),
        }
    }

    /// Directory `key` opened for reading (cap-std's own directory handles
    /// are bare paths, which fsetxattr refuses), never through a symlink.
    fn open_dir_for_reading(&self, key: &str) -> io::Result<std::fs::File> {
        if key.is_empty() {
            return open_dir_handle(&self.root_path);
        }
        let (dir, name) = self.parent_of(key)?;
        let mut opts = OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        {
            use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsMaybeDirExt};
            opts.follow(FollowSymlinks::No).maybe_dir(true);
        }
        let d = dir.open_with(name, &opts)?.into_std();
        if !d.metadata()?.is_dir() {
            return Err(not_dir(key));
        }
        Ok(d)
    }

    fn read_xattrs_equal(
        &self,
        key: &str,
        want: &[crate::tree::xattr::Xattr],
    ) -> Result<bool, crate::tree::xattr::XattrError> {
        Ok(crate::tree::xattr::read_fd(&self.open_read(key)?)? == want)
    }

    /// Replaces the file at `key` by a private copy with the given metadata.
    pub fn rewrite_as_copy(
        &self,
        key: &str,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<()> {
        let mut src = self.open_read(key)?;
        let tmp = self.create_temp(key)?;
        io::copy(&mut src, &mut &tmp.file)?;
        // The same content under the same name: no version of it.
        self.publish_inner(tmp, key, mode, mtime, false, false)
            .map(|_| ())
    }

    /// Creates a temporary file beside `key`.
    pub fn create_temp(&self, key: &str) -> io::Result<TempFile> {
        let (dir, name) = self.parent_of(key)?;
        let tmp = temp_name(name);
        let file = dir
            .open_with(
                &tmp,
                OpenOptions::new().read(true).write(true).create_new(true),
            )?
            .into_std();
        Ok(TempFile {
            file,
            dir,
            name: tmp,
            published: false,
        })
    }

    /// Takes over a temporary file beside `key` kept from an earlier pass:
    /// its directory is resolved again from DEST and must still hold that
    /// very file under its name. Otherwise the file is let go (its name is
    /// not removed through the old handle, which may now point outside DEST).
    pub fn adopt_temp(&self, key: &str, mut old: TempFile) -> io::Result<TempFile> {
        // However this ends, `old` must not remove anything through its handle.
        old.published = true;
        let tkey = beside(key, &old.name);
        let same = matches!(
            self.stat(&tkey)?,
            Some(ReplicaEntry { kind: Kind::File { .. }, ino, .. }) if ino == file_ino(&old.file)
        );
        if !same {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the kept partial file is no longer in place",
            ));
        }
        let (dir, _) = self.parent_of(key)?;
        Ok(TempFile {
            file: old.file.try_clone()?,
            dir,
            name: old.name.clone(),
            published: false,
        })
    }

    /// Gives a finished temporary file its mode and mtime and renames it
    /// over `key` (the file it replaces goes to the versions, if any).
    pub fn publish(
        &self,
        tmp: TempFile,
        key: &str,
        mode: Option<u32>,
        mtime: Timestamp,
        fsync: bool,
    ) -> io::Result<u64> {
        self.publish_inner(tmp, key, mode, mtime, fsync, true)
    }

    /// The regular file at `name` in `dir`, if there is one, into the
    /// versions.
    fn retire_file_at(&self, dir: &Dir, name: &str, key: &str) -> io::Result<()> {
        if self.versions.is_some() && dir.symlink_metadata(name).is_ok_and(|m| m.is_file()) {
            self.retire(dir, name, key)?;
        }
        Ok(())
    }

    fn publish_inner(
        &self,
        mut tmp: TempFile,
        key: &str,
        mode: Option<u32>,
        mtime: Timestamp,
        fsync: bool,
        retire: bool,
    ) -> io::Result<u64> {
        set_file_mode(&tmp.file, mode)?;
        tmp.file
            .set_times(std::fs::FileTimes::new().set_modified(mtime.to_system()))?;
        if fsync {
            tmp.file.sync_all()?;
        }
        let ino = file_ino(&tmp.file);
        let (_, name) = split_key(key);
        if retire {
            self.retire_file_at(&tmp.dir, name, key)?;
        }
        tmp.dir.rename(&tmp.name, &tmp.dir, name)?;
        tmp.published = true;
        Ok(ino)
    }

    /// Hard-links the file at `key` under a temporary name beside it and
    /// returns that name's key.
    pub fn link_aside(&self, key: &str) -> io::Result<String> {
        let (dir, name) = self.parent_of(key)?;
        let tmp = temp_name(name);
        dir.hard_link(name, &dir, &tmp)?;
        Ok(beside(key, &tmp))
    }

    /// Renames `from` to `to` (a move inside the replica).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (fdir, fname) = self.parent_of(from)?;
        let (tdir, tname) = self.parent_of(to)?;
        self.forget_cache();
        self.retire_file_at(&tdir, tname, to)?;
        fdir.rename(fname, &tdir, tname)
    }

    /// Opens a replica file for reading (never through a symlink); a key
    /// starting with [`crate::versions::INDEX_PREFIX`] names a version.
    pub fn open_read(&self, key: &str) -> io::Result<std::fs::File> {
        let (dir, name) = match (
            key.strip_prefix(crate::versions::INDEX_PREFIX),
            &self.versions,
        ) {
            (Some(vkey), Some((into, _))) => {
                let (parent, name) = split_key(vkey);
                let dir = if parent.is_empty() {
                    into.try_clone()?
                } else {
                    crate::versions::open_below(into, parent)?
                };
                (dir, name)
            }
            (Some(_), None) => return Err(io::ErrorKind::NotFound.into()),
            (None, _) => self.parent_of(key)?,
        };
        if !dir.symlink_metadata(name)?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut opts = OpenOptions::new();
        opts.read(true);
        Ok(dir.open_with(name, &opts)?.into_std())
    }

    /// Scans the parts of the replica the source manifest covers.
    pub fn scan(
        &self,
        source: &Manifest,
        keys: &crate::plan::Keys,
        filter: &Filter,
        delete_excluded: bool,
        checksum: bool,
    ) -> (ReplicaView, ScanExtras) {
        // A directory may have been moved away since the last pass: never
        // reuse a handle across passes.
        self.forget_cache();
        let mut view = ReplicaView::new(source.entries.len());
        // With --checksum, files that look identical are still compared, so
        // they are kept whole.
        let fold = |e: &crate::tree::Entry, r: &ReplicaEntry| {
            identical(e, r) && !(checksum && matches!(e.kind, Kind::File { .. }))
        };
        let mut extras = ScanExtras::default();
        let opaque: HashSet<u32> = source.opaque.iter().copied().collect();
        let partial: HashSet<u32> = source.partial.iter().copied().collect();
        let children = Children::of(source);
        if let Ok(m) = self.root.dir_metadata() {
            if let Ok(e) = entry_of(&self.root, ".", &m) {
                let e = ReplicaEntry {
                    kind: Kind::Dir,
                    ..e
                };
                match source.entries.first() {
                    Some(root) if fold(root, &e) => view.mark_same(0),
                    _ => view.insert(String::new(), e),
                }
            }
        }
        let mut stack: Vec<(u32, Dir)> = Vec::new();
        for (i, e) in source.entries.iter().enumerate() {
            let id = i as u32;
            if !e.kind.is_dir() || opaque.contains(&id) {
                continue;
            }
            let key = &keys[i];
            if i > 0
                && !view.is_same(id)
                && !matches!(
                    view.get(key),
                    Some(ReplicaEntry {
                        kind: Kind::Dir,
                        ..
                    })
                )
            {
                continue;
            }
            while stack.last().is_some_and(|(top, _)| *top != e.parent) {
                stack.pop();
            }
            let dir = if i == 0 {
                self.root.try_clone()
            } else {
                match stack.last() {
                    Some((_, parent)) => parent.open_dir_nofollow(&e.name),
                    None => Err(not_dir(key)),
                }
            };
            let dir = match dir {
                Ok(d) => d,
                Err(err) => {
                    extras.problems.push((key.to_string(), describe_io(&err)));
                    continue;
                }
            };
            let source_names: HashMap<&str, u32> = children
                .of_entry(i)
                .iter()
                .map(|&c| (source.entries[c as usize].name.as_str(), c))
                .collect();
            let names: Vec<String> = if partial.contains(&id) {
                children
                    .of_entry(i)
                    .iter()
                    .map(|&c| source.entries[c as usize].name.clone())
                    .collect()
            } else {
                match list_names(&dir) {
                    Ok(n) => n,
                    Err(err) => {
                        extras.problems.push((
                            key.to_string(),
                            format!("cannot list: {}", describe_io(&err)),
                        ));
                        Vec::new()
                    }
                }
            };
            for name in names {
                let child_key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}/{name}")
                };
                let in_source = source_names.get(name.as_str()).copied();
                if name.starts_with(TEMP_PREFIX) && in_source.is_none() {
                    extras.stale_temps.push(child_key);
                    continue;
                }
                match dir.symlink_metadata(&name) {
                    Ok(m) => {
                        if !delete_excluded && filter.is_excluded(&child_key, m.is_dir()) {
                            continue;
                        }
                        #[cfg(unix)]
                        {
                            use cap_std::fs::MetadataExt;
                            if m.is_file() && m.nlink() > 1 {
                                extras.linked.push((child_key.clone(), m.ino()));
                            }
                        }
                        match entry_of(&dir, &name, &m) {
                            Ok(entry) => match in_source {
                                Some(c) if fold(&source.entries[c as usize], &entry) => {
                                    view.mark_same(c)
                                }
                                _ => view.insert(child_key, entry),
                            },
                            Err(err) => extras.problems.push((child_key, describe_io(&err))),
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => extras.problems.push((child_key, describe_io(&err))),
                }
            }
            stack.push((id, dir));
        }
        (view, extras)
    }
}

/// Each manifest entry's children, as one array cut by offsets (two `u32`
/// per entry instead of a vector per entry).
struct Children {
    start: Vec<u32>,
    items: Vec<u32>,
}

impl Children {
    fn of(source: &Manifest) -> Self {
        let n = source.entries.len();
        let mut start = vec![0u32; n + 1];
        for e in source.entries.iter().skip(1) {
            start[e.parent as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut items = vec![0u32; n.saturating_sub(1)];
        for (i, e) in source.entries.iter().enumerate().skip(1) {
            let at = &mut fill[e.parent as usize];
            items[*at as usize] = i as u32;
            *at += 1;
        }
        Children { start, items }
    }

    fn of_entry(&self, i: usize) -> &[u32] {
        &self.items[self.start[i] as usize..self.start[i + 1] as usize]
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

fn entry_of(dir: &Dir, name: &str, m: &cap_std::fs::Metadata) -> io::Result<ReplicaEntry> {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        let target = dir.read_link_contents(name)?;
        Kind::Symlink {
            target: target.to_string_lossy().into_owned(),
        }
    } else if ft.is_file() {
        Kind::File { size: m.len() }
    } else {
        // A special file in the replica is never in the source: treat it as
        // an entry of its own kind so the plan removes it.
        Kind::Symlink {
            target: "\0special".into(),
        }
    };
    let mtime = m
        .modified()
        .map(|t| Timestamp::from_system(t.into_std()))
        .unwrap_or_default();
    #[cfg(unix)]
    let (mode, ino) = {
        use cap_std::fs::MetadataExt;
        (Some(m.mode() & 0o7777), m.ino())
    };
    #[cfg(not(unix))]
    let (mode, ino) = (None, 0);
    Ok(ReplicaEntry {
        kind,
        mode,
        mtime,
        ino,
    })
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

/// Sets the mtime of `name` in `dir` (of the link itself with `nofollow`),
/// leaving the access time alone. Times before 1970 work.
#[allow(unused_variables)]
fn set_mtime_at(
    dir: &Dir,
    name: &str,
    mtime: Timestamp,
    when: Option<SystemTimeSpec>,
    nofollow: bool,
) -> io::Result<()> {
    #[cfg(unix)]
    {
        use rustix::fs::{AtFlags, Timespec, Timestamps, UTIME_OMIT};
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: mtime.secs as _,
                tv_nsec: mtime.nanos as _,
            },
        };
        let flags = if nofollow {
            AtFlags::SYMLINK_NOFOLLOW
        } else {
            AtFlags::empty()
        };
        rustix::fs::utimensat(dir, name, &times, flags).map_err(io::Error::from)
    }
    #[cfg(not(unix))]
    {
        if nofollow {
            dir.set_symlink_times(name, None, when)
        } else {
            dir.set_times(name, None, when)
        }
    }
}

fn set_mode_at(dir: &Dir, name: &str, mode: Option<u32>) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(mode) = mode {
        use cap_std::fs::PermissionsExt;
        dir.set_permissions(name, cap_std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (dir, name, mode);
    Ok(())
}

fn set_file_mode(file: &std::fs::File, mode: Option<u32>) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (file, mode);
    Ok(())
}

/// A handle on a directory that can change its times and mode.
fn open_dir_handle(path: &Path) -> io::Result<std::fs::File> {
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        // FILE_FLAG_BACKUP_SEMANTICS is required to open a directory.
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(0x0200_0000)
            .open(path)
    }
    #[cfg(not(windows))]
    {
        std::fs::File::open(path)
    }
}

/// The inode of an open file (0 where the platform has none).
pub fn file_ino(file: &std::fs::File) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata().map(|m| m.ino()).unwrap_or(0)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        0
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            let n = file.seek_read(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}

/// Writes all of `buf` at `offset`; zeros over a hole are left a hole
/// ([`crate::sparse`]).
pub fn write_at(file: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
    crate::sparse::write_at(file, buf, offset)
}
