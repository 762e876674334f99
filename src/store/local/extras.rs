//! What the local store does for issue 17: versions of removed and replaced
//! files (`--versions DIR`), hard links, and `user.*` extended attributes.
//! Every call resolves its path from DEST (or from DIR) one component at a
//! time without following a symlink, as the rest of the store does.

use super::{split_key, LocalStore, TEMP_PREFIX};
use crate::tree::xattr::{self, Xattr, XattrError};
use crate::tree::{Kind, Timestamp};
use crate::versions::{self, VersionsOptions};
use cap_std::fs::{Dir, OpenOptions};
use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

/// The local store's state for issue 17.
#[derive(Default)]
pub(super) struct Extras {
    /// `--versions`: DIR's handle and how long versions are kept.
    versions: Option<(Dir, Duration)>,
    /// Files moved into DIR since last asked: (key, key in DIR).
    retired: Mutex<Vec<(String, String)>>,
    /// Files seen with more than one link since the last refresh, with
    /// their inode.
    linked: Mutex<HashMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalStore {
    /// Moves removed and replaced files into `v.dir` (checked by
    /// [`versions::check_dir`]) instead of deleting them.
    pub fn with_versions(mut self, v: &VersionsOptions) -> io::Result<Self> {
        let dir = Dir::open_ambient_dir(&v.dir, cap_std::ambient_authority())?;
        self.extras.versions = Some((dir, v.keep));
        Ok(self)
    }

    /// With `--versions`: moves the regular files at or below `name` in
    /// `dir` (the replica's `key`) into DIR; temporary files never.
    pub(super) fn retire(&self, dir: &Dir, name: &str, key: &str) -> io::Result<()> {
        let Some((into, _)) = &self.extras.versions else {
            return Ok(());
        };
        if name.starts_with(TEMP_PREFIX) {
            return Ok(());
        }
        let stamp = versions::stamp(std::time::SystemTime::now());
        let mut moved = lock(&self.extras.retired);
        versions::retire(dir, name, key, into, &stamp, &mut moved).map(|_| ())
    }

    /// The regular file at `name` in `dir`, if any, into DIR.
    pub(super) fn retire_file_at(&self, dir: &Dir, name: &str, key: &str) -> io::Result<()> {
        if self.extras.versions.is_some() && dir.symlink_metadata(name).is_ok_and(|m| m.is_file()) {
            self.retire(dir, name, key)?;
        }
        Ok(())
    }

    pub(super) fn versions_on(&self) -> bool {
        self.extras.versions.is_some()
    }

    pub(super) fn take_retired_files(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *lock(&self.extras.retired))
    }

    pub(super) fn prune(&self) -> io::Result<Vec<String>> {
        match &self.extras.versions {
            Some((into, keep)) => versions::prune_dir(into, std::time::SystemTime::now(), *keep),
            None => Ok(Vec::new()),
        }
    }

    /// DIR's directory and name for a version's key (after
    /// [`versions::INDEX_PREFIX`]).
    pub(super) fn version_parent(&self, vkey: &str) -> io::Result<(Dir, String)> {
        let Some((into, _)) = &self.extras.versions else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let (parent, name) = split_key(vkey);
        let dir = if parent.is_empty() {
            into.try_clone()?
        } else {
            versions::open_below(into, parent)?
        };
        Ok((dir, name.to_string()))
    }

    /// Remembers a file seen with more than one link.
    pub(super) fn note_links(&self, key: &str, m: &cap_std::fs::Metadata) {
        #[cfg(unix)]
        {
            use cap_std::fs::MetadataExt;
            if m.is_file() && m.nlink() > 1 {
                lock(&self.extras.linked).insert(key.to_string(), m.ino());
            }
        }
        #[cfg(not(unix))]
        let _ = (key, m);
    }

    pub(super) fn forget_links(&self) {
        lock(&self.extras.linked).clear();
    }

    pub(super) fn take_linked_files(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::mem::take(&mut *lock(&self.extras.linked))
            .into_iter()
            .collect();
        v.sort();
        v
    }

    pub(super) fn links_of(&self, key: &str) -> io::Result<Option<(u64, u64)>> {
        self.with_parent(key, |dir, name| {
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
        })
    }

    /// `to` becomes another name of the file at `from` (what `to` held goes
    /// to the versions, if any).
    pub(super) fn link_over(&self, from: &str, to: &str) -> io::Result<()> {
        let (fdir, fname) = split_key(from);
        let source = self.with_dir(fdir, |d| d.try_clone())?;
        if !source.symlink_metadata(fname)?.is_file() {
            return Err(super::not_file());
        }
        self.with_parent(to, |dir, name| {
            let tmp = super::temp_name(name);
            source.hard_link(fname, dir, &tmp)?;
            self.retire_file_at(dir, name, to)?;
            dir.rename(&tmp, dir, name).inspect_err(|_| {
                let _ = dir.remove_file(&tmp);
            })
        })
    }

    /// Makes the `user.*` attributes of `key` equal to `want`, through a
    /// handle opened without following a link. A file with other names is
    /// first given a private copy when its attributes must change.
    pub(super) fn xattrs_to(
        &self,
        key: &str,
        kind: &Kind,
        want: &[Xattr],
    ) -> Result<bool, XattrError> {
        if !xattr::SUPPORTED && want.is_empty() {
            return Ok(false);
        }
        match kind {
            Kind::Dir => xattr::apply_fd(&self.open_for_reading(key, true)?, want),
            Kind::File { .. } => {
                let f = self.open_for_reading(key, false)?;
                if self.links_of(key)?.is_some_and(|(_, n)| n > 1) && xattr::read_fd(&f)? != want {
                    let e = self.stat_entry(key)?;
                    self.copy_in_place(key, e.0, e.1)?;
                    return xattr::apply_fd(&self.open_for_reading(key, false)?, want);
                }
                xattr::apply_fd(&f, want)
            }
            Kind::Symlink { .. } => Ok(false),
        }
    }

    fn stat_entry(&self, key: &str) -> io::Result<(Option<u32>, Timestamp)> {
        use super::Store;
        let e = self.stat(key)?.ok_or(io::ErrorKind::NotFound)?;
        Ok((e.mode, e.mtime))
    }

    /// `key` opened for reading, never through a symlink: a directory (the
    /// root included) or a regular file.
    fn open_for_reading(&self, key: &str, dir: bool) -> io::Result<std::fs::File> {
        if key.is_empty() {
            return super::open_dir_handle(&self.root_path);
        }
        self.with_parent(key, |parent, name| {
            let mut opts = OpenOptions::new();
            opts.read(true);
            #[cfg(unix)]
            {
                use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsMaybeDirExt};
                opts.follow(FollowSymlinks::No).maybe_dir(dir);
            }
            let f = parent.open_with(name, &opts)?.into_std();
            let m = f.metadata()?;
            if (dir && !m.is_dir()) || (!dir && !m.is_file()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{key}: not the kind of entry expected"),
                ));
            }
            Ok(f)
        })
    }
}
