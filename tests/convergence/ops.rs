//! Random operation sequences on a source tree: a seeded generator that
//! keeps a model of the tree (so every operation it emits makes sense when
//! it is emitted), and an applier that carries an operation out on disk and
//! skips it quietly when it no longer makes sense (after shrinking removed
//! the operations it depended on).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// splitmix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len() as u64) as usize])
        }
    }
}

/// Names the generator draws from: ordinary ones, and names that are odd
/// on some platform but ordinary on Linux and macOS.
const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "docs",
    "src",
    "notes.txt",
    "img.png",
    "data.bin",
    "main.rs",
    ".hidden",
    "C:",
    "colon:name",
    "star*",
    "question?",
    "pipe|",
    "angle<>",
    "back\\slash",
    "trailing.dot.",
    "CON",
    "nul",
    "new\nline",
    "sp ace",
    "naïve",
];

/// One operation on the source tree. Paths are `/`-joined, relative to the
/// source root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Everything before this is applied before replica starts.
    Start,
    /// Creates or overwrites a whole file (open, write, close).
    Write {
        path: String,
        len: usize,
        seed: u64,
    },
    /// Appends bytes.
    Append {
        path: String,
        len: usize,
        seed: u64,
    },
    /// Overwrites bytes in the middle (`at` is a per-mille of the length).
    Patch {
        path: String,
        at: u32,
        len: usize,
        seed: u64,
    },
    Truncate {
        path: String,
        permille: u32,
    },
    /// A duplicate of another file.
    Copy {
        from: String,
        to: String,
    },
    /// The first half of another file, then new bytes.
    HalfCopy {
        from: String,
        to: String,
        seed: u64,
    },
    HardLink {
        from: String,
        to: String,
    },
    /// Removes a file or symlink.
    Remove {
        path: String,
    },
    Mkdir {
        path: String,
    },
    RemoveTree {
        path: String,
    },
    /// Renames a file, symlink or directory (`to` does not exist).
    Rename {
        from: String,
        to: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// Sets an mtime (files, directories).
    Touch {
        path: String,
        secs: i64,
        nanos: u32,
    },
    /// Replaces whatever is at `path` (file, symlink, whole folder) with a
    /// symlink: a type change.
    ToSymlink {
        path: String,
        target: String,
    },
    /// Replaces whatever is at `path` with a regular file.
    ToFile {
        path: String,
        len: usize,
        seed: u64,
    },
    /// A large file, so that later operations happen during its transfer.
    Big {
        path: String,
        mib: usize,
        seed: u64,
    },
    /// A quiet moment.
    Pause {
        ms: u64,
    },
    /// SIGKILL the client, then start it again.
    KillClient,
    /// SIGKILL the server (remote modes), then start it again.
    KillServer,
}

impl Op {
    /// Whether shrinking may drop this operation.
    pub fn removable(&self) -> bool {
        !matches!(self, Op::Start)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    Dir,
    File,
    Link,
}

/// What the generator believes the tree holds.
#[derive(Debug, Default)]
struct Model {
    entries: BTreeMap<String, M>,
}

impl Model {
    fn dirs(&self) -> Vec<String> {
        let mut v = vec![String::new()];
        v.extend(
            self.entries
                .iter()
                .filter(|(_, m)| **m == M::Dir)
                .map(|(k, _)| k.clone()),
        );
        v
    }

    fn of(&self, kind: M) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, m)| **m == kind)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn all(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn depth(key: &str) -> usize {
        key.split('/').count()
    }

    /// A path that does not exist yet, in an existing directory.
    fn fresh(&self, rng: &mut Rng) -> Option<String> {
        let dirs: Vec<String> = self
            .dirs()
            .into_iter()
            .filter(|d| d.is_empty() || Self::depth(d) < 4)
            .collect();
        for _ in 0..8 {
            let dir = rng.pick(&dirs)?.clone();
            let name = rng.pick(NAMES)?;
            let key = join(&dir, name);
            if !self.entries.contains_key(&key) {
                return Some(key);
            }
        }
        None
    }

    fn remove_tree(&mut self, key: &str) {
        let prefix = format!("{key}/");
        self.entries
            .retain(|k, _| k != key && !k.starts_with(&prefix));
    }

    fn rename(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moved: Vec<(String, M)> = self
            .entries
            .iter()
            .filter(|(k, _)| *k == from || k.starts_with(&prefix))
            .map(|(k, m)| (format!("{to}{}", &k[from.len()..]), *m))
            .collect();
        self.remove_tree(from);
        self.entries.extend(moved);
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// What a generated sequence may contain.
#[derive(Debug, Clone, Copy)]
pub struct GenOptions {
    /// Operations after `Start`.
    pub ops: usize,
    /// Whether kills may happen, and of which side.
    pub kill_client: bool,
    pub kill_server: bool,
}

/// A reproducible random sequence: an initial tree, `Start`, then
/// `opts.ops` operations in bursts with short pauses.
pub fn generate(seed: u64, opts: GenOptions) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let mut out = Vec::new();
    // The root never empties: an empty source is refused on purpose (see
    // the safety tests), not a divergence.
    out.push(Op::Write {
        path: "keep".into(),
        len: 100,
        seed,
    });
    model.entries.insert("keep".into(), M::File);
    let initial = 10 + rng.below(30) as usize;
    while out.len() < initial {
        if let Some(op) = one_op(&mut rng, &model, false) {
            apply_to_model(&op, &mut model);
            out.push(op);
        }
    }
    out.push(Op::Start);
    let mut n = 0;
    let mut burst = 0;
    while n < opts.ops {
        if burst == 0 {
            burst = 1 + rng.below(40);
            out.push(Op::Pause { ms: rng.below(120) });
        }
        burst -= 1;
        if opts.kill_client && rng.chance(1) && rng.chance(50) {
            out.push(Op::KillClient);
        }
        if opts.kill_server && rng.chance(1) && rng.chance(50) {
            out.push(Op::KillServer);
        }
        if let Some(op) = one_op(&mut rng, &model, true) {
            apply_to_model(&op, &mut model);
            out.push(op);
            n += 1;
        }
    }
    out
}

fn one_op(rng: &mut Rng, model: &Model, live: bool) -> Option<Op> {
    let files: Vec<String> = model
        .of(M::File)
        .into_iter()
        .filter(|f| f != "keep")
        .collect();
    let seed = rng.next_u64();
    let size = |rng: &mut Rng| match rng.below(10) {
        0 => 0,
        1..=6 => rng.below(4096) as usize,
        7 | 8 => rng.below(200_000) as usize,
        _ => rng.below(1_500_000) as usize,
    };
    Some(match rng.below(100) {
        0..=17 => Op::Write {
            path: model.fresh(rng)?,
            len: size(rng),
            seed,
        },
        18..=25 => Op::Write {
            path: rng.pick(&files)?.clone(),
            len: size(rng),
            seed,
        },
        26..=31 => Op::Append {
            path: rng.pick(&files)?.clone(),
            len: 1 + rng.below(5000) as usize,
            seed,
        },
        32..=37 => Op::Patch {
            path: rng.pick(&files)?.clone(),
            at: rng.below(1000) as u32,
            len: 1 + rng.below(300) as usize,
            seed,
        },
        38..=40 => Op::Truncate {
            path: rng.pick(&files)?.clone(),
            permille: rng.below(1000) as u32,
        },
        41..=44 => Op::Copy {
            from: rng.pick(&files)?.clone(),
            to: model.fresh(rng)?,
        },
        45..=47 => Op::HalfCopy {
            from: rng.pick(&files)?.clone(),
            to: model.fresh(rng)?,
            seed,
        },
        48..=49 => Op::HardLink {
            from: rng.pick(&files)?.clone(),
            to: model.fresh(rng)?,
        },
        50..=55 => Op::Remove {
            path: rng
                .pick(&[files.clone(), model.of(M::Link)].concat())?
                .clone(),
        },
        56..=63 => Op::Mkdir {
            path: model.fresh(rng)?,
        },
        64..=66 => Op::RemoveTree {
            path: rng.pick(&model.of(M::Dir))?.clone(),
        },
        67..=76 => {
            let from = rng.pick(&model.all())?.clone();
            if from == "keep" {
                return None;
            }
            let to = model.fresh(rng)?;
            if to.starts_with(&format!("{from}/")) {
                return None;
            }
            Op::Rename { from, to }
        }
        77..=81 => Op::Chmod {
            path: rng
                .pick(&[files.clone(), model.of(M::Dir)].concat())?
                .clone(),
            mode: *rng.pick(&[0o644, 0o600, 0o755, 0o444, 0o700, 0o640])?,
        },
        82..=86 => {
            let targets = ["a", "../b", "docs/notes.txt", "/etc/hostname", "missing/x"];
            Op::Symlink {
                path: model.fresh(rng)?,
                target: rng.pick(&targets)?.to_string(),
            }
        }
        87..=92 => Op::Touch {
            path: rng
                .pick(&[files.clone(), model.of(M::Dir)].concat())?
                .clone(),
            secs: 1_500_000_000 + rng.below(200_000_000) as i64,
            nanos: rng.below(1_000_000_000) as u32,
        },
        93..=94 if live => Op::Big {
            path: model.fresh(rng)?,
            mib: 2 + rng.below(6) as usize,
            seed,
        },
        // Type changes: file, folder and symlink become one another.
        _ => {
            let path = rng.pick(&model.all())?.clone();
            if path == "keep" {
                return None;
            }
            let current = *model.entries.get(&path)?;
            return Some(match (current, rng.below(2)) {
                (M::Dir, 0) => Op::ToFile {
                    path,
                    len: size(rng),
                    seed,
                },
                (M::Dir, _) | (M::File, 0) => Op::ToSymlink {
                    path,
                    target: "a".into(),
                },
                (M::Link, 0) => Op::ToFile {
                    path,
                    len: size(rng),
                    seed,
                },
                _ => Op::Mkdir { path },
            });
        }
    })
}

fn apply_to_model(op: &Op, model: &mut Model) {
    match op {
        Op::Write { path, .. }
        | Op::Copy { to: path, .. }
        | Op::HalfCopy { to: path, .. }
        | Op::HardLink { to: path, .. }
        | Op::Big { path, .. } => {
            model.entries.insert(path.clone(), M::File);
        }
        Op::Remove { path } | Op::RemoveTree { path } => model.remove_tree(path),
        Op::Mkdir { path } => {
            // A type change replaces what was there.
            model.remove_tree(path);
            model.entries.insert(path.clone(), M::Dir);
        }
        Op::Rename { from, to } => model.rename(from, to),
        Op::Symlink { path, .. } => {
            model.entries.insert(path.clone(), M::Link);
        }
        Op::ToSymlink { path, .. } => {
            model.remove_tree(path);
            model.entries.insert(path.clone(), M::Link);
        }
        Op::ToFile { path, .. } => {
            model.remove_tree(path);
            model.entries.insert(path.clone(), M::File);
        }
        _ => {}
    }
}

/// `len` bytes from `seed`, text-like or binary.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let text = rng.chance(50);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        let v = rng.next_u64();
        if text {
            for b in v.to_le_bytes() {
                out.push(b"abcdefgh ijklmnop\nqrstuvwxyz"[(b % 28) as usize]);
            }
        } else {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn path_of(root: &Path, key: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in key.split('/') {
        p.push(c);
    }
    p
}

/// Carries `op` out below `root`. Operations that no longer make sense
/// (their path vanished) are skipped: the result is whatever the disk says.
pub fn apply(root: &Path, op: &Op) {
    let p = |k: &str| path_of(root, k);
    let _ = match op {
        Op::Start | Op::Pause { .. } | Op::KillClient | Op::KillServer => Ok(()),
        Op::Write { path, len, seed } => write_whole(&p(path), &bytes(*seed, *len)),
        Op::Big { path, mib, seed } => write_whole(&p(path), &bytes(*seed, mib << 20)),
        Op::Append { path, len, seed } => only_file(&p(path)).and_then(|f| {
            let mut fh = fs::OpenOptions::new().append(true).open(f)?;
            fh.write_all(&bytes(*seed, *len))
        }),
        Op::Patch {
            path,
            at,
            len,
            seed,
        } => only_file(&p(path)).and_then(|f| {
            use std::io::{Seek, SeekFrom};
            let size = fs::metadata(&f)?.len();
            let mut fh = fs::OpenOptions::new().write(true).open(&f)?;
            fh.seek(SeekFrom::Start(size * u64::from(*at) / 1000))?;
            fh.write_all(&bytes(*seed, *len))
        }),
        Op::Truncate { path, permille } => only_file(&p(path)).and_then(|f| {
            let size = fs::metadata(&f)?.len();
            let fh = fs::OpenOptions::new().write(true).open(&f)?;
            fh.set_len(size * u64::from(*permille) / 1000)
        }),
        Op::Copy { from, to } => {
            only_file(&p(from)).and_then(|f| fs::read(f).and_then(|d| write_new(&p(to), &d)))
        }
        Op::HalfCopy { from, to, seed } => only_file(&p(from)).and_then(|f| {
            let mut d = fs::read(f)?;
            d.truncate(d.len() / 2);
            d.extend(bytes(*seed, 1000 + d.len() / 4));
            write_new(&p(to), &d)
        }),
        Op::HardLink { from, to } => only_file(&p(from)).and_then(|f| fs::hard_link(f, p(to))),
        Op::Remove { path } => match fs::symlink_metadata(p(path)) {
            Ok(m) if !m.is_dir() => fs::remove_file(p(path)),
            _ => Ok(()),
        },
        Op::Mkdir { path } => {
            let target = p(path);
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => fs::remove_file(&target).and_then(|_| fs::create_dir(&target)),
                Err(_) => fs::create_dir(&target),
            }
        }
        Op::RemoveTree { path } => match fs::symlink_metadata(p(path)) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p(path)),
            _ => Ok(()),
        },
        Op::Rename { from, to } => {
            if fs::symlink_metadata(p(to)).is_ok() {
                Ok(())
            } else {
                fs::rename(p(from), p(to))
            }
        }
        Op::Chmod { path, mode } => set_mode(&p(path), *mode),
        Op::Symlink { path, target } => make_symlink(target, &p(path)),
        Op::ToSymlink { path, target } => {
            remove_any(&p(path)).and_then(|_| make_symlink(target, &p(path)))
        }
        Op::ToFile { path, len, seed } => {
            remove_any(&p(path)).and_then(|_| write_whole(&p(path), &bytes(*seed, *len)))
        }
        Op::Touch { path, secs, nanos } => match fs::symlink_metadata(p(path)) {
            Ok(m) if !m.file_type().is_symlink() => {
                let t = crate::common::system_time(*secs, *nanos);
                filetime_set(&p(path), t)
            }
            _ => Ok(()),
        },
    };
}

/// Removes a file, symlink or whole folder; fine if nothing is there.
fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(_) => Ok(()),
    }
}

fn only_file(p: &Path) -> std::io::Result<PathBuf> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_file() => Ok(p.to_path_buf()),
        _ => Err(std::io::ErrorKind::NotFound.into()),
    }
}

/// Writes a whole file in place (a directory or symlink in the way is left
/// alone).
fn write_whole(p: &Path, data: &[u8]) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if !m.is_file() => return Ok(()),
        _ => {}
    }
    let mut f = fs::File::create(p)?;
    f.write_all(data)
}

fn write_new(p: &Path, data: &[u8]) -> std::io::Result<()> {
    if fs::symlink_metadata(p).is_ok() {
        return Ok(());
    }
    write_whole(p, data)
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match fs::symlink_metadata(p) {
        // Directories keep owner rwx so the harness can still walk them.
        Ok(m) if m.is_dir() => fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o700)),
        Ok(m) if m.is_file() => fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o400)),
        _ => Ok(()),
    }
}

#[cfg(not(unix))]
fn set_mode(_p: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn make_symlink(target: &str, link: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(link).is_ok() {
        return Ok(());
    }
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn make_symlink(_target: &str, _link: &Path) -> std::io::Result<()> {
    Ok(())
}

fn filetime_set(p: &Path, t: std::time::SystemTime) -> std::io::Result<()> {
    let f = if fs::symlink_metadata(p)?.is_dir() {
        fs::File::open(p)?
    } else {
        fs::OpenOptions::new().write(true).open(p)?
    };
    f.set_modified(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_reproducible() {
        let o = GenOptions {
            ops: 200,
            kill_client: true,
            kill_server: true,
        };
        assert_eq!(generate(7, o), generate(7, o));
        assert_ne!(generate(7, o), generate(8, o));
    }
}
