//! Reading what `replica` printed: the pass's `totals:` line (exact
//! figures; the short `summary:` line is for people) and the operation log.

/// The exact figures of a pass, from its `totals:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub files: u64,
    pub file_bytes: u64,
    pub dirs: u64,
    pub ops: u64,
    pub dry_run: bool,
    pub wire_sent: u64,
    pub wire_received: u64,
    pub content_sent: u64,
    pub rebuilt: u64,
    pub errors: u64,
}

/// Parses the exact figures of a pass, its `totals:` line: `... totals:
/// files=F file_bytes=N dirs=D ops=O content_sent=C reused=U moved_bytes=M
/// errors=E [wire_sent=S wire_received=R] [dry_run]` (no wire figures for a
/// local target: they are zero).
pub fn parse_summary(line: &str) -> Summary {
    let at = line
        .find("totals: ")
        .unwrap_or_else(|| panic!("not a totals line: {line}"));
    let words: Vec<&str> = line[at + "totals: ".len()..].split(' ').collect();
    let num = |key: &str| -> u64 {
        words
            .iter()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("bad {key}: {line}")))
            .unwrap_or(0)
    };
    Summary {
        files: num("files"),
        file_bytes: num("file_bytes"),
        dirs: num("dirs"),
        ops: num("ops"),
        dry_run: words.contains(&"dry_run"),
        wire_sent: num("wire_sent"),
        wire_received: num("wire_received"),
        content_sent: num("content_sent"),
        rebuilt: num("reused"),
        errors: num("errors"),
    }
}

pub const OPS: [&str; 7] = [
    "created", "updated", "copied", "moved", "removed", "metadata", "error",
];

/// One operation line: `<RFC 3339 time> <op> <path>[ (from X)][: detail][ [reason...]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpLine {
    pub op: String,
    pub path: String,
    /// The whole text after the op word.
    pub rest: String,
}

fn looks_like_timestamp(t: &str) -> bool {
    t.len() >= 20
        && t.as_bytes()[4] == b'-'
        && t.contains('T')
        && (t.ends_with('Z') || t.contains('+'))
}

/// The operation lines of a log text, in order.
pub fn op_lines(text: &str) -> Vec<OpLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ' ');
        let (Some(ts), Some(op), Some(rest)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !looks_like_timestamp(ts) || !OPS.contains(&op) {
            continue;
        }
        let mut path = rest;
        for cut in [" [", " (from ", ": "] {
            if let Some(i) = path.find(cut) {
                path = &path[..i];
            }
        }
        out.push(OpLine {
            op: op.into(),
            path: path.into(),
            rest: rest.into(),
        });
    }
    out
}

/// The number `key=N` on the last `totals:` line.
pub fn summary_number(stdout: &str, key: &str) -> Option<u64> {
    let line = stdout.lines().rev().find(|l| l.contains(" totals: "))?;
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// `ops=N` from the last `totals:` line.
pub fn operations(stdout: &str) -> Option<u64> {
    summary_number(stdout, "ops")
}

/// The exact figures of each pass of a log text (its `totals:` lines).
pub fn summaries(text: &str) -> Vec<Summary> {
    text.lines()
        .filter(|l| l.contains(" totals: "))
        .map(parse_summary)
        .collect()
}

/// The raw summary lines of a log text.
pub fn summary_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(" summary: "))
        .map(str::to_string)
        .collect()
}
