//! The status address over HTTP/1.1 (hyper): the live page and its two
//! assets, `/status` (JSON) and `/metrics` (Prometheus).
//!
//! Bounds, as before hyper: a request head of at most 8 KiB read within
//! 5 s, one request per connection, 10 s for a whole connection, at most
//! [`MAX_HTTP_CONNECTIONS`] at once (more are closed at once). Only `GET`
//! and `HEAD`; a body is never read. The page loads nothing from outside:
//! its content security policy allows only this address.

use super::ServerStats;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Largest request head accepted (hyper's smallest buffer limit).
pub const MAX_HEAD: usize = 8192;
/// Time a client has to send its request head.
pub const HEAD_LIMIT: Duration = Duration::from_secs(5);
/// Time a whole connection may take.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_HTTP_CONNECTIONS: usize = 32;

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");
/// Nothing but this address: no outside script, style, font or image.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Serves the status address until `shutdown` resolves.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    stats: Arc<ServerStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            acc = listener.accept() => {
                let Ok((tcp, _)) = acc else { continue };
                // Over the cap, the connection is closed unanswered.
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let stats = stats.clone();
                tokio::spawn(async move {
                    serve_connection(tcp, stats).await;
                    drop(slot);
                });
            }
        }
    }
}

/// Answers one request on `stream` (a TCP connection; any byte stream in
/// the fuzz target), within [`CONNECTION_LIMIT`].
pub async fn serve_connection<S>(stream: S, stats: Arc<ServerStats>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let stats = stats.clone();
        async move { Ok::<_, Infallible>(respond(&req, &stats)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_LIMIT)
        .keep_alive(false)
        .serve_connection(io, service);
    // Errors (a malformed or oversized head, a client gone) end only this
    // connection; hyper has already answered what deserves an answer.
    let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
}

/// The answer to one request.
pub fn respond<B>(req: &Request<B>, stats: &ServerStats) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let (ctype, body) = match req.uri().path() {
        "/" | "/index.html" => ("text/html; charset=utf-8", PAGE.to_string()),
        "/app.js" => ("text/javascript; charset=utf-8", SCRIPT.to_string()),
        "/app.css" => ("text/css; charset=utf-8", STYLE.to_string()),
        "/status" => ("application/json", stats.live().to_json()),
        "/metrics" => (
            "text/plain; version=0.0.4",
            stats.snapshot().to_prometheus(),
        ),
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "try / (the live page), /status or /metrics\n",
            )
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if ctype.starts_with("text/html") {
        h.insert(
            "content-security-policy",
            HeaderValue::from_static(PAGE_POLICY),
        );
    }
    r
}

fn plain(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Response<Full<Bytes>> {
        let req = Request::get(path).body(()).unwrap();
        respond(&req, &ServerStats::default())
    }

    #[test]
    fn routes() {
        assert_eq!(get("/").status(), StatusCode::OK);
        assert_eq!(get("/status").status(), StatusCode::OK);
        assert_eq!(get("/metrics").status(), StatusCode::OK);
        assert_eq!(get("/app.js").status(), StatusCode::OK);
        assert_eq!(get("/nowhere").status(), StatusCode::NOT_FOUND);
        let post = Request::post("/status").body(()).unwrap();
        assert_eq!(
            respond(&post, &ServerStats::default()).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn the_page_names_only_its_own_assets() {
        for asset in [PAGE, SCRIPT, STYLE] {
            for outside in ["http://", "https://", "//cdn", "@import"] {
                assert!(!asset.contains(outside), "{outside} in an asset");
            }
        }
        assert!(PAGE.contains("src=\"/app.js\"") && PAGE.contains("href=\"/app.css\""));
        assert!(get("/").headers().get("content-security-policy").is_some());
    }

    /// What `serve_connection` answers to `input` sent whole.
    async fn answer(input: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(serve_connection(server, Arc::new(ServerStats::default())));
        let _ = client.write_all(&input).await;
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        task.await.expect("no panic");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn hostile_requests_get_an_error_or_nothing() {
        let ok = answer(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let garbage = answer(b"\x16\x03\x01 not http at all\r\n\r\n".to_vec()).await;
        assert!(!garbage.contains(" 200 "), "{garbage}");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 3 * MAX_HEAD));
        let big = answer(big).await;
        assert!(!big.contains(" 200 "), "{big}");
    }
}
