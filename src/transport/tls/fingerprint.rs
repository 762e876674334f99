//! Certificate fingerprints: how they print, and how a user may write them.

/// How a fingerprint starts.
const FINGERPRINT_PREFIX: &str = "blake3:";

/// A fingerprint as written by a user that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFingerprint {
    #[error("{0} fingerprints are not supported, only blake3")]
    Algorithm(String),
    #[error("{0:?} is not a hex digit")]
    NotHex(char),
    #[error("{0} hex digits instead of 64")]
    Length(usize),
}

/// Fingerprint of a DER certificate: `blake3:` and 64 lowercase hex digits.
pub fn fingerprint_of(cert_der: &[u8]) -> String {
    format!("{FINGERPRINT_PREFIX}{}", blake3::hash(cert_der).to_hex())
}

/// Parses a fingerprint as a user may write it (any case, optional
/// `blake3:` prefix, `:` and white space between digits ignored) into the
/// form [`fingerprint_of`] prints. The error says what is wrong.
pub fn normalize_fingerprint(s: &str) -> Result<String, BadFingerprint> {
    let s = s.trim();
    let body = match s.split_once(':') {
        // A label is a leading segment that is not hex (hex pairs may also be
        // separated by ':').
        Some((label, rest))
            if !label.is_empty() && !label.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            if !label.eq_ignore_ascii_case("blake3") {
                return Err(BadFingerprint::Algorithm(label.to_string()));
            }
            rest
        }
        _ => s,
    };
    let hex: String = body
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(BadFingerprint::NotHex(bad));
    }
    if hex.len() != 64 {
        return Err(BadFingerprint::Length(hex.len()));
    }
    Ok(format!("{FINGERPRINT_PREFIX}{hex}"))
}
