//! The server's status endpoint seen from outside: raw HTTP requests, and
//! what a process read (`/proc/PID/io`).

use std::fs;
use std::time::Duration;

/// `rchar` of `/proc/PID/io`: bytes the process has read through read(2)
/// and friends (files and sockets alike).
#[cfg(target_os = "linux")]
pub fn rchar(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The `status on http://ADDR/status` address a server printed.
pub fn status_addr(server_stdout: &str) -> Option<std::net::SocketAddr> {
    server_stdout.lines().find_map(|l| {
        l.trim()
            .strip_prefix("status on http://")?
            .strip_suffix("/status")?
            .parse()
            .ok()
    })
}

/// A raw HTTP/1.1 GET, the request sent in one write (as curl does);
/// returns (status line, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_request(addr, &[req.as_bytes()])
}

/// Sends a request in the given pieces (a short pause between them, so
/// they reach the server as separate segments) and reads the response;
/// returns (status line, body).
pub fn http_request(addr: std::net::SocketAddr, pieces: &[&[u8]]) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the status endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        s.write_all(piece)
            .unwrap_or_else(|e| panic!("sending request piece {i}: {e}"));
        s.flush().unwrap();
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read the HTTP response");
    let text = String::from_utf8(buf).expect("a UTF-8 HTTP response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body separator in {text:?}"));
    let status = head.lines().next().unwrap_or("").to_string();
    if let Some(len) = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    }) {
        assert_eq!(len, body.len(), "Content-Length does not match the body");
    }
    (status, body.to_string())
}
