//! The randomized convergence harness (model-based, like Dropbox's
//! CanopyCheck): random operation sequences on a source while replica runs
//! (`watch` and `sync --every`, local and over TLS), with the client and
//! the server killed and restarted at random moments. Once the operations
//! stop, the replica must equal the source exactly: content, type, mode,
//! mtime to the nanosecond, symlink text, empty directories.
//!
//! CI runs a small fixed slice (`ci_slice_*`: 5 seeds of 150 operations per
//! mode). The long run is `bench/converge` (or the ignored `long_run` test
//! with `REPLICA_CONVERGE_SEEDS=A..B`, `REPLICA_CONVERGE_OPS=N`,
//! `REPLICA_CONVERGE_MODES=watch-local,...`). A failing seed is printed with
//! the shortest failing sequence the shrinker found.

mod common;

#[path = "convergence/ops.rs"]
mod ops;
#[path = "convergence/run.rs"]
mod run;

use run::{check_seeds, Mode};
use std::time::Duration;

/// Shrinking in CI is bounded: a failure is reported within minutes.
const CI_SHRINK: Duration = Duration::from_secs(90);

#[test]
fn ci_slice_watch_local() {
    check_seeds(Mode::WatchLocal, 1..=5, 150, CI_SHRINK);
}

#[test]
fn ci_slice_watch_remote() {
    check_seeds(Mode::WatchRemote, 101..=105, 150, CI_SHRINK);
}

#[test]
fn ci_slice_every_local() {
    check_seeds(Mode::EveryLocal, 201..=205, 150, CI_SHRINK);
}

#[test]
fn ci_slice_every_remote() {
    check_seeds(Mode::EveryRemote, 301..=305, 150, CI_SHRINK);
}

/// The long run: seeds, operation count and modes from the environment.
#[test]
#[ignore]
fn long_run() {
    let env = |k: &str| std::env::var(k).ok();
    let seeds = env("REPLICA_CONVERGE_SEEDS").unwrap_or_else(|| "1..=50".into());
    let (a, b) = match seeds.split_once("..") {
        Some((a, b)) => (
            a.parse::<u64>().expect("REPLICA_CONVERGE_SEEDS start"),
            b.trim_start_matches('=')
                .parse::<u64>()
                .expect("REPLICA_CONVERGE_SEEDS end"),
        ),
        None => {
            let s = seeds.parse().expect("REPLICA_CONVERGE_SEEDS");
            (s, s)
        }
    };
    let ops: usize = env("REPLICA_CONVERGE_OPS")
        .map(|s| s.parse().expect("REPLICA_CONVERGE_OPS"))
        .unwrap_or(1000);
    let modes: Vec<Mode> = match env("REPLICA_CONVERGE_MODES") {
        Some(s) => s
            .split(',')
            .map(|m| Mode::parse(m.trim()).unwrap_or_else(|| panic!("unknown mode {m}")))
            .collect(),
        None => Mode::ALL.to_vec(),
    };
    let shrink = Duration::from_secs(
        env("REPLICA_CONVERGE_SHRINK_SECS")
            .map(|s| s.parse().expect("REPLICA_CONVERGE_SHRINK_SECS"))
            .unwrap_or(600),
    );
    for seed in a..=b {
        let mode = modes[(seed as usize) % modes.len()];
        check_seeds(mode, [seed], ops, shrink);
    }
}
