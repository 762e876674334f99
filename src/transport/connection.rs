//! The carrier of a [`Link`]: one owner per socket. Two tasks own the stream, a reader
//! that turns frames into messages and a writer that turns messages into
//! frames (batched, then flushed when the queue runs dry); session logic
//! talks to them through channels, so it can be plain blocking code.
//!
//! Zero-length frames are keep-alives: the writer sends one after
//! [`KEEPALIVE`] of silence, the reader drops the link after [`IDLE_LIMIT`]
//! without any frame.

use super::compress::{SegmentReader, SegmentWriter};
use super::packed::{Pack, Packer, Unpacker};
use crate::protocol::frame::FrameError;
use crate::protocol::Compress;
use crate::protocol::{decode, encode, read_frame, write_frame};
pub use crate::session::link::{link_pair, Counters, Link};
use crate::session::link::{Broken, LinkError};
use serde::{de::DeserializeOwned, Serialize};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::mpsc;

pub const KEEPALIVE: Duration = Duration::from_secs(10);
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// How long the writer waits for more messages before flushing a batch.
const LINGER: Duration = Duration::from_millis(1);
/// Longest a written message waits for its flush.
const MAX_HOLD: Duration = Duration::from_millis(10);

/// Anything a link can run over: TCP, TLS, or an in-process pipe.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {}

pub type BoxStream = Box<dyn AsyncStream>;

/// A stream wrapper that counts bytes read and written.
pub struct Counted<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counters: Arc<Counters>) -> Self {
        Counted { inner, counters }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counters
            .received
            .fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sends one handshake message (uncompressed) and flushes.
pub async fn send_plain<T: Serialize>(s: &mut BoxStream, msg: &T) -> std::io::Result<()> {
    write_frame(s, &encode(msg))
        .await
        .map_err(std::io::Error::other)?;
    s.flush().await
}

/// Largest handshake message accepted (before authentication).
pub const MAX_HELLO: usize = 64 * 1024;

/// Whether a frame length is really the start of an HTTP request or
/// reply (`GET `, `POST`, `HTTP`) read as one.
fn speaks_http(len: u64) -> bool {
    [*b"GET ", *b"POST", *b"HEAD", *b"HTTP"]
        .iter()
        .any(|w| u64::from(u32::from_le_bytes(*w)) == len)
}

/// Reads one handshake message (uncompressed), within `limit`.
pub async fn recv_plain<T: DeserializeOwned>(
    s: &mut BoxStream,
    limit: Duration,
) -> Result<T, LinkError> {
    let mut buf = Vec::new();
    match tokio::time::timeout(
        limit,
        crate::protocol::frame::read_frame_max(s, &mut buf, MAX_HELLO),
    )
    .await
    {
        Err(_) => Err(LinkError::HandshakeTimeout),
        Ok(Err(FrameError::TooLarge(n))) if speaks_http(n) => Err(LinkError::Http),
        Ok(Err(e)) => Err(LinkError::Frame(e.to_string())),
        Ok(Ok(false)) => Err(LinkError::ClosedInHandshake),
        Ok(Ok(true)) => decode(&buf).map_err(LinkError::Decode),
    }
}

/// How deep each side's queues are.
#[derive(Debug, Clone, Copy)]
pub struct LinkCaps {
    pub outgoing: usize,
    pub incoming: usize,
    /// Window of the zstd stream this side sends (log2 bytes, at most the
    /// 16 MiB every reader accepts): a side that sends only requests and
    /// reports needs little history, and the window is most of the
    /// compressor's memory.
    pub send_window_log: u32,
}

/// Starts the reader and writer tasks on `stream` (after the handshake).
pub fn spawn_link<Out, In>(
    stream: BoxStream,
    compress: Compress,
    caps: LinkCaps,
    counters: Arc<Counters>,
    peer: String,
) -> Link<Out, In>
where
    Out: Serialize + Pack + Send + 'static,
    In: DeserializeOwned + Pack + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel::<Vec<Out>>(caps.outgoing);
    let (in_tx, in_rx) = mpsc::channel::<Vec<In>>(caps.incoming);
    let broken = Arc::new(std::sync::Mutex::new(None));
    let (r, w) = tokio::io::split(stream);
    let level = match compress {
        Compress::Off => None,
        Compress::Level(n) => Some((n, false)),
        Compress::Auto => Some((Compress::AUTO_LEVEL, true)),
    };
    let r = BufReader::with_capacity(256 * 1024, r);
    let writer = match level {
        Some((n, auto)) => {
            // Levels are checked at the hello (1..=19); zstd accepts those
            // and the window, so neither can fail.
            let r = SegmentReader::new(r).expect("zstd decoder parameters");
            let w = SegmentWriter::new(w, n, auto, caps.send_window_log)
                .expect("zstd level 1..=19, window within the reader's");
            tokio::spawn(read_loop(r, in_tx, broken.clone()));
            tokio::spawn(write_loop(
                Sink::Segments(w),
                Some(Packer::default()),
                out_rx,
            ))
        }
        None => {
            tokio::spawn(read_loop(r, in_tx, broken.clone()));
            let w = tokio::io::BufWriter::with_capacity(256 * 1024, w);
            tokio::spawn(write_loop(Sink::Plain(w), None, out_rx))
        }
    };
    Link::new(out_tx, in_rx, broken, counters, peer, Some(writer))
}

/// Where the writer puts frames: plainly, or cut into segments.
enum Sink<W> {
    Plain(tokio::io::BufWriter<W>),
    Segments(SegmentWriter<W>),
}

impl<W: AsyncWrite + Unpin> Sink<W> {
    async fn put(&mut self, payload: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => write_frame(w, payload).await.map_err(std::io::Error::other),
            Sink::Segments(w) => w.put_frame(payload).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush().await,
            Sink::Segments(w) => w.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.shutdown().await,
            Sink::Segments(w) => w.shutdown().await,
        }
    }
}

/// Writes a batch of messages; `packer` (compressed connections) packs
/// content messages first (`transport::packed`).
async fn write_all<W: AsyncWrite + Unpin, Out: Serialize + Pack>(
    w: &mut Sink<W>,
    packer: &mut Option<Packer>,
    batch: Vec<Out>,
) -> bool {
    let batch = match packer {
        Some(p) => Out::pack(batch, p),
        None => batch,
    };
    for m in batch {
        let payload = encode(&m);
        wire_dump::record::<Out>(&payload);
        if w.put(&payload).await.is_err() {
            return false;
        }
    }
    true
}

/// A measuring aid: with `REPLICA_WIRE_DUMP=DIR` set, every frame this
/// process sends is appended (as a frame: length, payload) to
/// `DIR/<pid>-<message type>-<variant index>.bin`, so the bytes each kind
/// of message costs can be counted, and compressed per kind offline
/// (`zstd -3`). Unset, it costs one check of a cached flag per frame.
mod wire_dump {
    use std::io::Write;
    use std::sync::OnceLock;

    fn dir() -> Option<&'static std::path::Path> {
        static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
        DIR.get_or_init(|| std::env::var_os("REPLICA_WIRE_DUMP").map(Into::into))
            .as_deref()
    }

    pub(super) fn record<T>(payload: &[u8]) {
        let Some(dir) = dir() else { return };
        let ty = std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("?");
        // postcard writes an enum's variant index first (one byte below 128).
        let variant = payload.first().copied().unwrap_or(255);
        let path = dir.join(format!("{}-{ty}-{variant:02}.bin", std::process::id()));
        let mut f = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(_) => return,
        };
        let _ = f.write_all(&(payload.len() as u32).to_le_bytes());
        let _ = f.write_all(payload);
    }
}

async fn write_loop<W: AsyncWrite + Unpin, Out: Serialize + Pack>(
    mut w: Sink<W>,
    mut packer: Option<Packer>,
    mut rx: mpsc::Receiver<Vec<Out>>,
) {
    loop {
        let first = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Err(_) => {
                if w.put(&[]).await.is_err() || w.flush().await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => break,
            Ok(Some(m)) => m,
        };
        if !write_all(&mut w, &mut packer, first).await {
            return;
        }
        // Batch what follows closely: every flush ends a compressed block,
        // so flushing per message would cost ratio. Linger briefly for more,
        // but never hold data longer than MAX_HOLD.
        let started = tokio::time::Instant::now();
        let mut closed = false;
        loop {
            while let Ok(m) = rx.try_recv() {
                if !write_all(&mut w, &mut packer, m).await {
                    return;
                }
            }
            if started.elapsed() >= MAX_HOLD {
                break;
            }
            match tokio::time::timeout(LINGER, rx.recv()).await {
                Ok(Some(m)) => {
                    if !write_all(&mut w, &mut packer, m).await {
                        return;
                    }
                }
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if w.flush().await.is_err() || closed {
            break;
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin, In: DeserializeOwned + Pack>(
    mut r: R,
    tx: mpsc::Sender<Vec<In>>,
    broken: Broken,
) {
    let mut buf = Vec::new();
    // Every message passes through, in order, so the packed stream stays
    // in step with the peer's whatever the session does with them.
    let mut unpacker = Unpacker::default();
    let why = loop {
        let got = match tokio::time::timeout(IDLE_LIMIT, read_frame(&mut r, &mut buf)).await {
            Err(_) => Err(LinkError::Idle {
                secs: IDLE_LIMIT.as_secs(),
            }),
            Ok(Err(e)) => Err(LinkError::Frame(e.to_string())),
            Ok(Ok(false)) => Err(LinkError::Closed),
            Ok(Ok(true)) if buf.is_empty() => continue,
            Ok(Ok(true)) => decode::<In>(&buf)
                .and_then(|m| m.unpack(&mut unpacker))
                .map_err(LinkError::Decode),
        };
        match got {
            Ok(m) => {
                // Hand over one message (or one packed run) at a time while
                // the session keeps up; when it lags, `recv` drains the
                // queue in order anyway.
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            Err(e) => break e,
        }
    };
    *broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    // Dropping `tx` now wakes the receiver, which then reads `broken`.
}
