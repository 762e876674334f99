//! How a replica is laid out in a bucket, following rclone's conventions so
//! that any S3 tool can browse it and `rclone copy --links --metadata`
//! restores it (pure: names and metadata text, no I/O).
//!
//! - A regular file is one object at `PREFIX/relative/path`.
//! - A symlink is an object `NAME.rclonelink` whose body is the target text.
//! - A directory is a zero-length marker object `PREFIX/relative/dir/`
//!   carrying the directory's metadata (the root's is `PREFIX/`).
//! - Metadata is user metadata under rclone's keys: `mtime` as decimal
//!   seconds with nine fractional digits (`1700000000.123456789`), `mode`
//!   in octal with the file type bits (`100644`, `40755`, `120777`).
//!
//! **Escaping.** A file whose name ends in `.rclonelink` would read back
//! as a symlink; such a name, and any file or symlink name ending in the
//! escape character `⁓` (U+2053 SWUNG DASH: rare, and passed through
//! unchanged by rclone, whose own quoting character `‛` it would rewrite),
//! is stored with one `⁓` appended (before `.rclonelink` for a symlink).
//! Reading strips one trailing `⁓`. So every name has exactly one stored
//! form and every stored form one name. Directory names are never escaped:
//! the `/` after them already says what they are.

use crate::tree::Timestamp;

/// Suffix of symlink objects (rclone's `--links`).
pub const LINK_SUFFIX: &str = ".rclonelink";
/// Appended to names that would otherwise be misread.
pub const ESCAPE: char = '\u{2053}';
/// rclone's metadata key for the modification time.
pub const META_MTIME: &str = "mtime";
/// rclone's metadata key for the mode.
pub const META_MODE: &str = "mode";

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// What an object of the listing stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A regular file at this store key.
    File(String),
    /// A symlink at this store key.
    Link(String),
    /// A directory marker for this store key (`""`: the root).
    Dir(String),
}

/// One name as stored (escaped, `.rclonelink` added for a symlink).
pub fn encode_name(name: &str, link: bool) -> String {
    let mut s = name.to_string();
    if name.ends_with(LINK_SUFFIX) || name.ends_with(ESCAPE) {
        s.push(ESCAPE);
    }
    if link {
        s.push_str(LINK_SUFFIX);
    }
    s
}

/// A stored name back: the name and whether it is a symlink.
pub fn decode_name(stored: &str) -> (String, bool) {
    let (base, link) = match stored.strip_suffix(LINK_SUFFIX) {
        Some(b) => (b, true),
        None => (stored, false),
    };
    let name = base.strip_suffix(ESCAPE).unwrap_or(base);
    (name.to_string(), link)
}

/// The object key of a store key, relative to the prefix.
pub fn object_of(key: &str, link: bool) -> String {
    let (dir, name) = super::super::split_key(key);
    if dir.is_empty() {
        encode_name(name, link)
    } else {
        format!("{dir}/{}", encode_name(name, link))
    }
}

/// The marker object of directory `key`, relative to the prefix (`""`
/// for the root: the marker is the prefix itself plus `/`).
pub fn marker_of(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}/")
    }
}

/// What a relative object key stands for (None: not one of ours, e.g. an
/// empty component).
pub fn parse_object(rel: &str) -> Option<Stored> {
    if rel.is_empty() {
        return Some(Stored::Dir(String::new()));
    }
    let (body, dir) = match rel.strip_suffix('/') {
        Some(b) => (b, true),
        None => (rel, false),
    };
    let mut names = Vec::new();
    let comps: Vec<&str> = body.split('/').collect();
    let last = comps.len() - 1;
    let mut link = false;
    for (i, c) in comps.iter().enumerate() {
        if c.is_empty() || *c == "." || *c == ".." {
            return None;
        }
        let (name, is_link) = if i == last && !dir {
            decode_name(c)
        } else {
            (c.to_string(), false)
        };
        if name.is_empty() {
            return None;
        }
        link = is_link;
        names.push(name);
    }
    let key = names.join("/");
    Some(if dir {
        Stored::Dir(key)
    } else if link {
        Stored::Link(key)
    } else {
        Stored::File(key)
    })
}

/// rclone's `mtime` text: decimal seconds, nine fractional digits.
pub fn format_mtime(t: Timestamp) -> String {
    if t.secs >= 0 || t.nanos == 0 {
        format!("{}.{:09}", t.secs, t.nanos)
    } else {
        // secs + nanos/1e9 is negative with a fraction: -(|secs| - 1).(1e9 - nanos)
        format!("-{}.{:09}", -(t.secs + 1), 1_000_000_000 - t.nanos)
    }
}

/// Parses rclone's `mtime` text exactly (no floating point on the way).
pub fn parse_mtime(s: &str) -> Option<Timestamp> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || frac.len() > 9 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(if !neg {
        Timestamp { secs, nanos }
    } else if nanos == 0 {
        Timestamp { secs: -secs, nanos }
    } else {
        Timestamp {
            secs: -secs - 1,
            nanos: 1_000_000_000 - nanos,
        }
    })
}

/// rclone's `mode` text for a permission set of a kind of entry.
pub fn format_mode(mode: u32, kind: &crate::tree::Kind) -> String {
    let t = match kind {
        crate::tree::Kind::File { .. } => S_IFREG,
        crate::tree::Kind::Dir => S_IFDIR,
        crate::tree::Kind::Symlink { .. } => S_IFLNK,
    };
    format!("{:o}", t | (mode & 0o7777))
}

/// The permission bits of rclone's `mode` text.
pub fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().map(|m| m & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Kind;

    #[test]
    fn names_that_would_be_misread_are_escaped_and_come_back() {
        for (name, link) in [
            ("a", false),
            ("a", true),
            ("x.rclonelink", false),
            ("x.rclonelink", true),
            ("x\u{2053}", false),
            ("x\u{2053}", true),
            ("x.rclonelink\u{2053}", false),
            ("\u{2053}", false),
        ] {
            let stored = encode_name(name, link);
            assert_eq!(decode_name(&stored), (name.to_string(), link), "{name}");
        }
        assert_eq!(encode_name("x.rclonelink", false), "x.rclonelink\u{2053}");
        // A file and a symlink of related names never share an object.
        assert_ne!(encode_name("x.rclonelink", false), encode_name("x", true));
    }

    #[test]
    fn object_keys_round_trip() {
        for (key, link) in [
            ("a/b/c", false),
            ("a.rclonelink/b", false),
            ("a\u{2053}/b\u{2053}", false),
            ("d/l", true),
            ("d/l.rclonelink", true),
        ] {
            let obj = object_of(key, link);
            let back = parse_object(&obj).unwrap();
            let want = if link {
                Stored::Link(key.into())
            } else {
                Stored::File(key.into())
            };
            assert_eq!(back, want, "{obj}");
        }
        assert_eq!(
            parse_object(&marker_of("a/x.rclonelink")),
            Some(Stored::Dir("a/x.rclonelink".into()))
        );
        assert_eq!(parse_object("a//b"), None);
        assert_eq!(parse_object("a/../b"), None);
    }

    #[test]
    fn mtimes_are_exact_to_the_nanosecond_both_sides_of_1970() {
        for (secs, nanos) in [
            (0, 0),
            (1_700_000_000, 123_456_789),
            (-1, 500_000_000),
            (-5, 0),
            (1, 1),
        ] {
            let t = Timestamp { secs, nanos };
            assert_eq!(
                parse_mtime(&format_mtime(t)),
                Some(t),
                "{}",
                format_mtime(t)
            );
        }
        assert_eq!(
            format_mtime(Timestamp { secs: 12, nanos: 5 }),
            "12.000000005"
        );
        assert_eq!(
            parse_mtime("12.5"),
            Some(Timestamp {
                secs: 12,
                nanos: 500_000_000
            })
        );
        assert_eq!(parse_mtime("12"), Some(Timestamp { secs: 12, nanos: 0 }));
        assert_eq!(parse_mtime("x"), None);
        assert_eq!(parse_mtime("1.1234567891"), None);
    }

    #[test]
    fn modes_carry_the_type_bits_like_rclone() {
        assert_eq!(format_mode(0o644, &Kind::File { size: 0 }), "100644");
        assert_eq!(format_mode(0o755, &Kind::Dir), "40755");
        assert_eq!(parse_mode("100644"), Some(0o644));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("9"), None);
    }
}
