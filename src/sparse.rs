//! Sparse files: a run of zeros written where a file already reads as a
//! hole is not written at all, so a replica file keeps the holes of its
//! source. Holes are found with `SEEK_DATA` where the platform has it
//! (Linux, macOS, the BSDs); elsewhere every byte is written.
//!
//! [`write_at`] is the one way the server writes file content: a new file
//! is one hole until written, so every all-zero chunk of a sparse source
//! file stays a hole, and a zero run at the end only sets the length.

use std::io;

/// The block size assumed: zero runs are judged in pieces cut at its
/// multiples (a filesystem keeps holes in whole blocks of at least this).
pub const MIN_HOLE: usize = 4096;

/// Writes all of `buf` at `offset`, except its all-zero runs (cut at
/// multiples of [`MIN_HOLE`] in the file) that fall on a hole already:
/// those stay a hole, and the file is made long enough to cover `buf`.
pub fn write_at(file: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut pending = 0; // start of what is still to be written
    let mut skipped_end = false;
    for (start, end) in zero_runs(buf, offset) {
        if !is_hole(file, offset + start as u64, (end - start) as u64) {
            continue;
        }
        write_all_at(file, &buf[pending..start], offset + pending as u64)?;
        pending = end;
        skipped_end = end == buf.len();
    }
    write_all_at(file, &buf[pending..], offset + pending as u64)?;
    let end = offset + buf.len() as u64;
    if skipped_end && file.metadata()?.len() < end {
        file.set_len(end)?;
    }
    Ok(())
}

/// The maximal all-zero runs of `buf` made of whole pieces, where the
/// pieces are cut at multiples of [`MIN_HOLE`] in the file (`buf` starts at
/// `offset`), so the first and last may be shorter; as ranges of `buf`.
fn zero_runs(buf: &[u8], offset: u64) -> Vec<(usize, usize)> {
    let block = MIN_HOLE as u64;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        let to_boundary = (block - (offset + at as u64) % block) as usize;
        let end = (at + to_boundary).min(buf.len());
        if is_zero(&buf[at..end]) {
            match runs.last_mut() {
                Some(r) if r.1 == at => r.1 = end,
                _ => runs.push((at, end)),
            }
        }
        at = end;
    }
    runs
}

/// Whether every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(8);
    words.all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// Whether `len` bytes at `offset` read as zeros because they are a hole
/// (or lie past the end). False where the platform cannot tell.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple",
    target_os = "freebsd"
))]
pub fn is_hole(file: &std::fs::File, offset: u64, len: u64) -> bool {
    use rustix::fs::{seek, SeekFrom};
    match seek(file, SeekFrom::Data(offset)) {
        Ok(data) => data >= offset + len,
        // No data at or after `offset`.
        Err(rustix::io::Errno::NXIO) => true,
        Err(_) => false,
    }
}

/// Whether `len` bytes at `offset` read as zeros because they are a hole.
/// This platform cannot tell: never.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple",
    target_os = "freebsd"
)))]
pub fn is_hole(_file: &std::fs::File, _offset: u64, _len: u64) -> bool {
    false
}

/// Writes all of `buf` at `offset` (positional: the file's cursor is not used).
pub(crate) fn write_all_at(file: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            done += file.seek_write(&buf[done..], offset + done as u64)?;
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    fn allocated(f: &std::fs::File) -> u64 {
        f.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn zeros_over_a_hole_stay_a_hole_and_data_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let zeros = vec![0u8; 64 * 1024];
        for i in 0..64 {
            write_at(&f, &zeros, i * 64 * 1024).unwrap();
        }
        write_at(&f, &[7u8; 8192], 1 << 20).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4 << 20);
        assert!(
            allocated(&f) <= 64 * 1024,
            "{} bytes allocated",
            allocated(&f)
        );
        let mut back = vec![1u8; 8192];
        f.read_exact_at(&mut back, 1 << 20).unwrap();
        assert_eq!(back, vec![7u8; 8192]);
        // Zeros over data are written: the data is gone.
        write_at(&f, &[0u8; 8192], 1 << 20).unwrap();
        f.read_exact_at(&mut back, 1 << 20).unwrap();
        assert!(is_zero(&back));
        // Short zero runs over a hole stay a hole too.
        write_at(&f, &[0u8; 10], 5 << 20).unwrap();
        assert_eq!(f.metadata().unwrap().len(), (5 << 20) + 10);
        assert!(
            allocated(&f) <= 64 * 1024,
            "{} bytes allocated",
            allocated(&f)
        );
        // Data and zeros in one buffer: only the data is allocated.
        let mut mixed = vec![0u8; 1 << 20];
        mixed[100] = 1;
        mixed[(1 << 20) - 1] = 2;
        let before = allocated(&f);
        write_at(&f, &mixed, 8 << 20).unwrap();
        assert!(
            allocated(&f) - before <= 16 * 1024,
            "{}",
            allocated(&f) - before
        );
        let mut back = vec![9u8; 1 << 20];
        f.read_exact_at(&mut back, 8 << 20).unwrap();
        assert_eq!(back, mixed);
    }

    #[test]
    fn zero_runs_are_cut_at_block_boundaries() {
        let mut b = vec![0u8; 3 * MIN_HOLE + 10];
        assert_eq!(zero_runs(&b, 0), vec![(0, b.len())]);
        assert_eq!(zero_runs(&b, 10), vec![(0, b.len())]);
        b[MIN_HOLE + 5] = 1;
        assert_eq!(
            zero_runs(&b, 0),
            vec![(0, MIN_HOLE), (2 * MIN_HOLE, b.len())]
        );
        // Offset 10: pieces are [0, 4086), [4086, 8182), ...; byte 4101 is in the second.
        assert_eq!(
            zero_runs(&b, 10),
            vec![(0, MIN_HOLE - 10), (2 * MIN_HOLE - 10, b.len())]
        );
        b[3 * MIN_HOLE + 1] = 1;
        assert_eq!(
            zero_runs(&b, 0),
            vec![(0, MIN_HOLE), (2 * MIN_HOLE, 3 * MIN_HOLE)]
        );
        assert_eq!(zero_runs(&[0u8; 100], 0), vec![(0, 100)]);
        assert!(zero_runs(&[1u8; 100], 0).is_empty());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 13]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
