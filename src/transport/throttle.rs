//! `--bwlimit`: a token bucket on the bytes a process writes to its
//! sockets. [`Bandwidth`] is the bucket (shared by every connection of one
//! process, so two targets of a `watch` share one limit); [`Throttled`]
//! wraps a stream and lets a write through only as far as the bucket has
//! tokens, sleeping otherwise. Reads are never limited.
//!
//! The bucket starts empty and holds at most a tenth of a second of
//! traffic, so a transfer of N bytes takes at least N ÷ rate seconds and
//! never bursts far above the rate.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Smallest rate accepted (bytes per second): below it a keep-alive or a
/// handshake would take longer than the peer waits.
pub const MIN_RATE: u64 = 1024;

/// Why a `--bwlimit` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("--bwlimit {0:?}: not a rate (write e.g. 500K, 2M or 1G, bytes per second)")]
    Unreadable(String),
    #[error("--bwlimit {0:?}: below the smallest limit, 1K (1024 bytes per second)")]
    TooLow(String),
}

/// Parses `2M` (2 MiB/s), `500K`, `1G`, `1048576` or `1.5M`; an optional
/// trailing `B`, `/s` or `iB` is accepted (`2MiB/s`).
pub fn parse_rate(text: &str) -> Result<u64, RateError> {
    let bad = || RateError::Unreadable(text.to_string());
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(bad()),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    let rate = v * mult as f64;
    if rate < MIN_RATE as f64 {
        return Err(RateError::TooLow(text.to_string()));
    }
    Ok(rate.min(u64::MAX as f64) as u64)
}

/// A token bucket: `rate` bytes per second, at most `capacity` saved up.
/// Tokens may go negative when several writers race; the debt is paid by
/// the next waits.
#[derive(Debug)]
pub struct Bandwidth {
    rate: u64,
    capacity: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

impl Bandwidth {
    /// A bucket of `rate` bytes per second (see [`MIN_RATE`]), empty.
    pub fn new(rate: u64) -> Arc<Bandwidth> {
        let rate = rate.max(1);
        Arc::new(Bandwidth {
            rate,
            capacity: (rate as f64 / 10.0).max(1024.0),
            state: Mutex::new(BucketState {
                tokens: 0.0,
                last: Instant::now(),
            }),
        })
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// How many of `want` bytes may go now, or how long to wait before
    /// asking again.
    fn grant(&self, want: usize) -> Result<usize, Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(s.last).as_secs_f64() * self.rate as f64;
        s.tokens = (s.tokens + earned).min(self.capacity);
        s.last = now;
        // Wait for a worthwhile piece rather than trickling byte by byte.
        let piece = (want as f64).min(self.capacity / 4.0).max(1.0);
        if s.tokens >= piece {
            Ok((s.tokens as usize).min(want).max(1))
        } else {
            Err(Duration::from_secs_f64(
                (piece - s.tokens) / self.rate as f64,
            ))
        }
    }

    fn spend(&self, n: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.tokens -= n as f64;
    }
}

/// A stream whose writes are paced by a [`Bandwidth`].
pub struct Throttled<S> {
    inner: S,
    bucket: Arc<Bandwidth>,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    pub fn new(inner: S, bucket: Arc<Bandwidth>) -> Self {
        Throttled {
            inner,
            bucket,
            wait: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if data.is_empty() {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        loop {
            if let Some(w) = self.wait.as_mut() {
                if w.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            match self.bucket.grant(data.len()) {
                Ok(n) => {
                    let r = Pin::new(&mut self.inner).poll_write(cx, &data[..n]);
                    if let Poll::Ready(Ok(written)) = r {
                        self.bucket.spend(written);
                    }
                    return r;
                }
                Err(pause) => {
                    self.wait = Some(Box::pin(tokio::time::sleep(pause)));
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("2M"), Ok(2 << 20));
        assert_eq!(parse_rate("500K"), Ok(500 << 10));
        assert_eq!(parse_rate("500k"), Ok(500 << 10));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        assert_eq!(parse_rate("1.5M"), Ok(3 << 19));
        assert_eq!(parse_rate("2MiB/s"), Ok(2 << 20));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(matches!(parse_rate("100"), Err(RateError::TooLow(_))));
        assert!(matches!(parse_rate("0"), Err(RateError::TooLow(_))));
        for bad in ["", "fast", "2X", "-1M", "NaNM", "M"] {
            assert!(
                matches!(parse_rate(bad), Err(RateError::Unreadable(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn writes_take_at_least_bytes_over_rate() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut t = Throttled::new(a, Bandwidth::new(256 * 1024));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        let started = Instant::now();
        t.write_all(&vec![7u8; 128 * 1024]).await.unwrap();
        t.shutdown().await.unwrap();
        drop(t);
        assert_eq!(reader.await.unwrap(), 128 * 1024);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
    }
}
