//! Exclude rules: `--exclude` globs plus the source root's `.replicaignore`,
//! both in gitignore syntax. The client sends the pattern list to the server
//! so that both sides agree on what is excluded (the server leaves excluded
//! replica paths alone unless asked to delete them).

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::path::Path;

/// Name of the per-tree ignore file at the source root.
pub const IGNORE_FILE: &str = ".replicaignore";

/// A compiled set of gitignore-style patterns.
#[derive(Clone, Debug)]
pub struct Filter {
    patterns: Vec<String>,
    matcher: Gitignore,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            patterns: Vec::new(),
            matcher: Gitignore::empty(),
        }
    }
}

/// Excludes that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFilter {
    #[error("bad exclude pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("bad exclude patterns: {0}")]
    Patterns(String),
    #[error("cannot read {}: {reason}", path.display())]
    IgnoreFile {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl Filter {
    /// Compiles patterns (one gitignore line each). Blank lines and `#`
    /// comments are ignored; a bad pattern is an error naming it.
    pub fn new(patterns: Vec<String>) -> Result<Self, BadFilter> {
        let mut b = GitignoreBuilder::new("");
        for p in &patterns {
            b.add_line(None, p).map_err(|e| BadFilter::Pattern {
                pattern: p.clone(),
                reason: e.to_string(),
            })?;
        }
        let matcher = b.build().map_err(|e| BadFilter::Patterns(e.to_string()))?;
        Ok(Filter { patterns, matcher })
    }

    /// `--exclude` globs plus the lines of `<root>/.replicaignore` if present.
    pub fn for_source(root: &Path, excludes: &[String]) -> Result<Self, BadFilter> {
        let mut patterns = excludes.to_vec();
        let file = root.join(IGNORE_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => patterns.extend(
                text.lines()
                    .map(str::trim_end)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BadFilter::IgnoreFile {
                    path: file,
                    reason: e.to_string(),
                })
            }
        }
        Self::new(patterns)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the `/`-joined relative path (or one of its parents) is excluded.
    pub fn is_excluded(&self, rel: &str, is_dir: bool) -> bool {
        if self.patterns.is_empty() || rel.is_empty() {
            return false;
        }
        self.matcher
            .matched_path_or_any_parents(super::tree::key_to_path(rel), is_dir)
            .is_ignore()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_gitignore() {
        let f = Filter::new(vec![
            "*.tmp".into(),
            "build/".into(),
            "/top.txt".into(),
            "!keep.tmp".into(),
        ])
        .unwrap();
        assert!(f.is_excluded("a.tmp", false));
        assert!(f.is_excluded("x/y/a.tmp", false));
        assert!(!f.is_excluded("keep.tmp", false));
        assert!(f.is_excluded("build", true));
        assert!(f.is_excluded("build/out.o", false));
        assert!(!f.is_excluded("build", false));
        assert!(f.is_excluded("top.txt", false));
        assert!(!f.is_excluded("sub/top.txt", false));
        assert!(!f.is_excluded("a.txt", false));
    }

    #[test]
    fn bad_pattern_is_named() {
        let err = Filter::new(vec!["a{b".into()]).unwrap_err().to_string();
        assert!(err.contains("a{b"), "{err}");
    }
}
