//! Segments: the writer cuts the frame stream into segments, each sent raw
//! or as the next piece of one zstd stream; the reader turns segments back
//! into the frame stream, producing decompressed bytes only as the frame
//! layer reads them (a small segment that inflates to gigabytes costs no
//! memory: frame lengths are checked on the decompressed stream).

use super::choice::{Chooser, Sample, Way};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// Largest segment body accepted (checked before reading it).
pub const MAX_SEGMENT: usize = 8 << 20;
/// The writer ends a segment once it holds this much input.
const SEGMENT_INPUT: usize = 1 << 20;
/// Bit 31 of the header: the body is zstd.
const ZSTD_BIT: u32 = 1 << 31;
/// Window of the zstd stream (16 MiB), also the most the reader accepts.
pub const WINDOW_LOG: u32 = 24;
/// Compressed bytes read from the socket at a time.
const READ_PIECE: usize = 128 << 10;

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))
}

/// How a writer decides.
enum Policy {
    Always,
    Auto(Chooser),
}

/// Writes frames as segments.
pub struct SegmentWriter<W> {
    w: W,
    /// The next segment: 4 bytes kept for the header, then frames.
    plain: Vec<u8>,
    out: Vec<u8>,
    cctx: CCtx<'static>,
    policy: Policy,
    /// The way and busy time of the segment emitted last, not yet recorded
    /// (its flush time is added at the flush).
    pending: Option<(Way, Sample)>,
}

impl<W: AsyncWrite + Unpin> SegmentWriter<W> {
    /// Compresses every segment at `level`, or chooses per segment (`auto`).
    /// `window_log` is capped at the window every reader accepts.
    pub fn new(w: W, level: i8, auto: bool, window_log: u32) -> io::Result<Self> {
        let mut cctx = CCtx::create();
        cctx.set_parameter(CParameter::CompressionLevel(level.into()))
            .map_err(zstd_error)?;
        cctx.set_parameter(CParameter::WindowLog(window_log.min(WINDOW_LOG)))
            .map_err(zstd_error)?;
        Ok(SegmentWriter {
            w,
            plain: vec![0; 4],
            out: Vec::new(),
            cctx,
            policy: if auto {
                Policy::Auto(Chooser::default())
            } else {
                Policy::Always
            },
            pending: None,
        })
    }

    /// The way segments go now (outside probes).
    pub fn way(&self) -> Way {
        match &self.policy {
            Policy::Always => Way::Zstd,
            Policy::Auto(c) => c.chosen(),
        }
    }

    /// Adds one frame; sends a segment once enough input is held.
    pub async fn put_frame(&mut self, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
        self.plain.extend_from_slice(&len.to_le_bytes());
        self.plain.extend_from_slice(payload);
        if self.plain.len() - 4 >= self.segment_input() {
            self.emit().await?;
            self.record(Duration::ZERO);
        }
        Ok(())
    }

    /// Sends what is held as a segment, then flushes the stream.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.emit().await?;
        let t = Instant::now();
        self.w.flush().await?;
        self.record(t.elapsed());
        Ok(())
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.w.shutdown().await
    }

    /// Input at which a segment ends: small while `auto` probes.
    fn segment_input(&self) -> usize {
        match &self.policy {
            Policy::Auto(c) if c.probing() => super::choice::PROBE_MIN as usize,
            _ => SEGMENT_INPUT,
        }
    }

    fn record(&mut self, flush: Duration) {
        if let (Some((way, mut s)), Policy::Auto(c)) = (self.pending.take(), &mut self.policy) {
            s.busy += flush;
            c.record(way, s);
        }
    }

    async fn emit(&mut self) -> io::Result<()> {
        let input = self.plain.len() - 4;
        if input == 0 {
            return Ok(());
        }
        let t = Instant::now();
        let way = match &self.policy {
            Policy::Always => Way::Zstd,
            Policy::Auto(c) => c.next(),
        };
        let (output, compressing) = match way {
            Way::Raw => {
                self.plain[..4].copy_from_slice(&(input as u32).to_le_bytes());
                self.w.write_all(&self.plain).await?;
                (input, Duration::ZERO)
            }
            Way::Zstd => {
                self.compress()?;
                let compressing = t.elapsed();
                self.w.write_all(&self.out).await?;
                (self.out.len() - 4, compressing)
            }
        };
        self.plain.truncate(4);
        let sample = Sample {
            input: input as u64,
            output: output as u64,
            compressing,
            busy: t.elapsed(),
        };
        self.pending = Some((way, sample));
        Ok(())
    }

    /// Compresses `plain` into `out` as one header and body, flushing the
    /// zstd stream so the reader can decode all of it.
    fn compress(&mut self) -> io::Result<()> {
        let input = &self.plain[4..];
        self.out.clear();
        self.out.extend_from_slice(&[0; 4]);
        self.out
            .reserve(zstd_safe::compress_bound(input.len()) + 64);
        let mut inb = InBuffer::around(input);
        loop {
            let at = self.out.len();
            let mut outb = OutBuffer::around_pos(&mut self.out, at);
            let left = self
                .cctx
                .compress_stream2(
                    &mut outb,
                    &mut inb,
                    zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
                )
                .map_err(zstd_error)?;
            if left == 0 && inb.pos() == input.len() {
                break;
            }
            self.out.reserve(left.max(4096));
        }
        let body = self.out.len() - 4;
        if body > MAX_SEGMENT {
            return Err(io::Error::other("compressed segment over the limit"));
        }
        self.out[..4].copy_from_slice(&(body as u32 | ZSTD_BIT).to_le_bytes());
        Ok(())
    }
}

/// Where a reader is in the segment stream.
enum State {
    /// Reading a header; `got` bytes of it so far.
    Header { got: usize },
    /// In a raw body, `left` bytes to go.
    Raw { left: usize },
    /// In a zstd body, `left` bytes not read from the socket yet.
    Zstd { left: usize },
}

/// Reads segments, yielding the frame stream.
pub struct SegmentReader<R> {
    r: R,
    state: State,
    header: [u8; 4],
    dctx: DCtx<'static>,
    /// Compressed bytes read but not yet decoded: `input[pos..]`.
    input: Vec<u8>,
    pos: usize,
}

impl<R: AsyncRead + Unpin> SegmentReader<R> {
    pub fn new(r: R) -> io::Result<Self> {
        let mut dctx = DCtx::create();
        dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG))
            .map_err(zstd_error)?;
        Ok(SegmentReader {
            r,
            state: State::Header { got: 0 },
            header: [0; 4],
            dctx,
            input: Vec::new(),
            pos: 0,
        })
    }

    /// Starts the segment whose header was just read.
    fn begin(&mut self) -> io::Result<()> {
        let h = u32::from_le_bytes(self.header);
        let len = (h & !ZSTD_BIT) as usize;
        if len > MAX_SEGMENT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment of {len} bytes exceeds the {MAX_SEGMENT}-byte limit"),
            ));
        }
        self.state = if h & ZSTD_BIT != 0 {
            State::Zstd { left: len }
        } else {
            State::Raw { left: len }
        };
        Ok(())
    }

    /// Decodes into `buf`; returns how many bytes it produced.
    fn decode(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
        let room = buf.initialize_unfilled();
        let mut outb = OutBuffer::around(room);
        let mut inb = InBuffer::around(&self.input[self.pos..]);
        self.dctx
            .decompress_stream(&mut outb, &mut inb)
            .map_err(|c| io::Error::new(io::ErrorKind::InvalidData, zstd_error(c)))?;
        let (made, used) = (outb.pos(), inb.pos());
        self.pos += used;
        buf.advance(made);
        Ok(made)
    }

    fn poll_zstd(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        left: usize,
    ) -> Poll<io::Result<bool>> {
        loop {
            let before = self.pos;
            if self.decode(buf)? > 0 {
                return Poll::Ready(Ok(true));
            }
            if self.pos > before {
                continue;
            }
            if self.pos < self.input.len() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "zstd segment that decodes to nothing",
                )));
            }
            // Nothing more comes out of what was read: read more, or the
            // segment is over.
            if left == 0 {
                if self.pos < self.input.len() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "zstd segment with bytes after its end",
                    )));
                }
                self.state = State::Header { got: 0 };
                return Poll::Ready(Ok(false));
            }
            self.input.clear();
            self.pos = 0;
            self.input.resize(left.min(READ_PIECE), 0);
            let mut rb = ReadBuf::new(&mut self.input);
            let r = Pin::new(&mut self.r).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            self.input.truncate(n);
            ready!(r)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.state = State::Zstd { left: left - n };
            return Poll::Ready(Ok(false));
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SegmentReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match me.state {
                State::Header { got } => {
                    let mut rb = ReadBuf::new(&mut me.header[got..]);
                    ready!(Pin::new(&mut me.r).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(if got == 0 {
                            Ok(())
                        } else {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        });
                    }
                    if got + n == 4 {
                        me.begin()?;
                    } else {
                        me.state = State::Header { got: got + n };
                    }
                }
                State::Raw { left: 0 } => me.state = State::Header { got: 0 },
                State::Raw { left } => {
                    let mut limited = buf.take(left);
                    ready!(Pin::new(&mut me.r).poll_read(cx, &mut limited))?;
                    let n = limited.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    // SAFETY: `limited` borrows the unfilled part of `buf`
                    // and the read filled (initialised) its first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    me.state = State::Raw { left: left - n };
                    return Poll::Ready(Ok(()));
                }
                State::Zstd { left } => {
                    if ready!(me.poll_zstd(cx, buf, left))? {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn round_trip(level: i8, auto: bool, frames: &[Vec<u8>]) -> (Vec<u8>, usize) {
        let mut wire = Vec::new();
        let mut w = SegmentWriter::new(&mut wire, level, auto, WINDOW_LOG).unwrap();
        let mut plain = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            w.put_frame(f).await.unwrap();
            plain.extend_from_slice(&(f.len() as u32).to_le_bytes());
            plain.extend_from_slice(f);
            if i % 3 == 2 {
                w.flush().await.unwrap();
            }
        }
        w.shutdown().await.unwrap();
        let n = wire.len();
        let mut back = Vec::new();
        SegmentReader::new(&wire[..])
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert_eq!(back, plain);
        (back, n)
    }

    fn frames() -> Vec<Vec<u8>> {
        let mut x = 7u64;
        (0..40)
            .map(|i| {
                let len = [0, 1, 100, 5000, 300_000, 2 << 20][i % 6];
                (0..len)
                    .map(|j| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        if j % 3 == 0 {
                            (x >> 56) as u8
                        } else {
                            b'a' + (j % 7) as u8
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[tokio::test]
    async fn segments_round_trip_compressed_and_auto() {
        let f = frames();
        let total: usize = f.iter().map(|f| f.len() + 4).sum();
        let (_, fixed) = round_trip(3, false, &f).await;
        assert!(fixed < total * 3 / 4, "{fixed} of {total}");
        round_trip(19, false, &f[..8]).await;
        round_trip(3, true, &f).await;
    }

    #[tokio::test]
    async fn a_raw_segment_reads_back_in_small_pieces() {
        let mut wire = 10u32.to_le_bytes().to_vec();
        wire.extend_from_slice(b"0123456789");
        let mut r = SegmentReader::new(&wire[..]).unwrap();
        let mut one = [0u8; 3];
        let mut got = Vec::new();
        loop {
            let n = r.read(&mut one).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&one[..n]);
        }
        assert_eq!(got, b"0123456789");
    }

    #[tokio::test]
    async fn oversized_and_truncated_segments_are_refused() {
        let big = ((MAX_SEGMENT + 1) as u32).to_le_bytes();
        let mut out = Vec::new();
        let e = SegmentReader::new(&big[..])
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        let mut cut = (10u32 | ZSTD_BIT).to_le_bytes().to_vec();
        cut.extend_from_slice(&[1, 2, 3]);
        assert!(SegmentReader::new(&cut[..])
            .unwrap()
            .read_to_end(&mut out)
            .await
            .is_err());
        let garbage = [(4u32 | ZSTD_BIT).to_le_bytes(), [9, 9, 9, 9]].concat();
        assert!(SegmentReader::new(&garbage[..])
            .unwrap()
            .read_to_end(&mut out)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_small_segment_inflating_hugely_yields_as_read() {
        // 64 MiB of zeros compress to a few KiB; reading 4 KiB of it must
        // not decode the rest.
        let mut wire = Vec::new();
        let mut w = SegmentWriter::new(&mut wire, 3, false, WINDOW_LOG).unwrap();
        let zeros = vec![0u8; 4 << 20];
        for _ in 0..16 {
            w.put_frame(&zeros[..(4 << 20) - 4]).await.unwrap();
        }
        w.shutdown().await.unwrap();
        assert!(wire.len() < 64 << 10, "{}", wire.len());
        let mut r = SegmentReader::new(&wire[..]).unwrap();
        let mut head = [0u8; 4096];
        r.read_exact(&mut head).await.unwrap();
        assert_eq!(&head[..4], &((4u32 << 20) - 4).to_le_bytes());
    }
}
