//! The operation log: one line per operation, to the console and, with
//! `--log-file`, appended to a file (RFC 3339 timestamps, written through
//! and flushed line by line, never dropped), and the pass summaries.
//!
//! Where operation lines go is a [`ConsoleOps`] choice: every line (output
//! that is not a terminal: scripts and logs; or `-v`), a live window of the
//! most recent ones drawn by [`crate::progress`] (a terminal with a progress
//! display), or the first few of each pass (a terminal without one, e.g.
//! `watch`). Errors always reach the console in full, and the log file
//! always gets everything. Every line is passed through [`escape_controls`]
//! first, so a name holding a newline never splits a line. Lines carry an
//! RFC 3339 timestamp, except on a terminal that is not shown every line.

use crate::progress::OpWindow;
use crate::protocol::{Op, OpReport, PassStats};
use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Which operation lines the console shows (errors are always shown).
#[derive(Clone, Default)]
pub enum ConsoleOps {
    /// Every one (not a terminal, or `-v`).
    #[default]
    All,
    /// A live window of the most recent ones (a terminal with a progress display).
    Window(Arc<OpWindow>),
    /// The first [`FIRST_OPS_SHOWN`] of each pass (a terminal without a progress display).
    First,
}

/// Operation lines a terminal shows per pass without a progress display.
pub const FIRST_OPS_SHOWN: u64 = 10;

impl ConsoleOps {
    /// The choice for a console: every line unless stdout is a terminal
    /// and `-v` was not given; then the window of `window` if there is
    /// one, else the first few lines of each pass.
    pub fn detect(verbosity: Verbosity, window: Option<Arc<OpWindow>>) -> Self {
        use std::io::IsTerminal;
        if verbosity == Verbosity::Verbose || !std::io::stdout().is_terminal() {
            return ConsoleOps::All;
        }
        match window {
            Some(w) => ConsoleOps::Window(w),
            None => ConsoleOps::First,
        }
    }
}

/// Operations counted by kind, and what moves carried (not dedup: a move
/// reuses its own content).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub created: u64,
    pub updated: u64,
    pub copied: u64,
    pub moved: u64,
    pub removed: u64,
    pub metadata: u64,
    pub errors: u64,
    /// Content bytes the moved entries kept.
    pub moved_bytes: u64,
}

impl OpCounts {
    fn add(&mut self, r: &OpReport) {
        match r.op {
            Op::Created => self.created += 1,
            Op::Updated => self.updated += 1,
            Op::Copied => self.copied += 1,
            Op::Moved => {
                self.moved += 1;
                self.moved_bytes += r.reused;
            }
            Op::Removed => self.removed += 1,
            Op::Metadata => self.metadata += 1,
            Op::Error => self.errors += 1,
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &OpCounts) -> OpCounts {
        OpCounts {
            created: self.created - earlier.created,
            updated: self.updated - earlier.updated,
            copied: self.copied - earlier.copied,
            moved: self.moved - earlier.moved,
            removed: self.removed - earlier.removed,
            metadata: self.metadata - earlier.metadata,
            errors: self.errors - earlier.errors,
            moved_bytes: self.moved_bytes - earlier.moved_bytes,
        }
    }

    /// `3 created, 1 moved` (kinds with none left out; empty if nothing).
    pub fn describe(&self) -> String {
        let kinds = [
            (self.created, "created"),
            (self.updated, "updated"),
            (self.copied, "copied"),
            (self.moved, "moved"),
            (self.removed, "removed"),
            (self.metadata, "metadata fixed"),
        ];
        kinds
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{} {what}", thousands(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where operation lines go.
pub struct Reporter {
    file: Option<Mutex<File>>,
    verbosity: Verbosity,
    /// Optional prefix naming the side or target (several targets).
    prefix: String,
    progress: Option<indicatif::MultiProgress>,
    ops: ConsoleOps,
    /// Operations counted since the reporter was made.
    counts: Mutex<OpCounts>,
    /// Operation lines shown on the console in this pass ([`ConsoleOps::First`]).
    shown: AtomicU64,
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

/// "52,000" style counts.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 file`, `2 files`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// "0.4 s", "12 s", "3m 05s".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 60.0 {
        format!("{s:.0} s")
    } else {
        let s = s.round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

/// A line made safe to print: control characters (newline, carriage
/// return, tab, escape, DEL, C1) and the invisible bidirectional overrides
/// become visible escapes (`\n`, `\r`, `\t`, `\u{1b}`), so one line stays
/// one line on a terminal, in a log and for a parser.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    fn special(c: char) -> bool {
        c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(special) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if special(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Checks, before anything is touched, that a log file can be made where
/// it is asked for: its directory exists and it is not a directory.
pub fn check_log_file(p: &Path) -> crate::Result<()> {
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
    if parent.is_some_and(|d| !d.is_dir()) || p.is_dir() {
        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
        return Err(log_file_error(p, &e));
    }
    Ok(())
}

/// Why a log file cannot be opened, naming it and the cause.
fn log_file_error(p: &Path, e: &std::io::Error) -> crate::Error {
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
    let cause = match parent {
        _ if p.is_dir() => "is a directory, not a file".into(),
        Some(d) if !d.exists() => format!("directory {} does not exist", d.display()),
        Some(d) if !d.is_dir() => format!("{} is not a directory", d.display()),
        _ => crate::error::describe_io(e),
    };
    crate::Error::Usage(format!("--log-file {}: {cause}", p.display()))
}

impl Reporter {
    /// A reporter printing every operation line, appending to `log_file`
    /// (a usage error naming the file if it cannot be opened).
    pub fn new(log_file: Option<&Path>, verbosity: Verbosity) -> crate::Result<Self> {
        let file = match log_file {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| log_file_error(p, &e))?,
            )),
            None => None,
        };
        Ok(Reporter {
            file,
            verbosity,
            prefix: String::new(),
            progress: None,
            ops: ConsoleOps::All,
            counts: Mutex::default(),
            shown: AtomicU64::new(0),
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
            ops: ConsoleOps::All,
            counts: Mutex::default(),
            shown: AtomicU64::new(0),
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

    /// Which operation lines the console shows.
    pub fn with_console_ops(mut self, ops: ConsoleOps) -> Self {
        self.ops = ops;
        self
    }

    pub fn progress(&self) -> Option<&indicatif::MultiProgress> {
        self.progress.as_ref()
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// Operations reported so far, by kind.
    pub fn counts(&self) -> OpCounts {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pass starts: the console's per-pass budget of lines starts again.
    pub fn pass_started(&self) {
        self.shown.store(0, Ordering::Relaxed);
    }

    /// A pass ended: the live window is cleared, and a terminal that was
    /// shown only the first lines is told how many it was not shown.
    pub fn pass_finished(&self) {
        if let ConsoleOps::Window(w) = &self.ops {
            w.clear();
        }
        let shown = self.shown.swap(0, Ordering::Relaxed);
        if matches!(self.ops, ConsoleOps::First) && shown > FIRST_OPS_SHOWN {
            let hidden = shown - FIRST_OPS_SHOWN;
            self.console(
                &format!(
                    "… and {} (-v shows every one; --log-file keeps every one)",
                    plural(hidden, "more operation", "more operations")
                ),
                false,
            );
        }
    }

    fn write_file(&self, line: &str) {
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(
                f,
                "{} {}",
                now_rfc3339(),
                escape_controls(&format!("{}{line}", self.prefix))
            );
            let _ = f.flush();
        }
    }

    fn console(&self, line: &str, to_stderr: bool) {
        if self.muted {
            return;
        }
        let prefixed = format!("{}{line}", self.prefix);
        let line = escape_controls(&prefixed);
        // A person at a terminal sees lines as they come: no timestamp
        // (it would make the summary wrap); logs and pipes keep it.
        let text = match self.ops {
            ConsoleOps::All => format!("{} {line}", now_rfc3339()),
            _ => line.into_owned(),
        };
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
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).add(r);
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
        if self.muted {
            return;
        }
        let is_error = r.op == Op::Error;
        match (self.verbosity, &self.ops) {
            _ if is_error => self.console(&line, true),
            (Verbosity::Quiet, _) => {}
            (Verbosity::Verbose, _) => self.console(&format!("{line}{detail}"), false),
            (_, ConsoleOps::All) => self.console(&line, false),
            (_, ConsoleOps::Window(w)) => w.push(
                &escape_controls(&format!("{}{line}", self.prefix)),
                self.counts(),
            ),
            (_, ConsoleOps::First) => {
                if self.shown.fetch_add(1, Ordering::Relaxed) < FIRST_OPS_SHOWN {
                    self.console(&line, false);
                }
            }
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

    /// A pass's summary: the exact `totals:` line first (log file, and the
    /// console unless it is a terminal without `-v`), then the short
    /// `summary:` line everywhere.
    pub fn summary(&self, p: &PassReport) {
        let totals = p.totals();
        self.write_file(&totals);
        if matches!(self.ops, ConsoleOps::All) {
            self.console(&totals, false);
        }
        self.always(&p.line());
    }
}

/// What one pass did, as the client's session reports it.
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

    pub fn errors(&self) -> u64 {
        self.stats.errors + self.client_errors
    }
}

/// A pass as a person is told about it: the session's summary, the
/// operations counted by kind, how long it took and whether the target was
/// local (no wire) or a server.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub summary: PassSummary,
    pub counts: OpCounts,
    pub elapsed: Duration,
    pub local: bool,
}

impl PassReport {
    pub fn failed(&self) -> bool {
        self.summary.failed()
    }

    /// The short line: what changed by kind, the time, the content moved
    /// and the errors, in words true to the mode (local copies, remote
    /// sends, dry runs).
    ///
    /// `summary: 3 created, 1 moved in 0.4 s; 1.5 MiB sent (0.9 MiB on the wire), 2.0 MiB deduplicated; no errors`
    /// ("deduplicated": rebuilt from content the replica already had).
    pub fn line(&self) -> String {
        let s = &self.summary;
        let what = self.counts.describe();
        let time = human_duration(self.elapsed);
        let stopped = s.stats.stopped.is_some();
        let head = if stopped && what.is_empty() && s.stats.ops == 0 {
            format!("stopped before changing anything, in {time}")
        } else if what.is_empty() && s.stats.ops == 0 {
            let tree = format!(
                "{}, {}",
                plural(s.files, "file", "files"),
                human_bytes(s.bytes)
            );
            if s.dry_run {
                format!("dry run, nothing to do ({tree}) in {time}")
            } else {
                format!("up to date ({tree}) in {time}")
            }
        } else if s.dry_run {
            format!("dry run, would be {what} in {time}")
        } else if what.is_empty() {
            format!(
                "{} in {time}",
                plural(s.stats.ops, "operation", "operations")
            )
        } else {
            format!("{what} in {time}")
        };
        let mut parts = vec![head];
        if let Some(content) = self.content() {
            parts.push(content);
        }
        parts.push(match (s.errors(), stopped) {
            (0, false) => "no errors".into(),
            (0, true) => "stopped by a safety rail (below)".into(),
            (n, _) => plural(n, "error", "errors"),
        });
        format!("summary: {}", parts.join("; "))
    }

    /// Content bytes moved, or None when nothing was.
    fn content(&self) -> Option<String> {
        let s = &self.summary;
        let dedup = s.stats.reused.saturating_sub(self.counts.moved_bytes);
        if s.stats.received == 0 && dedup == 0 {
            return None;
        }
        let verb = match (s.dry_run, self.local) {
            (true, _) => "to send",
            (false, true) => "copied",
            (false, false) => "sent",
        };
        let mut out = format!("{} {verb}", human_bytes(s.stats.received));
        if !self.local && !s.dry_run {
            let wire = s.wire_sent + s.wire_received;
            out.push_str(&format!(" ({} on the wire)", human_bytes(wire)));
        }
        if dedup > 0 {
            let verb = if s.dry_run {
                "would be deduplicated"
            } else {
                "deduplicated"
            };
            out.push_str(&format!(", {} {verb}", human_bytes(dedup)));
        }
        Some(out)
    }

    /// The exact figures, as `key=value` words for scripts and tests:
    /// `totals: files=F file_bytes=N dirs=D ops=O content_sent=C reused=U
    /// moved_bytes=M errors=E [wire_sent=S wire_received=R] [dry_run]`
    /// (wire figures only for a remote target).
    pub fn totals(&self) -> String {
        let s = &self.summary;
        let mut out = format!(
            "totals: files={} file_bytes={} dirs={} ops={} content_sent={} reused={} moved_bytes={} errors={}",
            s.files,
            s.bytes,
            s.dirs,
            s.stats.ops,
            s.stats.received,
            s.stats.reused,
            self.counts.moved_bytes,
            s.errors()
        );
        if !self.local {
            out.push_str(&format!(
                " wire_sent={} wire_received={}",
                s.wire_sent, s.wire_received
            ));
        }
        if s.dry_run {
            out.push_str(" dry_run");
        }
        out
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
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(51906), "51,906");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(plural(1, "file", "files"), "1 file");
        assert_eq!(plural(2, "file", "files"), "2 files");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain/name"), "plain/name");
        assert_eq!(escape_controls("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape_controls("x\u{1b}[31my"), "x\\u{1b}[31my");
        assert_eq!(escape_controls("evil\u{202e}gpj"), "evil\\u{202e}gpj");
        assert_eq!(escape_controls("é ü 日本"), "é ü 日本");
    }

    fn report(local: bool, f: impl FnOnce(&mut PassReport)) -> PassReport {
        let mut r = PassReport {
            local,
            elapsed: Duration::from_millis(400),
            ..Default::default()
        };
        r.summary.files = 1;
        r.summary.bytes = 10;
        f(&mut r);
        r
    }

    #[test]
    fn summaries_are_true_to_the_mode() {
        let nothing = report(true, |_| {});
        assert_eq!(
            nothing.line(),
            "summary: up to date (1 file, 10 B) in 0.4 s; no errors"
        );
        let local = report(true, |r| {
            r.counts.created = 1;
            r.summary.stats.ops = 1;
            r.summary.stats.received = 10;
        });
        assert_eq!(
            local.line(),
            "summary: 1 created in 0.4 s; 10 B copied; no errors"
        );
        assert!(!local.totals().contains("wire"));
        let remote = report(false, |r| {
            r.counts.created = 2;
            r.summary.stats.ops = 2;
            r.summary.stats.received = 10;
            r.summary.wire_sent = 30;
            r.summary.stats.errors = 1;
        });
        assert_eq!(
            remote.line(),
            "summary: 2 created in 0.4 s; 10 B sent (30 B on the wire); 1 error"
        );
        assert!(remote.totals().contains("wire_sent=30"));
        let rename = report(false, |r| {
            r.counts.moved = 1;
            r.counts.moved_bytes = 50 << 20;
            r.summary.stats.ops = 1;
            r.summary.stats.reused = 50 << 20;
        });
        assert_eq!(rename.line(), "summary: 1 moved in 0.4 s; no errors");
    }

    #[test]
    fn a_stopped_pass_never_reads_as_fine() {
        let refused = report(true, |r| r.summary.stats.stopped = Some("why".into()));
        assert_eq!(
            refused.line(),
            "summary: stopped before changing anything, in 0.4 s; stopped by a safety rail (below)"
        );
        let partly = report(true, |r| {
            r.counts.created = 1;
            r.summary.stats.ops = 1;
            r.summary.stats.stopped = Some("why".into());
        });
        assert_eq!(
            partly.line(),
            "summary: 1 created in 0.4 s; stopped by a safety rail (below)"
        );
    }
}
