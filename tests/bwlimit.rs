//! `--bwlimit RATE` (issue 17): a limited transfer takes at least its
//! bytes ÷ rate, on the client's sending side (`sync`, `watch`) and on the
//! server's (`serve`); the replica is exact either way; a limit no target
//! would use, or one that is not a rate, is a usage error.
//!
//! The bucket may hold a tenth of a second of traffic (at least 1 KiB)
//! when a pass starts, so the bound checked is (bytes − burst) ÷ rate.

mod common;

use common::{assert_trees_equal, build_tree, f, random_bytes, run_replica, run_sync, Run, Server};
use std::time::{Duration, Instant};

/// The most a bucket of `rate` bytes per second saves up.
fn burst(rate: u64) -> u64 {
    (rate / 10).max(1024)
}

#[track_caller]
fn assert_at_least(took: Duration, bytes: u64, rate: u64) {
    let floor = Duration::from_secs_f64(bytes.saturating_sub(burst(rate)) as f64 / rate as f64);
    eprintln!("{bytes} B at {rate} B/s: took {took:?}, at least {floor:?}");
    assert!(
        took >= floor,
        "{bytes} B at {rate} B/s took {took:?}, less than {floor:?}"
    );
}

#[test]
fn a_limited_sync_takes_at_least_its_bytes_over_the_rate() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Random bytes: compression cannot shrink what goes on the wire.
    build_tree(
        src.path(),
        &[
            f("a.bin", random_bytes(17, 600 * 1024)),
            f("d/b.bin", random_bytes(18, 424 * 1024)),
        ],
    );
    let server = Server::start_with(dst.path(), &["--min-free", "0"]);
    let rate: u64 = 512 * 1024;
    let mut args = server.client_args();
    args.extend(["--bwlimit".into(), "512K".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let run: Run = run_sync(src.path(), &server.target(), state.path(), &args).into();
    let took = started.elapsed();
    run.assert_ok();
    assert_trees_equal(src.path(), dst.path());
    let s = run.summary();
    assert!(
        s.wire_sent >= 1024 * 1024,
        "random content goes out whole: {s:?}"
    );
    assert_at_least(took, s.wire_sent, rate);
}

#[test]
fn a_limited_server_sends_at_most_its_rate() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Many small files: the server's plan and one report per file.
    let spec: Vec<_> = (0..200)
        .map(|i| f(&format!("d{}/file-{i:04}.txt", i % 7), random_bytes(i, 64)))
        .collect();
    build_tree(src.path(), &spec);
    let rate: u64 = 4 * 1024;
    let server = Server::start_with(dst.path(), &["--min-free", "0", "--bwlimit", "4K"]);
    let args = server.client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let run: Run = run_sync(src.path(), &server.target(), state.path(), &args).into();
    let took = started.elapsed();
    run.assert_ok();
    assert_trees_equal(src.path(), dst.path());
    let s = run.summary();
    assert!(s.wire_received > 0, "{s:?}");
    assert_at_least(took, s.wire_received, rate);
}

#[test]
fn bad_or_useless_limits_are_usage_errors() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    build_tree(src.path(), &[f("a", "x")]);
    let target = "replica://127.0.0.1:9";
    let r: Run = run_sync(src.path(), target, state.path(), &["--bwlimit", "fast"]).into();
    r.assert_code(2);
    assert!(
        r.stderr.contains("--bwlimit") && r.stderr.contains("fast"),
        "{}",
        r.describe()
    );
    let r: Run = run_sync(src.path(), target, state.path(), &["--bwlimit", "10"]).into();
    r.assert_code(2);
    assert!(r.stderr.contains("smallest"), "{}", r.describe());
    // A local target is not limited; a limit with only local targets is a mistake.
    let r: Run = run_sync(
        src.path(),
        dst.path().to_str().unwrap(),
        state.path(),
        &["--bwlimit", "1M"],
    )
    .into();
    r.assert_code(2);
    assert!(r.stderr.contains("network"), "{}", r.describe());
    assert!(
        std::fs::read_dir(dst.path()).unwrap().next().is_none(),
        "nothing written after a usage error"
    );
    let r = run_replica(&[
        "serve".as_ref(),
        dst.path().as_os_str(),
        "--bwlimit".as_ref(),
        "1 parsec".as_ref(),
    ]);
    r.assert_code(2);
}
