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
