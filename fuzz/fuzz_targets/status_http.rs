//! The status address: arbitrary bytes as one HTTP connection to
//! `status::http::serve_connection` over a `tokio::io::duplex`, and
//! arbitrary text through `transport::throttle::parse_rate` (`--bwlimit`).
//! No panic; the connection ends (within the server's own time limit) with
//! at most one response, which is a well-formed HTTP/1.1 status line; a
//! rate that parses is at least `MIN_RATE`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replica::status::{http::serve_connection, ServerStats};
use replica::transport::throttle::{parse_rate, MIN_RATE};
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(rate) = parse_rate(text) {
            assert!(rate >= MIN_RATE, "{text:?} parsed to {rate}");
        }
    }
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let stats = Arc::new(ServerStats::default());
        let task = tokio::spawn(serve_connection(server, stats));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        task.await.expect("serve_connection panicked");
        if !out.is_empty() {
            assert!(
                out.starts_with(b"HTTP/1.1 "),
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(&out[..out.len().min(200)])
            );
        }
    });
});
