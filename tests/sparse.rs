//! Sparse files (issue 17): a 256 MiB file holding 2 MiB of data takes a
//! few MiB on the replica's disk and on the wire, reads back identical, and
//! keeps its holes when it changes.

#![cfg(target_os = "linux")]

mod common;

use common::{assert_trees_equal, random_bytes, run_sync, Run, Server};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

const SIZE: u64 = 256 << 20;
const MIB: u64 = 1 << 20;

/// A file of `size` bytes with 1 MiB of data at its start and 1 MiB in
/// the middle; the rest are holes.
fn make_sparse(path: &Path, seed: u64, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&random_bytes(seed, MIB as usize), 0)
        .unwrap();
    f.write_all_at(&random_bytes(seed + 1, MIB as usize), size / 2)
        .unwrap();
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_sparse_file_stays_sparse_on_the_wire_and_on_disk() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let file = src.path().join("disk.img");
    make_sparse(&file, 1, SIZE);
    if allocated(&file) > 8 * MIB {
        eprintln!("skipped: this filesystem does not keep holes");
        return;
    }
    let server = Server::start_with(dst.path(), &["--min-free", "0"]);
    let args = server.client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run: Run = run_sync(src.path(), &server.target(), state.path(), &args).into();
    run.assert_ok();
    assert_trees_equal(src.path(), dst.path());
    let copy = dst.path().join("disk.img");
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), SIZE);
    let on_disk = allocated(&copy);
    let (wire, content) = (run.summary().wire_sent, run.summary().content_sent);
    eprintln!(
        "256 MiB with 2 MiB of data: {on_disk} B on the replica's disk, {wire} B on the wire, {content} B of content sent"
    );
    assert!(on_disk <= 4 * MIB, "{on_disk} B allocated");
    assert!(wire <= 4 * MIB, "{wire} B on the wire");
    // Holes are never sent: only the data's chunks (the chunks that hold
    // the four edges of the data carry some zeros, up to 64 KiB each).
    assert!(
        content <= 2 * MIB + 256 * 1024,
        "{content} B of content sent"
    );

    // A change inside a hole: the replica still holds only the data.
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&random_bytes(9, 4096), SIZE / 4).unwrap();
    drop(f);
    let run: Run = run_sync(src.path(), &server.target(), state.path(), &args).into();
    run.assert_ok();
    assert_trees_equal(src.path(), dst.path());
    assert!(
        allocated(&copy) <= 4 * MIB,
        "{} B allocated",
        allocated(&copy)
    );
}

#[test]
fn a_local_sync_keeps_holes_too() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let file = src.path().join("disk.img");
    make_sparse(&file, 3, 64 * MIB);
    if allocated(&file) > 8 * MIB {
        eprintln!("skipped: this filesystem does not keep holes");
        return;
    }
    let target = dst.path().join("replica");
    let run: Run = run_sync(src.path(), target.to_str().unwrap(), state.path(), &[]).into();
    run.assert_ok();
    assert_trees_equal(src.path(), &target);
    let on_disk = allocated(&target.join("disk.img"));
    assert!(on_disk <= 4 * MIB, "{on_disk} B allocated");
}
