//! The client's known-hosts file: `HOST FINGERPRINT` per line, servers
//! trusted on first use.

use super::fingerprint::normalize_fingerprint;
use super::TlsError;
use std::path::Path;
use tokio::io::AsyncWriteExt;

pub(super) fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!("{host:?} cannot be recorded as a host name"));
    }
    Ok(())
}

/// The fingerprints recorded for `host` in a known-hosts text.
pub(super) fn lookup(text: &str, host: &str) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|h| h.eq_ignore_ascii_case(host)) {
            continue;
        }
        let fp = match (words.next(), words.next()) {
            (Some(fp), None) => normalize_fingerprint(fp).map_err(|e| e.to_string()),
            _ => Err("expected HOST FINGERPRINT".into()),
        }
        .map_err(|e| format!("line {} is malformed ({e}); fix or delete it", n + 1))?;
        found.push(fp);
    }
    Ok(found)
}

pub(super) async fn read_known_hosts(path: &Path) -> Result<String, TlsError> {
    match tokio::fs::read_to_string(path).await {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(TlsError::KnownHosts {
            path: path.to_path_buf(),
            reason: format!("cannot read it: {e}"),
        }),
    }
}

/// Appends `host fingerprint` unless another client recorded `host` meanwhile.
pub(super) async fn remember(path: &Path, host: &str, fingerprint: &str) -> Result<(), TlsError> {
    let err = |e: std::io::Error| TlsError::KnownHosts {
        path: path.to_path_buf(),
        reason: format!("cannot record the server: {e}"),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(err)?;
    }
    let text = read_known_hosts(path).await?;
    if lookup(&text, host).is_ok_and(|k| !k.is_empty()) {
        return Ok(());
    }
    let mut line = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        line.push('\n');
    }
    line.push_str(&format!("{host} {fingerprint}\n"));
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(err)?;
    f.write_all(line.as_bytes()).await.map_err(err)?;
    f.sync_all().await.map_err(err)?;
    Ok(())
}
