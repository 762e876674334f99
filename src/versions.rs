//! `--versions DIR`: nothing a pass removes or replaces is lost at once.
//! A file the pass would delete or overwrite is moved (not copied) into DIR
//! under its relative path, with `~YYYYMMDD-HHMMSS` before its extension
//! (Syncthing's "simple versioning" names); `--keep-versions DURATION`
//! prunes older versions at the end of a pass.
//!
//! This module is the part that knows nothing of stores or sessions: the
//! names ([`version_key`], [`parse_stamp`]), where DIR may be
//! ([`check_dir`]), moving files in ([`retire`]) and pruning ([`prune_dir`]),
//! both on directory handles that never follow a symlink.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Index keys of versions are their key in DIR after this prefix: no key
/// of the replica starts with `/`, so the two never meet.
pub const INDEX_PREFIX: &str = "/";

/// Default of `--keep-versions`: 30 days.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a versions directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    #[error("--versions {}: inside the destination {} (a pass would treat versions as extra files); put it beside it", dir.display(), dest.display())]
    InsideDest { dir: PathBuf, dest: PathBuf },
    #[error("--versions {}: holds the destination {}; put it beside it", dir.display(), dest.display())]
    HoldsDest { dir: PathBuf, dest: PathBuf },
    #[error("--versions {}: on another filesystem than the destination {} (versions are moved, not copied); put it beside it", dir.display(), dest.display())]
    OtherFilesystem { dir: PathBuf, dest: PathBuf },
    #[error("--versions {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Settings of versioning, as a server (or the server half of a local
/// sync) holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionsOptions {
    /// Canonical path of DIR (outside DEST).
    pub dir: PathBuf,
    /// Versions older than this are removed at the end of a pass.
    pub keep: Duration,
}

/// Creates DIR if needed and refuses it inside DEST or holding DEST
/// (`dest` canonical). Returns DIR's canonical path.
pub fn check_dir(dir: &Path, dest: &Path) -> Result<PathBuf, VersionsError> {
    std::fs::create_dir_all(dir).map_err(|source| VersionsError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    let canon = std::fs::canonicalize(dir).map_err(|source| VersionsError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    if canon.starts_with(dest) {
        return Err(VersionsError::InsideDest {
            dir: dir.to_path_buf(),
            dest: dest.to_path_buf(),
        });
    }
    if dest.starts_with(&canon) {
        return Err(VersionsError::HoldsDest {
            dir: dir.to_path_buf(),
            dest: dest.to_path_buf(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
        if let (Ok(a), Ok(b)) = (dev(&canon), dev(dest)) {
            if a != b {
                return Err(VersionsError::OtherFilesystem {
                    dir: dir.to_path_buf(),
                    dest: dest.to_path_buf(),
                });
            }
        }
    }
    Ok(canon)
}

/// `YYYYMMDD-HHMMSS` of `t`, in UTC.
pub fn stamp(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The key of a version of `key` made at `stamp`: `d/photo~20240102-030405.jpg`.
/// The extension is what follows the last dot of the last component,
/// unless that dot starts the name (`.bashrc~…`).
pub fn version_key(key: &str, stamp: &str) -> String {
    let (dir, name) = match key.rfind('/') {
        Some(i) => (&key[..=i], &key[i + 1..]),
        None => ("", key),
    };
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{dir}{}~{stamp}{}", &name[..dot], &name[dot..]),
        _ => format!("{dir}{name}~{stamp}"),
    }
}

/// The stamp of a version's file name, if it is one (`a~20240102-030405.txt`).
pub fn parse_stamp(name: &str) -> Option<SystemTime> {
    let at = name.rfind('~')?;
    let s = name.get(at + 1..at + 16)?;
    let rest = &name[at + 16..];
    // A counter may follow when two versions of one file share a second.
    let rest = match rest.strip_prefix('-') {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    if !(rest.is_empty() || rest.starts_with('.')) {
        return None;
    }
    let b = s.as_bytes();
    if b[8] != b'-'
        || !b
            .iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit())
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().ok();
    let month = time::Month::try_from(n(4..6)? as u8).ok()?;
    let date = time::Date::from_calendar_date(n(0..4)? as i32, month, n(6..8)? as u8).ok()?;
    let clock = time::Time::from_hms(n(9..11)? as u8, n(11..13)? as u8, n(13..15)? as u8).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .into(),
    )
}

/// Whether a version named `name` is older than `keep` at `now`. Names
/// without a stamp are never pruned (they are not ours).
pub fn expired(name: &str, now: SystemTime, keep: Duration) -> bool {
    parse_stamp(name)
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age > keep)
}

/// Removes the files of the versions directory `dir` whose stamp is older
/// than `keep`, and the directories that leaves empty (`dir` itself
/// stays). Returns the keys of the files that went. Never follows a
/// symlink.
pub fn prune_dir(
    dir: &cap_std::fs::Dir,
    now: SystemTime,
    keep: Duration,
) -> std::io::Result<Vec<String>> {
    fn walk(
        d: &cap_std::fs::Dir,
        at: &str,
        now: SystemTime,
        keep: Duration,
        gone: &mut Vec<String>,
    ) -> std::io::Result<bool> {
        use cap_fs_ext::DirExt;
        let mut empty = true;
        for e in d.entries()? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                empty = false;
                continue;
            };
            let ft = d.symlink_metadata(name)?.file_type();
            let key = if at.is_empty() {
                name.to_string()
            } else {
                format!("{at}/{name}")
            };
            if ft.is_dir() {
                if walk(&d.open_dir_nofollow(name)?, &key, now, keep, gone)? {
                    d.remove_dir(name)?;
                } else {
                    empty = false;
                }
            } else if expired(name, now, keep) {
                d.remove_file_or_symlink(name)?;
                gone.push(key);
            } else {
                empty = false;
            }
        }
        Ok(empty)
    }
    let mut gone = Vec::new();
    walk(dir, "", now, keep, &mut gone)?;
    Ok(gone)
}

/// Moves whatever regular files are at or below `name` in `dir` (the
/// replica's key `key`) into `into`, the versions directory, under their
/// keys with `stamp`. Symlinks and directories stay (the caller removes
/// them). Never follows a symlink on either side.
pub fn retire(
    dir: &cap_std::fs::Dir,
    name: &str,
    key: &str,
    into: &cap_std::fs::Dir,
    stamp: &str,
    moved: &mut Vec<(String, String)>,
) -> std::io::Result<u64> {
    let meta = match dir.symlink_metadata(name) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if meta.is_file() {
        moved.push((key.to_string(), retire_file(dir, name, key, into, stamp)?));
        return Ok(1);
    }
    if !meta.is_dir() {
        return Ok(0);
    }
    use cap_fs_ext::DirExt;
    let sub = dir.open_dir_nofollow(name)?;
    let mut names = Vec::new();
    for e in sub.entries()? {
        if let Ok(n) = e?.file_name().into_string() {
            names.push(n);
        }
    }
    let mut n = 0;
    for child in names {
        n += retire(&sub, &child, &format!("{key}/{child}"), into, stamp, moved)?;
    }
    Ok(n)
}

/// Moves one file; returns its key in the versions directory.
fn retire_file(
    dir: &cap_std::fs::Dir,
    name: &str,
    key: &str,
    into: &cap_std::fs::Dir,
    stamp: &str,
) -> std::io::Result<String> {
    let vkey = version_key(key, stamp);
    let (parent, _) = vkey.rsplit_once('/').unwrap_or(("", &vkey));
    let target = if parent.is_empty() {
        into.try_clone()?
    } else {
        into.create_dir_all(parent)?;
        open_below(into, parent)?
    };
    // Two versions of one file in one second: a counter after the stamp.
    for n in 0..1000u32 {
        let s = if n == 0 {
            stamp.to_string()
        } else {
            format!("{stamp}-{n}")
        };
        let vname = version_key(key.rsplit('/').next().unwrap_or(key), &s);
        if target.symlink_metadata(&vname).is_ok() {
            continue;
        }
        dir.rename(name, &target, &vname)?;
        return Ok(if parent.is_empty() {
            vname
        } else {
            format!("{parent}/{vname}")
        });
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("{vkey}: too many versions in one second"),
    ))
}

/// Directory `rel` below `root`, one component at a time, never through a
/// symlink.
pub fn open_below(root: &cap_std::fs::Dir, rel: &str) -> std::io::Result<cap_std::fs::Dir> {
    use cap_fs_ext::DirExt;
    let mut d = root.try_clone()?;
    for comp in rel.split('/') {
        d = d.open_dir_nofollow(comp)?;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn names_put_the_stamp_before_the_extension() {
        let s = stamp(at(1_704_164_645)); // 2024-01-02 03:04:05 UTC
        assert_eq!(s, "20240102-030405");
        assert_eq!(version_key("a.txt", &s), "a~20240102-030405.txt");
        assert_eq!(
            version_key("d/e/photo.tar.gz", &s),
            "d/e/photo.tar~20240102-030405.gz"
        );
        assert_eq!(version_key("d/Makefile", &s), "d/Makefile~20240102-030405");
        assert_eq!(version_key(".bashrc", &s), ".bashrc~20240102-030405");
        assert_eq!(version_key("d.x/y", &s), "d.x/y~20240102-030405");
    }

    #[test]
    fn stamps_read_back() {
        let t = at(1_704_164_645);
        for name in [
            "a~20240102-030405.txt",
            "Makefile~20240102-030405",
            "a~20240102-030405-2.txt",
        ] {
            assert_eq!(parse_stamp(name), Some(t), "{name}");
        }
        for name in [
            "a.txt",
            "a~2024010-030405.txt",
            "a~20241302-030405",
            "a~20240102-030405x",
            "a~20240102_030405",
            "~",
            "a~é0240102-030405",
        ] {
            assert_eq!(parse_stamp(name), None, "{name}");
        }
    }

    #[test]
    fn expiry_follows_the_stamp() {
        let t = at(1_704_164_645);
        let day = Duration::from_secs(86400);
        assert!(!expired("a~20240102-030405.txt", t + day, DEFAULT_KEEP));
        assert!(expired("a~20240102-030405.txt", t + 31 * day, DEFAULT_KEEP));
        assert!(!expired("not-a-version.txt", t + 999 * day, DEFAULT_KEEP));
    }

    #[test]
    fn a_dir_inside_or_holding_dest_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let dest = std::fs::canonicalize(&dest).unwrap();
        assert!(matches!(
            check_dir(&dest.join(".versions"), &dest),
            Err(VersionsError::InsideDest { .. })
        ));
        assert!(matches!(
            check_dir(tmp.path(), &dest),
            Err(VersionsError::HoldsDest { .. })
        ));
        let ok = check_dir(&tmp.path().join("versions"), &dest).unwrap();
        assert!(ok.is_dir());
    }

    #[test]
    fn pruning_removes_old_versions_and_the_folders_they_leave_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let v = tmp.path();
        std::fs::create_dir_all(v.join("old/deeper")).unwrap();
        std::fs::create_dir_all(v.join("mixed")).unwrap();
        for (p, body) in [
            ("old/deeper/a~20200101-000000.txt", "x"),
            ("mixed/b~20200101-000000", "x"),
            ("mixed/b~20240102-030405", "x"),
            ("mixed/notes.txt", "x"),
        ] {
            std::fs::write(v.join(p), body).unwrap();
        }
        let dir = cap_std::fs::Dir::open_ambient_dir(v, cap_std::ambient_authority()).unwrap();
        let mut gone = prune_dir(&dir, at(1_704_164_645 + 3600), DEFAULT_KEEP).unwrap();
        gone.sort();
        assert_eq!(
            gone,
            [
                "mixed/b~20200101-000000",
                "old/deeper/a~20200101-000000.txt"
            ]
        );
        assert!(!v.join("old").exists());
        assert!(v.join("mixed/b~20240102-030405").exists());
        assert!(v.join("mixed/notes.txt").exists());
        assert!(v.exists());
    }

    #[test]
    fn retiring_moves_files_under_their_keys_and_leaves_the_rest() {
        use cap_std::{ambient_authority, fs::Dir};
        let tmp = tempfile::tempdir().unwrap();
        let (d, v) = (tmp.path().join("dest"), tmp.path().join("versions"));
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(d.join("sub/a.txt"), "a").unwrap();
        std::fs::write(d.join("sub/deeper/b"), "b").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("a.txt", d.join("sub/link")).unwrap();
        let dest = Dir::open_ambient_dir(&d, ambient_authority()).unwrap();
        let into = Dir::open_ambient_dir(&v, ambient_authority()).unwrap();
        let mut moved = Vec::new();
        let n = retire(&dest, "sub", "sub", &into, "20240102-030405", &mut moved).unwrap();
        assert_eq!(n, 2);
        moved.sort();
        assert_eq!(
            moved,
            [
                (
                    "sub/a.txt".to_string(),
                    "sub/a~20240102-030405.txt".to_string()
                ),
                (
                    "sub/deeper/b".to_string(),
                    "sub/deeper/b~20240102-030405".to_string()
                )
            ]
        );
        assert_eq!(
            std::fs::read_to_string(v.join("sub/a~20240102-030405.txt")).unwrap(),
            "a"
        );
        assert!(v.join("sub/deeper/b~20240102-030405").is_file());
        assert!(!d.join("sub/a.txt").exists());
        // Again in the same second: a counter keeps both.
        std::fs::write(d.join("sub/a.txt"), "a2").unwrap();
        retire(&dest, "sub", "sub", &into, "20240102-030405", &mut moved).unwrap();
        assert_eq!(
            std::fs::read_to_string(v.join("sub/a~20240102-030405-1.txt")).unwrap(),
            "a2"
        );
    }
}
