//! Validation of one path component received from a peer or found on disk.

/// Longest component accepted, in bytes (the common filesystem limit).
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty path component")]
    Empty,
    #[error("path component {0:?} is not allowed")]
    Dot(String),
    #[error("path component contains a separator: {0:?}")]
    Separator(String),
    #[error("path component contains a NUL byte")]
    Nul,
    #[error("path component is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("path component looks like a drive or device prefix: {0:?}")]
    Prefix(String),
}

/// Accepts exactly one normal path component: not empty, not `.` or `..`, no
/// `/` or `\`, no NUL, no drive prefix such as `C:`, at most 255 bytes.
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
    if name.contains('/') || name.contains('\\') {
        return Err(NameError::Separator(name.into()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return Err(NameError::Prefix(name.into()));
    }
    Ok(())
}

/// Whether a name can be created on Windows (reserved device names, trailing
/// dot or space, reserved characters). Used to report per file on Windows.
pub fn windows_can_hold(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
        "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    let stem = name.split('.').next().unwrap_or("").to_ascii_uppercase();
    !(RESERVED.contains(&stem.as_str())
        || name.ends_with('.')
        || name.ends_with(' ')
        || name
            .chars()
            .any(|c| "<>:\"|?*".contains(c) || (c as u32) < 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_every_trick() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "C:",
            "c:x",
            "a\0b",
            "\\\\server",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(validate_name(&"x".repeat(256)), Err(NameError::TooLong));
    }

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "a",
            ".hidden",
            "...",
            "a b",
            "naïve.txt",
            "1:2",
            &"x".repeat(255),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok:?} refused");
        }
    }

    #[test]
    fn windows_names() {
        assert!(!windows_can_hold("CON"));
        assert!(!windows_can_hold("nul.txt"));
        assert!(!windows_can_hold("a?b"));
        assert!(!windows_can_hold("trail."));
        assert!(windows_can_hold("console.txt"));
    }
}
