//! Test data: deterministic bytes, trees built from a compact spec, and
//! setting mtimes and modes exactly (before 1970 included).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `len` pseudo-random bytes from `seed` (splitmix64; incompressible enough
/// for zstd and for content-defined chunking).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What one spec entry creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One entry of a tree spec: a `/`-separated path relative to the root
/// (`""` is the root itself, which may only carry a mode and an mtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub path: String,
    pub kind: SpecKind,
    pub mode: Option<u32>,
    /// `None`: a deterministic mtime with non-zero nanoseconds is chosen.
    pub mtime: Option<(i64, u32)>,
}

impl Spec {
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }
    pub fn mtime(mut self, secs: i64, nanos: u32) -> Self {
        self.mtime = Some((secs, nanos));
        self
    }
}

/// A regular file with these bytes.
pub fn f(path: &str, data: impl AsRef<[u8]>) -> Spec {
    Spec {
        path: path.into(),
        kind: SpecKind::File(data.as_ref().to_vec()),
        mode: None,
        mtime: None,
    }
}

/// A directory (parents are created as needed; they get default metadata
/// unless listed themselves).
pub fn d(path: &str) -> Spec {
    Spec {
        path: path.into(),
        kind: SpecKind::Dir,
        mode: None,
        mtime: None,
    }
}

/// A symbolic link with this exact target text (never followed).
pub fn l(path: &str, target: &str) -> Spec {
    Spec {
        path: path.into(),
        kind: SpecKind::Symlink(target.into()),
        mode: None,
        mtime: None,
    }
}

/// The root directory's own metadata.
pub fn root() -> Spec {
    d("")
}

fn depth(p: &str) -> usize {
    if p.is_empty() {
        0
    } else {
        p.split('/').count()
    }
}

fn default_mtime(i: usize) -> (i64, u32) {
    // Deliberately odd nanoseconds so that any truncation shows.
    (
        1_500_000_000 + 86_400 * i as i64,
        (123_456_789u64 + 7_919 * i as u64) as u32 % 1_000_000_000,
    )
}

/// Creates the entries of `spec` under `root` (created if missing), then
/// gives every listed entry and the root their mode and mtime (directories
/// deepest first, after everything inside them exists).
pub fn build_tree(root: &Path, spec: &[Spec]) {
    fs::create_dir_all(root).unwrap();
    for s in spec {
        let p = root.join(&s.path);
        match &s.kind {
            SpecKind::Dir => {
                fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()))
            }
            SpecKind::File(data) => {
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).unwrap();
                }
                fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            }
            SpecKind::Symlink(target) => {
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).unwrap();
                }
                make_symlink(target, &p);
            }
        }
    }
    // Files and symlinks first, then directories deepest first; the root
    // last of all unless it is listed (it is always given an mtime).
    let mut order: Vec<(usize, &Spec)> = spec.iter().enumerate().collect();
    order.sort_by_key(|(_, s)| match s.kind {
        SpecKind::Dir => (1, usize::MAX - depth(&s.path)),
        _ => (0, 0),
    });
    let root_listed = spec.iter().any(|s| s.path.is_empty());
    for (i, s) in order {
        let p = root.join(&s.path);
        let (secs, nanos) = s.mtime.unwrap_or_else(|| default_mtime(i + 1));
        match s.kind {
            SpecKind::Symlink(_) => set_symlink_mtime(&p, secs, nanos),
            _ => {
                if let Some(m) = s.mode {
                    set_mode(&p, m);
                }
                set_mtime(&p, secs, nanos);
            }
        }
    }
    if !root_listed {
        let (secs, nanos) = default_mtime(0);
        set_mtime(root, secs, nanos);
    }
}

pub fn system_time(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

/// Sets the mtime of a file or directory (following nothing: never call it
/// on a symlink) with std's `File::set_times`.
pub fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    let md = fs::symlink_metadata(p).unwrap();
    assert!(
        !md.file_type().is_symlink(),
        "set_mtime on a symlink: {}",
        p.display()
    );
    let file = if md.is_dir() {
        fs::File::open(p)
    } else {
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .or_else(|_| fs::File::open(p))
    }
    .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    file.set_times(fs::FileTimes::new().set_modified(system_time(secs, nanos)))
        .unwrap_or_else(|e| panic!("set_times {}: {e}", p.display()));
}

#[cfg(unix)]
pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
pub fn set_mode(_p: &Path, _mode: u32) {}

#[cfg(unix)]
pub fn make_symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

#[cfg(windows)]
pub fn make_symlink(target: &str, link: &Path) {
    std::os::windows::fs::symlink_file(target, link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

/// Sets a symlink's own mtime (std cannot: `utimensat` with
/// `AT_SYMLINK_NOFOLLOW`).
#[cfg(unix)]
pub fn set_symlink_mtime(p: &Path, secs: i64, nanos: u32) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nanos as _,
        },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `times` has two entries.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

#[cfg(not(unix))]
pub fn set_symlink_mtime(_p: &Path, _secs: i64, _nanos: u32) {}

/// Writes `data` to `root/rel`, creating parents.
pub fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// A scratch area: `src/`, `dest/` and `state/` under one temp dir.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub dest: PathBuf,
    pub state: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dest = dir.path().join("dest");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        Scratch {
            dir,
            src,
            dest,
            state,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn dest_str(&self) -> String {
        self.dest.to_str().unwrap().to_string()
    }
}
