//! Reading what `replica` printed: the pass summary line and the
//! operation log.

/// The figures of a `summary:` line.
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

/// The exact byte counts of a text: every integer written as `N B`
/// (the human-readable figures in parentheses are ignored).
pub fn byte_counts(text: &str) -> Vec<u64> {
    let toks: Vec<&str> = text.split_whitespace().collect();
    toks.windows(2)
        .filter(|w| w[1].trim_end_matches([',', ';']) == "B")
        .filter_map(|w| w[0].parse().ok())
        .collect()
}

/// The plain integers of a text (`3 files`, `6 dirs`, ...).
fn integers(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|t| t.trim_end_matches([',', ';']).parse().ok())
        .collect()
}

/// Parses a summary line: `... summary: scanned F files of N B and D dirs;
/// O operations done; wire: S B sent, R B received; content: C B sent, U B
/// rebuilt from the replica (dedup); E errors`.
pub fn parse_summary(line: &str) -> Summary {
    let at = line
        .find("summary: ")
        .unwrap_or_else(|| panic!("not a summary line: {line}"));
    let parts: Vec<&str> = line[at + "summary: ".len()..].split("; ").collect();
    assert_eq!(parts.len(), 5, "unexpected summary shape: {line}");
    let scanned = integers(parts[0]);
    let bytes = byte_counts(parts[0]);
    assert!(
        parts[0].starts_with("scanned ") && scanned.len() >= 3 && bytes.len() == 1,
        "bad scan part: {line}"
    );
    let ops = integers(parts[1]);
    let wire = byte_counts(
        parts[2]
            .strip_prefix("wire: ")
            .unwrap_or_else(|| panic!("bad wire part: {line}")),
    );
    let content = byte_counts(
        parts[3]
            .strip_prefix("content: ")
            .unwrap_or_else(|| panic!("bad content part: {line}")),
    );
    let errors = integers(parts[4]);
    assert!(
        ops.len() == 1 && wire.len() == 2 && content.len() == 2 && errors.len() == 1,
        "bad summary: {line}"
    );
    Summary {
        files: scanned[0],
        file_bytes: bytes[0],
        dirs: *scanned.last().unwrap(),
        ops: ops[0],
        dry_run: parts[1].ends_with("would be done"),
        wire_sent: wire[0],
        wire_received: wire[1],
        content_sent: content[0],
        rebuilt: content[1],
        errors: errors[0],
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

/// The number right after `label` on the `summary:` line.
pub fn summary_number(stdout: &str, label: &str) -> Option<u64> {
    let line = stdout.lines().rev().find(|l| l.contains("summary: "))?;
    let rest = &line[line.find(label)? + label.len()..];
    rest.split(' ').next()?.parse().ok()
}

/// `N` from `; N operations` on the summary line.
pub fn operations(stdout: &str) -> Option<u64> {
    let line = stdout.lines().rev().find(|l| l.contains("summary: "))?;
    let before = &line[..line.find(" operations")?];
    before.rsplit(' ').next()?.parse().ok()
}

/// The summary lines of a log text.
pub fn summaries(text: &str) -> Vec<Summary> {
    text.lines()
        .filter(|l| l.contains(" summary: "))
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
