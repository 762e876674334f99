//! The floor for one big file (issue 13): what reading, chunking and
//! hashing cost on this machine, beside which replica's big-file rows are
//! judged. Each pass reads FILE once from the page cache (warm it first):
//!
//! - `read`: a raw read loop (8 MiB blocks), nothing else;
//! - `blake3`: read + BLAKE3 of each block (one thread);
//! - `cdc`: read + FastCDC cuts (one thread);
//! - `digest`: `replica::chunk::digest_reader` (read, cuts and chunk hashes
//!   on all cores: what the client does);
//! - `ahead`: `replica::chunk::digest_ahead` (the same, the next block
//!   read on a thread of its own while the current one is cut and hashed);
//! - `check`: `replica::chunk::check_chunks` against that digest (what a
//!   server's verification costs);
//! - `copy`: read + write to OUT (a user-space copy, no hashing).
//!
//! `cargo run --release --example floor_lab -- FILE [OUT]`; prints one
//! line per pass: seconds of wall time and GiB/s.

use std::io::{Read, Write};
use std::time::Instant;

const BLOCK: usize = 8 << 20;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: floor_lab FILE [OUT]");
        std::process::exit(2);
    };
    let size = std::fs::metadata(path)?.len();
    let open = || std::fs::File::open(path);
    report("read", size, || each_block(open()?, |_| {}))?;
    report("blake3", size, || {
        each_block(open()?, |b| {
            blake3::hash(b);
        })
    })?;
    report("cdc", size, || {
        each_block(open()?, |b| {
            let cuts = fastcdc::v2020::FastCDC::new(
                b,
                replica::chunk::MIN_CHUNK,
                replica::chunk::AVG_CHUNK,
                replica::chunk::MAX_CHUNK,
            );
            std::hint::black_box(cuts.count());
        })
    })?;
    let mut digest = None;
    report("digest", size, || {
        digest = Some(replica::chunk::digest_reader(open()?)?);
        Ok(())
    })?;
    let digest = digest.expect("digest ran");
    report("ahead", size, || {
        let state = replica::chunk::DigestState::default();
        let ahead = replica::chunk::digest_ahead(open()?, size, state, &|| false)?;
        assert!(ahead.as_ref().is_ok_and(|d| *d == digest), "same digest");
        Ok(())
    })?;
    report("check", size, || {
        assert!(replica::chunk::check_chunks(open()?, &digest.chunks)?);
        Ok(())
    })?;
    if let Some(out) = args.get(1) {
        report("copy", size, || {
            let mut w = std::fs::File::create(out)?;
            each_block(open()?, |b| w.write_all(b).expect("write"))?;
            w.sync_data().ok();
            Ok(())
        })?;
        std::fs::remove_file(out)?;
    }
    Ok(())
}

fn each_block(mut f: std::fs::File, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        each(&buf[..n]);
    }
}

fn report(what: &str, size: u64, run: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
    let t = Instant::now();
    run()?;
    let s = t.elapsed().as_secs_f64();
    println!(
        "{what:8} {s:6.3} s {:6.2} GiB/s",
        size as f64 / s / (1u64 << 30) as f64
    );
    Ok(())
}
