//! A `replica watch` child whose log is parsed, and a source and replica
//! directory side by side.

use super::output::{summaries, Summary};
use super::{poll_until, Proc};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a change may take to reach the replica.
pub const CONVERGE: Duration = Duration::from_secs(15);

/// A `replica watch` child.
pub struct Watch {
    pub proc: Proc,
}

impl Watch {
    /// `replica watch SRC TARGETS... --state-dir STATE --rescan-every 1h EXTRA...`
    /// (the long rescan period makes sure the tests see event-driven passes,
    /// never a periodic safety rescan).
    pub fn spawn(src: &Path, targets: &[String], state: &Path, extra: &[String]) -> Watch {
        let mut args: Vec<&OsStr> = vec!["watch".as_ref(), src.as_os_str()];
        args.extend(targets.iter().map(OsStr::new));
        args.push("--state-dir".as_ref());
        args.push(state.as_os_str());
        args.extend(["--rescan-every", "1h"].map(OsStr::new));
        args.extend(extra.iter().map(OsStr::new));
        Watch {
            proc: Proc::spawn(&args),
        }
    }

    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    pub fn describe(&self) -> String {
        format!("--- watch\n{}", self.proc.describe())
    }

    /// The pass summaries printed so far (all targets), in order.
    pub fn summaries(&self) -> Vec<Summary> {
        summaries(&self.stdout())
    }

    /// Waits until at least `n` summary lines were printed.
    #[track_caller]
    pub fn wait_summaries(&self, n: usize) {
        let ok = poll_until(CONVERGE, || self.summaries().len() >= n);
        assert!(ok, "fewer than {n} pass summaries\n{}", self.describe());
    }

    /// The count of the latest `watching N directories` line.
    pub fn watched_dirs(&self) -> Option<u64> {
        self.stdout().lines().rev().find_map(|l| {
            let i = l.find("watching ")?;
            let rest = l[i + "watching ".len()..].strip_suffix(" directories")?;
            rest.trim().parse().ok()
        })
    }

    /// SIGTERM, then asserts an orderly exit: status 0, or 143 when the
    /// signal cut off a pass in progress and the watch said so (a rescan
    /// may still be running after the replica already matches).
    #[cfg(unix)]
    #[track_caller]
    pub fn stop(mut self) {
        self.proc.terminate();
        let status = self.proc.wait_exit(Duration::from_secs(15));
        let Some(status) = status else {
            panic!("replica watch did not stop on SIGTERM\n{}", self.describe());
        };
        let said_interrupted = self.describe().contains("interrupted: a pass was cut off");
        assert!(
            status.code() == Some(0) || (status.code() == Some(143) && said_interrupted),
            "replica watch did not exit cleanly on SIGTERM ({status:?})\n{}",
            self.describe()
        );
    }
}

/// A temporary source and replica directory side by side.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub src: PathBuf,
    pub dst: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        Dirs { tmp, src, dst }
    }
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}
