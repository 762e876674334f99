//! The one helper module of the black-box tests, used by every suite.
//!
//! - [`data`]: deterministic bytes, trees built from a compact spec, exact
//!   mtimes and modes, a scratch area.
//! - [`snapshot`]: strict tree snapshots (type, content, symlink text, mode,
//!   mtime to the nanosecond, empty directories, the root included), exact
//!   comparison, waiting until two trees are equal.
//! - [`process`]: running the binary once ([`Run`]) or as a long-lived child
//!   ([`Proc`]).
//! - [`server`]: the one way to start `replica serve` ([`Server::builder`]).
//! - [`output`]: the pass summary line and the operation log.
//! - [`wire`]: a raw protocol peer over TCP.
//! - [`watch`]: a `replica watch` child; [`http`]: the status endpoint.
//! - [`scenarios`]: scenarios run both locally and over the network.

#![allow(dead_code, unused_imports)]

pub mod data;
pub mod http;
pub mod output;
pub mod process;
pub mod s3;
pub mod scenarios;
pub mod server;
pub mod snapshot;
pub mod watch;
pub mod wire;

pub use data::*;
pub use http::*;
pub use output::*;
pub use process::*;
pub use server::*;
pub use snapshot::*;
pub use watch::*;
pub use wire::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long anything asynchronous may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The binary under test.
pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("replica")
}

/// Calls `cond` every few milliseconds until it holds or `deadline` has
/// passed; returns whether it held. Never a fixed sleep.
pub fn poll_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
