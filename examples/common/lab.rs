//! What the delta labs (`delta_lab`, `gap_lab`, `round_lab`) share: the
//! command line `OLD NEW [SKIP] [LIMIT]`, the files of NEW also in OLD with
//! both versions between 1 KiB and 4 MiB, and zstd's size of a stream.

use std::path::{Path, PathBuf};

/// `OLD NEW [SKIP] [LIMIT]` from the command line.
pub struct Args {
    pub old: PathBuf,
    pub new: PathBuf,
    pub skip: usize,
    pub limit: usize,
}

impl Args {
    pub fn parse() -> Args {
        let a: Vec<String> = std::env::args().collect();
        Args {
            old: PathBuf::from(&a[1]),
            new: PathBuf::from(&a[2]),
            skip: a.get(3).map_or(0, |s| s.parse().unwrap()),
            limit: a.get(4).map_or(usize::MAX, |s| s.parse().unwrap()),
        }
    }

    /// Files of NEW (relative, sorted, in pre-order) that OLD holds too,
    /// both between 1 KiB and 4 MiB; with `changed`, only those whose bytes
    /// differ. Then SKIP and LIMIT.
    pub fn pairs(&self, changed: bool) -> Vec<PathBuf> {
        let mut files = Vec::new();
        walk(&self.new, Path::new(""), &mut files);
        let sized = |p: &Path| std::fs::metadata(p).ok().map(|m| m.len());
        let fits = |n: u64| (1024..=4 << 20).contains(&n);
        files
            .into_iter()
            .filter(|p| {
                let (Some(o), Some(n)) = (sized(&self.old.join(p)), sized(&self.new.join(p)))
                else {
                    return false;
                };
                fits(o)
                    && fits(n)
                    && (!changed
                        || std::fs::read(self.old.join(p)).unwrap()
                            != std::fs::read(self.new.join(p)).unwrap())
            })
            .skip(self.skip)
            .take(self.limit)
            .collect()
    }

    /// The old and new bytes of each changed pair.
    #[allow(dead_code)]
    pub fn changed(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.pairs(true)
            .into_iter()
            .map(|p| {
                let o = std::fs::read(self.old.join(&p)).unwrap();
                (o, std::fs::read(self.new.join(&p)).unwrap())
            })
            .collect()
    }
}

/// Regular files below `root/rel`, sorted by name, directories entered in
/// place; symlinks are neither followed nor listed.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for n in names {
        let p = rel.join(&n);
        let md = std::fs::symlink_metadata(root.join(&p)).unwrap();
        if md.is_dir() {
            walk(root, &p, out);
        } else if md.is_file() {
            out.push(p);
        }
    }
}

/// Bytes of `data` compressed as one zstd stream at `level` (window 2^24,
/// as the connection compresses).
#[allow(dead_code)]
pub fn stream(level: i32, data: &[u8]) -> usize {
    let mut c = zstd::zstd_safe::CCtx::create();
    c.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
        .unwrap();
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(24))
        .unwrap();
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    c.compress2(&mut out, data).unwrap();
    out.len()
}
