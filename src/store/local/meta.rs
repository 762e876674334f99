//! Stat and metadata calls of the local store, one place per platform.

use crate::plan::ReplicaEntry;
use crate::tree::{Kind, Timestamp, Version};
#[cfg(not(unix))]
use cap_fs_ext::DirExt;
use cap_fs_ext::SystemTimeSpec;
use cap_std::fs::Dir;
use std::io;
use std::path::Path;

/// What the replica holds at `name` in `dir`, from its metadata `m`.
pub(super) fn entry_of(
    dir: &Dir,
    name: &str,
    m: &cap_std::fs::Metadata,
) -> io::Result<ReplicaEntry> {
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
    let (mode, version) = {
        use cap_std::fs::MetadataExt;
        (Some(m.mode() & 0o7777), Version(m.ino()))
    };
    #[cfg(not(unix))]
    let (mode, version) = (None, Version::UNKNOWN);
    Ok(ReplicaEntry {
        kind,
        mode,
        mtime,
        version,
    })
}

/// Sets mode and mtime of directory `name` in `dir`. On unix through a
/// handle opened without following a link: a directory swapped for a
/// symlink meanwhile is refused, never followed out of DEST.
pub(super) fn set_dir_meta(
    dir: &Dir,
    name: &str,
    mode: Option<u32>,
    mtime: Timestamp,
) -> io::Result<()> {
    #[cfg(unix)]
    {
        use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsMaybeDirExt};
        // Opened for reading (not as a bare path, which cap-std's own
        // directory handles are): fchmod and futimens need that.
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.read(true).follow(FollowSymlinks::No).maybe_dir(true);
        let d = match dir.open_with(name, &opts) {
            Ok(d) => d,
            // Unreadable (mode without r for the owner): checked, then
            // changed by name (the link itself for the mtime).
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                if !dir.symlink_metadata(name)?.is_dir() {
                    return Err(e);
                }
                set_mode_at(dir, name, mode)?;
                return set_mtime_at(dir, name, mtime, when(mtime), true);
            }
            Err(e) => return Err(e),
        };
        if !d.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{name} is not a directory"),
            ));
        }
        set_fd_meta(&d, mode, mtime)
    }
    #[cfg(not(unix))]
    {
        set_mode_at(dir, name, mode)?;
        set_mtime_at(dir, name, mtime, when(mtime), false)
    }
}

/// Sets mode and mtime of regular file `name` in `dir`; false (and nothing
/// changed) when the file has other names (hard links, maybe planted from
/// outside DEST: changing it in place would change them too). On unix the
/// file is opened without following a link and checked and changed
/// through that handle, so a swap meanwhile cannot redirect the change.
pub(super) fn set_file_meta(
    dir: &Dir,
    name: &str,
    mode: Option<u32>,
    mtime: Timestamp,
) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
        use cap_std::fs::MetadataExt;
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.read(true).follow(FollowSymlinks::No);
        match dir.open_with(name, &opts) {
            Ok(f) => {
                let m = f.metadata()?;
                if !m.is_file() {
                    return Err(not_file());
                }
                if m.nlink() > 1 {
                    return Ok(false);
                }
                set_fd_meta(&f, mode, mtime).map(|()| true)
            }
            // Unreadable: checked, then changed by name (the link itself
            // for the mtime).
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                set_file_meta_by_name(dir, name, mode, mtime)
            }
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    set_file_meta_by_name(dir, name, mode, mtime)
}

fn set_file_meta_by_name(
    dir: &Dir,
    name: &str,
    mode: Option<u32>,
    mtime: Timestamp,
) -> io::Result<bool> {
    let m = dir.symlink_metadata(name)?;
    if !m.is_file() {
        return Err(not_file());
    }
    #[cfg(unix)]
    {
        use cap_std::fs::MetadataExt;
        if m.nlink() > 1 {
            return Ok(false);
        }
    }
    set_mode_at(dir, name, mode)?;
    set_mtime_at(dir, name, mtime, when(mtime), true)?;
    Ok(true)
}

pub(super) fn not_file() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")
}

/// The mtime as cap-std wants it (non-unix paths).
pub(super) fn when(mtime: Timestamp) -> Option<SystemTimeSpec> {
    Some(SystemTimeSpec::Absolute(
        cap_std::time::SystemTime::from_std(mtime.to_system()),
    ))
}

/// Mode and mtime through an open handle (the access time is left alone).
#[cfg(unix)]
fn set_fd_meta(fd: impl std::os::fd::AsFd, mode: Option<u32>, mtime: Timestamp) -> io::Result<()> {
    if let Some(mode) = mode {
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(mode as _))
            .map_err(io::Error::from)?;
    }
    rustix::fs::futimens(&fd, &timestamps(mtime)).map_err(io::Error::from)
}

#[cfg(unix)]
fn timestamps(mtime: Timestamp) -> rustix::fs::Timestamps {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime.secs as _,
            tv_nsec: mtime.nanos as _,
        },
    }
}

/// Sets the mtime of `name` in `dir` (of the link itself with `nofollow`),
/// leaving the access time alone. Times before 1970 work.
#[allow(unused_variables)]
pub(super) fn set_mtime_at(
    dir: &Dir,
    name: &str,
    mtime: Timestamp,
    when: Option<SystemTimeSpec>,
    nofollow: bool,
) -> io::Result<()> {
    #[cfg(unix)]
    {
        use rustix::fs::AtFlags;
        let times = timestamps(mtime);
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

pub(super) fn set_mode_at(dir: &Dir, name: &str, mode: Option<u32>) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(mode) = mode {
        use cap_std::fs::PermissionsExt;
        dir.set_permissions(name, cap_std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (dir, name, mode);
    Ok(())
}

pub(super) fn set_file_mode(file: &std::fs::File, mode: Option<u32>) -> io::Result<()> {
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
pub(super) fn open_dir_handle(path: &Path) -> io::Result<std::fs::File> {
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

/// The version (inode) of an open file (unknown where the platform has none).
pub(super) fn file_version(file: &std::fs::File) -> Version {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata()
            .map(|m| Version(m.ino()))
            .unwrap_or_default()
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Version::UNKNOWN
    }
}
