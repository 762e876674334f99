//! Names: what a path component received from a peer must be to be safe
//! anywhere ([`validate_name`]: no escape, ever), and what a replica's
//! platform can hold ([`NameRules`]: judged per entry, so one name a
//! Windows replica cannot hold is one per-file error, not a failed pass).

/// Longest component accepted, in bytes (the common filesystem limit).
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty path component")]
    Empty,
    #[error("path component {0:?} is not allowed")]
    Dot(String),
    #[error("path component contains a '/': {0:?}")]
    Separator(String),
    #[error("path component contains a NUL byte")]
    Nul,
    #[error("path component is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
}

/// Accepts exactly one normal path component on the wire: not empty, not
/// `.` or `..`, no `/`, no NUL, at most 255 bytes. Everything else (`C:`,
/// `a\b`, `CON`, a trailing dot, a newline) is an ordinary name on Linux
/// and macOS; whether the replica can hold it is [`NameRules`]' question.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dot(name.into()));
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.contains('/') {
        return Err(NameError::Separator(name.into()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    Ok(())
}

/// Which names a replica can hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NameRules {
    /// Linux, macOS and other Unix systems: any valid component.
    #[default]
    Unix,
    /// Windows: no reserved characters (`<>:"|?*\` and control
    /// characters), no device names (`CON`, `NUL.txt`…), no trailing dot or
    /// space. Also chosen with `serve --portable-names` for a replica that
    /// Windows will read.
    Windows,
}

impl NameRules {
    /// The rules of the platform this binary runs on.
    pub fn native() -> Self {
        if cfg!(windows) {
            NameRules::Windows
        } else {
            NameRules::Unix
        }
    }

    /// Why a valid component cannot be held by such a replica, if it cannot.
    pub fn refuse(self, name: &str) -> Option<&'static str> {
        match self {
            NameRules::Unix => None,
            NameRules::Windows => windows_refuses(name),
        }
    }
}

/// Why Windows cannot create a file of this name, if it cannot.
fn windows_refuses(name: &str) -> Option<&'static str> {
    const RESERVED: &[&str] = &[
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
        "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    let stem = name
        .split('.')
        .next()
        .unwrap_or("")
        .trim_end()
        .to_ascii_uppercase();
    if RESERVED.contains(&stem.as_str()) {
        Some("a reserved device name on Windows")
    } else if name.ends_with('.') || name.ends_with(' ') {
        Some("Windows cannot hold a name ending in a dot or a space")
    } else if name.contains('\\') {
        Some("'\\' is a path separator on Windows")
    } else if name.chars().any(|c| "<>:\"|?*".contains(c)) {
        Some("Windows cannot hold any of <>:\"|?* in a name")
    } else if name.chars().any(|c| (c as u32) < 32) {
        Some("Windows cannot hold a control character in a name")
    } else {
        None
    }
}

/// Whether a name can be created on Windows.
pub fn windows_can_hold(name: &str) -> bool {
    windows_refuses(name).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_every_escape() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b", "../x"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(validate_name(&"x".repeat(256)), Err(NameError::TooLong));
    }

    #[test]
    fn odd_names_are_ordinary_on_unix() {
        for ok in [
            "a",
            ".hidden",
            "...",
            "a b",
            "naïve.txt",
            "1:2",
            "C:",
            "c:x",
            "colon:name",
            "star*",
            "question?",
            "pipe|",
            "angle<>",
            "back\\slash",
            "\\\\server",
            "trailing.dot.",
            "CON",
            "nul",
            "new\nline",
            &"x".repeat(255),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok:?} refused");
            assert_eq!(NameRules::Unix.refuse(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn windows_rules() {
        for bad in [
            "CON",
            "nul",
            "nul.txt",
            "COM1.log",
            "a?b",
            "trail.",
            "trail ",
            "C:",
            "a\\b",
            "a|b",
            "new\nline",
        ] {
            assert!(NameRules::Windows.refuse(bad).is_some(), "{bad:?}");
            assert!(!windows_can_hold(bad));
        }
        for ok in ["console.txt", "a b", "naïve", ".hidden", "CONSOLE"] {
            assert_eq!(NameRules::Windows.refuse(ok), None, "{ok:?}");
        }
    }
}
