//! Extended attributes (`--xattrs`): the `user.*` namespace only, on Linux
//! and macOS; elsewhere an entry simply has none. ACLs (`system.*`),
//! `security.*`, `trusted.*` and ownership are never read or written.
//!
//! Every size is bounded before anything is allocated: the list of names a
//! file reports, each value's size, and how many attributes an entry may
//! carry ([`MAX_NAME`], [`MAX_VALUE`], [`MAX_PER_ENTRY`], [`MAX_LIST`]).
//! The same bounds are checked on what a peer sends ([`validate`]).

use serde::{Deserialize, Serialize};

/// Whether this platform has extended attributes (Linux, macOS).
pub const SUPPORTED: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple"
));

/// The only namespace replicated.
pub const NAMESPACE: &str = "user.";
/// Longest attribute name, in bytes (Linux's XATTR_NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Largest attribute value, in bytes (Linux's XATTR_SIZE_MAX).
pub const MAX_VALUE: usize = 64 * 1024;
/// Most attributes replicated per entry.
pub const MAX_PER_ENTRY: usize = 64;
/// Largest list of names read from a file, in bytes.
pub const MAX_LIST: usize = 64 * 1024;
/// Most attribute bytes (names and values) a pass may carry in all.
pub const MAX_PER_PASS: u64 = 256 * 1024 * 1024;

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// The extended attributes of manifest entry `entry`, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryXattrs {
    pub entry: u32,
    pub attrs: Vec<Xattr>,
}

impl Xattr {
    /// Bytes it counts for [`MAX_PER_PASS`].
    pub fn weight(&self) -> u64 {
        (self.name.len() + self.value.len()) as u64
    }
}

/// Why an entry's attributes could not be read, or were refused.
#[derive(Debug, thiserror::Error)]
pub enum XattrError {
    #[error("extended attribute {name:?}: value of {size} bytes, over the limit of {MAX_VALUE}")]
    ValueTooLarge { name: String, size: usize },
    #[error("extended attribute name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("{count} extended attributes, over the limit of {MAX_PER_ENTRY}")]
    TooMany { count: usize },
    #[error("extended attribute names take {size} bytes, over the limit of {MAX_LIST}")]
    ListTooLarge { size: usize },
    #[error("extended attributes not sorted by name, or a name twice")]
    Unsorted,
    #[error("extended attributes: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks a list received from a peer: names in the namespace, within the
/// bounds, sorted and unique; values within the bounds.
pub fn validate(attrs: &[Xattr]) -> Result<(), XattrError> {
    if attrs.len() > MAX_PER_ENTRY {
        return Err(XattrError::TooMany { count: attrs.len() });
    }
    for a in attrs {
        check_name(&a.name)?;
        if a.value.len() > MAX_VALUE {
            return Err(XattrError::ValueTooLarge {
                name: a.name.clone(),
                size: a.value.len(),
            });
        }
    }
    if attrs.windows(2).any(|w| w[0].name >= w[1].name) {
        return Err(XattrError::Unsorted);
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), XattrError> {
    let bad = |why| {
        Err(XattrError::BadName {
            name: name.chars().take(64).collect(),
            why,
        })
    };
    if !name.starts_with(NAMESPACE) || name.len() == NAMESPACE.len() {
        return bad("not a user.* attribute");
    }
    if name.len() > MAX_NAME {
        return bad("longer than 255 bytes");
    }
    if name.contains('\0') {
        return bad("holds a NUL byte");
    }
    Ok(())
}

/// The `user.*` names of a NUL-separated list (others skipped; a name that
/// is not UTF-8 is skipped too).
fn user_names(list: &[u8]) -> Vec<String> {
    list.split(|&b| b == 0)
        .filter_map(|n| std::str::from_utf8(n).ok())
        .filter(|n| n.starts_with(NAMESPACE) && n.len() > NAMESPACE.len())
        .map(str::to_string)
        .collect()
}

#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
mod imp {
    use super::*;
    use rustix::fs::{
        fgetxattr, fgetxattr_query, flistxattr, flistxattr_query, fremovexattr, fsetxattr,
        lgetxattr, lgetxattr_query, llistxattr, llistxattr_query, XattrFlags,
    };
    use std::path::Path;

    fn unsupported(e: &std::io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM))
            || e.kind() == std::io::ErrorKind::Unsupported
    }

    /// Reads a list of names or a value whose size `query` reports, bounded
    /// by `max` before the buffer is allocated; `fill` reads into it.
    fn bounded(
        query: impl Fn() -> rustix::io::Result<usize>,
        fill: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
        max: usize,
        too_large: impl Fn(usize) -> XattrError,
    ) -> Result<Vec<u8>, XattrError> {
        let size = query().map_err(std::io::Error::from)?;
        if size > max {
            return Err(too_large(size));
        }
        let mut buf = vec![0u8; size];
        let n = fill(&mut buf).map_err(std::io::Error::from)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Where attributes are read from: a path (not following a final
    /// symlink) or an open file.
    trait Holder {
        fn list_size(&self) -> rustix::io::Result<usize>;
        fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize>;
        fn value_size(&self, name: &str) -> rustix::io::Result<usize>;
        fn value(&self, name: &str, buf: &mut [u8]) -> rustix::io::Result<usize>;
    }

    impl Holder for &Path {
        fn list_size(&self) -> rustix::io::Result<usize> {
            llistxattr_query(*self)
        }
        fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
            llistxattr(*self, buf)
        }
        fn value_size(&self, name: &str) -> rustix::io::Result<usize> {
            lgetxattr_query(*self, name)
        }
        fn value(&self, name: &str, buf: &mut [u8]) -> rustix::io::Result<usize> {
            lgetxattr(*self, name, buf)
        }
    }

    impl Holder for &std::fs::File {
        fn list_size(&self) -> rustix::io::Result<usize> {
            flistxattr_query(*self)
        }
        fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
            flistxattr(*self, buf)
        }
        fn value_size(&self, name: &str) -> rustix::io::Result<usize> {
            fgetxattr_query(*self, name)
        }
        fn value(&self, name: &str, buf: &mut [u8]) -> rustix::io::Result<usize> {
            fgetxattr(*self, name, buf)
        }
    }

    /// The `user.*` attributes of `h`, sorted by name, each bounded before
    /// it is read. A filesystem without them reports none.
    fn read_all(h: impl Holder) -> Result<Vec<Xattr>, XattrError> {
        let list = match bounded(
            || h.list_size(),
            |b| h.list(b),
            MAX_LIST,
            |size| XattrError::ListTooLarge { size },
        ) {
            Err(XattrError::Io(e)) if unsupported(&e) => return Ok(Vec::new()),
            other => other?,
        };
        let names = user_names(&list);
        if names.len() > MAX_PER_ENTRY {
            return Err(XattrError::TooMany { count: names.len() });
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let value = bounded(
                || h.value_size(&name),
                |b| h.value(&name, b),
                MAX_VALUE,
                |size| XattrError::ValueTooLarge {
                    name: name.clone(),
                    size,
                },
            )?;
            out.push(Xattr { name, value });
        }
        out.sort();
        Ok(out)
    }

    /// The `user.*` attributes of `path` (not following a final symlink),
    /// sorted by name. A filesystem without them reports none.
    pub fn read_path(path: &Path) -> Result<Vec<Xattr>, XattrError> {
        read_all(path)
    }

    /// The `user.*` attributes of an open file or directory, sorted.
    pub fn read_fd(fd: &std::fs::File) -> Result<Vec<Xattr>, XattrError> {
        read_all(fd)
    }

    /// Makes the `user.*` attributes of an open file equal to `want`
    /// (validated): sets what differs, removes what is not wanted. Returns
    /// whether anything changed.
    pub fn apply_fd(fd: &std::fs::File, want: &[Xattr]) -> Result<bool, XattrError> {
        let have = read_fd(fd)?;
        let mut changed = false;
        for h in &have {
            if !want.iter().any(|w| w.name == h.name) {
                fremovexattr(fd, h.name.as_str()).map_err(std::io::Error::from)?;
                changed = true;
            }
        }
        for w in want {
            if !have.contains(w) {
                fsetxattr(fd, w.name.as_str(), &w.value, XattrFlags::empty())
                    .map_err(std::io::Error::from)?;
                changed = true;
            }
        }
        Ok(changed)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
mod imp {
    use super::*;
    use std::path::Path;

    /// No extended attributes on this platform.
    pub fn read_path(_path: &Path) -> Result<Vec<Xattr>, XattrError> {
        Ok(Vec::new())
    }

    /// No extended attributes on this platform.
    pub fn read_fd(_fd: &std::fs::File) -> Result<Vec<Xattr>, XattrError> {
        Ok(Vec::new())
    }

    /// Refuses any attribute: this platform has none.
    pub fn apply_fd(_fd: &std::fs::File, want: &[Xattr]) -> Result<bool, XattrError> {
        if want.is_empty() {
            Ok(false)
        } else {
            Err(XattrError::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "this platform has no extended attributes",
            )))
        }
    }
}

pub use imp::{apply_fd, read_fd, read_path};

/// The attributes of every file and directory of a manifest rooted at
/// `root`, by ascending entry (entries without any left out), and the
/// entries whose attributes could not be read (reported; the entry then
/// travels without them).
pub fn read_tree(
    root: &std::path::Path,
    m: &super::Manifest,
) -> (Vec<EntryXattrs>, Vec<crate::error::FileError>) {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for (i, e) in m.entries.iter().enumerate() {
        if matches!(e.kind, super::Kind::Symlink { .. }) {
            continue;
        }
        let key = m.key(i);
        match read_path(&root.join(&key)) {
            Ok(attrs) if attrs.is_empty() => {}
            Ok(attrs) => out.push(EntryXattrs {
                entry: i as u32,
                attrs,
            }),
            Err(err) => errors.push(crate::error::FileError::new(
                if key.is_empty() { ".".to_string() } else { key },
                err,
            )),
        }
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(name: &str, value: &[u8]) -> Xattr {
        Xattr {
            name: name.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_peer_list_is_checked() {
        assert!(validate(&[x("user.a", b"1"), x("user.b", b"")]).is_ok());
        assert!(matches!(
            validate(&[x("user.b", b""), x("user.a", b"")]),
            Err(XattrError::Unsorted)
        ));
        assert!(matches!(
            validate(&[x("user.a", b""), x("user.a", b"")]),
            Err(XattrError::Unsorted)
        ));
        for bad in [
            "security.selinux",
            "trusted.x",
            "system.posix_acl_access",
            "user.",
            "user.a\0b",
        ] {
            assert!(
                matches!(validate(&[x(bad, b"")]), Err(XattrError::BadName { .. })),
                "{bad:?}"
            );
        }
        let long = format!("user.{}", "n".repeat(MAX_NAME));
        assert!(validate(&[x(&long, b"")]).is_err());
        assert!(matches!(
            validate(&[x("user.big", &vec![0; MAX_VALUE + 1])]),
            Err(XattrError::ValueTooLarge { .. })
        ));
        let many: Vec<_> = (0..=MAX_PER_ENTRY)
            .map(|i| x(&format!("user.{i:03}"), b""))
            .collect();
        assert!(matches!(validate(&many), Err(XattrError::TooMany { .. })));
    }

    #[test]
    fn only_user_names_are_listed() {
        let list = b"user.a\0security.selinux\0user.\0trusted.t\0user.b\0";
        assert_eq!(user_names(list), vec!["user.a", "user.b"]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn attributes_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "x").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let want = vec![x("user.a", b"1"), x("user.b", b"two")];
        match apply_fd(&f, &want) {
            Ok(changed) => assert!(changed),
            // A filesystem without user attributes (tmpfs on old kernels).
            Err(XattrError::Io(e)) if e.raw_os_error() == Some(libc::ENOTSUP) => return,
            Err(e) => panic!("{e}"),
        }
        assert_eq!(read_path(&p).unwrap(), want);
        assert!(!apply_fd(&f, &want).unwrap(), "nothing to change");
        assert!(apply_fd(&f, &want[1..]).unwrap());
        assert_eq!(read_fd(&f).unwrap(), want[1..].to_vec());
    }
}
