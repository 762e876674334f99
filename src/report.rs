//! The operation log: one line per operation, to the console and, with
//! `--log-file`, appended to a file (RFC 3339 timestamps, written through
//! and flushed line by line, never dropped). Progress bars, when shown,
//! are drawn through the same object so log lines never tear them.

use crate::protocol::{Op, OpReport, PassStats};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// How chatty the console is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// Only errors and the pass summary.
    Quiet,
    #[default]
    Normal,
    /// Operation lines also say why and how many bytes were sent or rebuilt.
    Verbose,
}

/// Where operation lines go.
pub struct Reporter {
    file: Option<Mutex<File>>,
    verbosity: Verbosity,
    /// Optional prefix naming the side or target (several targets).
    prefix: String,
    progress: Option<indicatif::MultiProgress>,
    /// Prints nothing at all (the in-process server of a local sync,
    /// whose reports reach the console through the client).
    muted: bool,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// "1.5 MiB" style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Reporter {
    pub fn new(log_file: Option<&Path>, verbosity: Verbosity) -> std::io::Result<Self> {
        let file = match log_file {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        Ok(Reporter {
            file,
            verbosity,
            prefix: String::new(),
            progress: None,
            muted: false,
        })
    }

    /// A reporter that prints nothing (tests, dry internals).
    pub fn silent() -> Self {
        Reporter {
            file: None,
            verbosity: Verbosity::Quiet,
            prefix: String::new(),
            progress: None,
            muted: true,
        }
    }

    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    pub fn with_progress(mut self, mp: indicatif::MultiProgress) -> Self {
        self.progress = Some(mp);
        self
    }

    pub fn progress(&self) -> Option<&indicatif::MultiProgress> {
        self.progress.as_ref()
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    fn write_file(&self, line: &str) {
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(f, "{} {}{line}", now_rfc3339(), self.prefix);
            let _ = f.flush();
        }
    }

    fn console(&self, line: &str, to_stderr: bool) {
        if self.muted {
            return;
        }
        let text = format!("{} {}{line}", now_rfc3339(), self.prefix);
        match (&self.progress, to_stderr) {
            (Some(mp), _) if !mp.is_hidden() => {
                let _ = mp.println(text);
            }
            (_, true) => eprintln!("{text}"),
            (_, false) => println!("{text}"),
        }
    }

    /// One operation line.
    pub fn op(&self, r: &OpReport) {
        let mut line = format!("{} {}", r.op.as_str(), r.path);
        if let Some(from) = &r.from {
            line.push_str(&format!(" (from {from})"));
        }
        if let Some(d) = &r.detail {
            line.push_str(&format!(": {d}"));
        }
        let detail = format!(
            " [{}; {} sent, {} rebuilt locally]",
            r.reason.as_str(),
            human_bytes(r.received),
            human_bytes(r.reused)
        );
        self.write_file(&format!("{line}{detail}"));
        let is_error = r.op == Op::Error;
        match self.verbosity {
            Verbosity::Quiet if !is_error => {}
            Verbosity::Verbose => self.console(&format!("{line}{detail}"), is_error),
            _ => self.console(&line, is_error),
        }
    }

    /// A problem with one entry or a transient failure; the work goes on.
    pub fn error(&self, msg: &str) {
        self.write_file(&format!("error {msg}"));
        self.console(&format!("error {msg}"), true);
    }

    pub fn warn(&self, msg: &str) {
        self.write_file(&format!("warning {msg}"));
        if self.verbosity != Verbosity::Quiet {
            self.console(&format!("warning {msg}"), true);
        }
    }

    /// An informational line (suppressed by `--quiet`).
    pub fn info(&self, msg: &str) {
        self.write_file(msg);
        if self.verbosity != Verbosity::Quiet {
            self.console(msg, false);
        }
    }

    /// A line shown even with `--quiet` (pass summaries).
    pub fn always(&self, msg: &str) {
        self.write_file(msg);
        self.console(msg, false);
    }
}

/// What one pass did, as the client reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub stats: PassStats,
    pub wire_sent: u64,
    pub wire_received: u64,
    /// Entries the client could not read or name (the pass exits non-zero).
    pub client_errors: u64,
    pub dry_run: bool,
    /// Large files that stepped aside for newer changes (watch mode), by key:
    /// the next pass sends them, resuming where this one stopped.
    pub preempted: Vec<String>,
}

impl PassSummary {
    pub fn failed(&self) -> bool {
        self.client_errors > 0 || self.stats.errors > 0 || self.stats.stopped.is_some()
    }

    /// The pass summary line. Byte counts are exact (`N B`), with a
    /// human-readable size in parentheses when large.
    pub fn line(&self) -> String {
        let b = |n: u64| {
            if n < 10 * 1024 {
                format!("{n} B")
            } else {
                format!("{n} B ({})", human_bytes(n))
            }
        };
        let (verb, sent) = if self.dry_run {
            ("would be done", "would be sent")
        } else {
            ("done", "sent")
        };
        format!(
            "summary: scanned {} files of {} and {} dirs; {} operations {verb}; wire: {} sent, {} received; content: {} {sent}, {} rebuilt from the replica (dedup); {} errors",
            self.files,
            b(self.bytes),
            self.dirs,
            self.stats.ops,
            b(self.wire_sent),
            b(self.wire_received),
            b(self.stats.received),
            b(self.stats.reused),
            self.stats.errors + self.client_errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
