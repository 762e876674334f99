//! Content squeezed harder than the link: the client's messages that carry
//! file content ([`ClientMsg::ChunkDelta`], and [`ClientMsg::Chunk`] /
//! [`ClientMsg::Chunks`] of at most [`PACK_MAX`] bytes) travel as
//! [`ClientMsg::Packed`]: each run of them in a batch the writer sends is
//! the next piece of one zstd stream of their own, at level [`LEVEL`],
//! flushed after each run, spanning the connection.
//!
//! Why: a changed source file's literals are what an upgrade really costs;
//! they are a small share of the bytes a pass moves but most of what it
//! sends. Through the link's stream (level 3 under `--compress 3` or
//! `auto`) they compress as well as the manifest does; at level 19 with
//! only other content as context they shrink by another 20 % (tokio and
//! libc upgrades, bench/RESULTS.md, issue 15). The CPU is bounded: at most
//! [`BUDGET`] input bytes per pass go through this stream, the rest through
//! the link's as before.
//!
//! The writer task packs and the reader task unpacks, each in the order the
//! messages cross the socket, so both ends of the stream always see the
//! same messages whatever the session does with them (a file given up
//! still had its messages unpacked). Nothing is packed with
//! `--compress off` or over an in-process link (no bytes travel there).

use crate::protocol::{decode, encode, ClientMsg, DecodeError, ServerMsg, MAX_FRAME};
use zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// The level content is packed at.
pub const LEVEL: i32 = 19;
/// The packed stream's window (4 MiB), also the most an unpacker accepts.
pub const WINDOW_LOG: u32 = 22;
/// The packer's own window (1 MiB, a pass's [`BUDGET`]) and match-finder
/// tables (2 + 2 MiB), far smaller than level 19's defaults (8 MiB window,
/// 64 + 16 MiB tables): with a 4 MiB window and 22/21 the client of a
/// 50k-file initial sync peaked ~30 MB higher (issue 18's memory figures).
const PACK_WINDOW_LOG: u32 = 20;
const CHAIN_LOG: u32 = 19;
const HASH_LOG: u32 = 19;
/// Most input bytes packed per pass (level 19 runs at a few MB/s: at
/// 4 MiB a first copy of a tree of small files paid ~4 s of client CPU;
/// a crate upgrade's changed content is well under 1 MiB).
pub const BUDGET: u64 = 1 << 20;
/// Largest chunk message packed: whole chunks above this are large files'
/// content, left to the link's own compression.
pub const PACK_MAX: usize = 128 << 10;

/// What a connection's writer does to each batch of outgoing messages,
/// and its reader to each incoming one.
pub trait Pack: Sized {
    /// The batch as it goes on the wire.
    fn pack(batch: Vec<Self>, _packer: &mut Packer) -> Vec<Self> {
        batch
    }
    /// What the peer sent as this message (one message, or a packed run).
    fn unpack(self, _unpacker: &mut Unpacker) -> Result<Vec<Self>, DecodeError> {
        Ok(vec![self])
    }
}

impl Pack for ServerMsg {}

impl Pack for ClientMsg {
    fn pack(batch: Vec<Self>, packer: &mut Packer) -> Vec<Self> {
        packer.pack(batch)
    }
    fn unpack(self, unpacker: &mut Unpacker) -> Result<Vec<Self>, DecodeError> {
        unpacker.unpack(self)
    }
}

/// Whether a message is content a `Packed` may hold.
fn is_content(m: &ClientMsg) -> bool {
    match m {
        ClientMsg::ChunkDelta { .. } => true,
        ClientMsg::Chunk { data, .. } | ClientMsg::Chunks { data, .. } => data.len() <= PACK_MAX,
        _ => false,
    }
}

/// Whether content is worth level 19: whole chunks that zstd level 1
/// cannot shrink by a tenth on their own (random, already compressed) are
/// left to the link (level 19 would spend about 0.2 s per MiB on them for
/// nothing; level 1 checks a MiB in a few milliseconds).
fn worth_packing(m: &ClientMsg) -> bool {
    match m {
        ClientMsg::Chunk { data, .. } | ClientMsg::Chunks { data, .. } => {
            zstd::bulk::compress(data, 1).is_ok_and(|z| z.len() * 10 < data.len() * 9)
        }
        _ => is_content(m),
    }
}

/// The bytes [`worth_packing`] compressed to decide.
fn trial_len(m: &ClientMsg) -> u64 {
    match m {
        ClientMsg::Chunk { data, .. } | ClientMsg::Chunks { data, .. } => data.len() as u64,
        _ => 0,
    }
}

/// Most input bytes in one packed message (a run of content messages).
pub const RUN_MAX: usize = 1 << 20;

/// The sending end of the packed stream (created on first use).
#[derive(Default)]
pub struct Packer {
    cctx: Option<CCtx<'static>>,
    /// Input bytes still allowed in this pass.
    left: u64,
    /// zstd failed mid-frame (out of memory): nothing more is packed on
    /// this connection, since the unpacker still expects that frame.
    broken: bool,
}

/// Consecutive content messages of a batch, encoded as frames (length,
/// payload) to be packed together: one flush for the run, not one per
/// message (each flush ends a zstd block and its entropy tables).
#[derive(Default)]
struct Run {
    frames: Vec<u8>,
    msgs: Vec<ClientMsg>,
}

impl Packer {
    /// The batch as it should travel: runs of consecutive content messages
    /// within the budget become one [`ClientMsg::Packed`] each; every other
    /// message keeps its place.
    pub fn pack(&mut self, batch: Vec<ClientMsg>) -> Vec<ClientMsg> {
        let mut out = Vec::with_capacity(batch.len());
        let mut run = Run::default();
        for m in batch {
            if matches!(m, ClientMsg::BeginPass(_)) {
                self.end_run(&mut run, &mut out);
                self.left = if self.broken { 0 } else { BUDGET };
            }
            if !is_content(&m) || self.left == 0 {
                // Not content, or this pass's budget is spent.
                self.end_run(&mut run, &mut out);
                out.push(m);
                continue;
            }
            if !worth_packing(&m) {
                // The trial is charged to the budget too: a tree of
                // incompressible files is not tried chunk by chunk.
                self.left = self.left.saturating_sub(trial_len(&m));
                self.end_run(&mut run, &mut out);
                out.push(m);
                continue;
            }
            let raw = encode(&m);
            if run.frames.len() + raw.len() + 4 > RUN_MAX {
                self.end_run(&mut run, &mut out);
            }
            let last = (run.frames.len() + raw.len() + 4) as u64 >= self.left;
            run.frames
                .extend_from_slice(&(raw.len() as u32).to_le_bytes());
            run.frames.extend_from_slice(&raw);
            run.msgs.push(m);
            if last {
                // The message that spends the budget ends the zstd frame,
                // and the compressor is freed until the next pass (its
                // window and tables are most of what packing costs in
                // memory; the unpacker simply starts a new frame).
                self.end_frame(&mut run, &mut out);
                self.left = 0;
            }
        }
        self.end_run(&mut run, &mut out);
        out
    }

    /// Sends the run packed (or as it is, if zstd fails: out of memory).
    fn end_run(&mut self, run: &mut Run, out: &mut Vec<ClientMsg>) {
        self.send_run(run, out, ZSTD_EndDirective::ZSTD_e_flush);
    }

    /// Sends the run packed as the end of the zstd frame, and frees the
    /// compressor.
    fn end_frame(&mut self, run: &mut Run, out: &mut Vec<ClientMsg>) {
        self.send_run(run, out, ZSTD_EndDirective::ZSTD_e_end);
        self.cctx = None;
    }

    fn send_run(&mut self, run: &mut Run, out: &mut Vec<ClientMsg>, how: ZSTD_EndDirective) {
        if run.msgs.is_empty() {
            return;
        }
        let run = std::mem::take(run);
        match self.squeeze(&run.frames, how) {
            Some(data) => {
                self.left = self.left.saturating_sub(run.frames.len() as u64);
                out.push(ClientMsg::Packed { data });
            }
            // The stream is unusable from now on.
            None => {
                self.left = 0;
                self.broken = true;
                self.cctx = None;
                out.extend(run.msgs);
            }
        }
    }

    fn squeeze(&mut self, raw: &[u8], how: ZSTD_EndDirective) -> Option<Vec<u8>> {
        if self.cctx.is_none() {
            self.cctx = Some(new_cctx()?);
        }
        let cctx = self.cctx.as_mut()?;
        let mut out = vec![0u8; zstd_safe::compress_bound(raw.len()) + 64];
        let mut input = InBuffer::around(raw);
        let mut at = 0;
        loop {
            let mut ob = OutBuffer::around(&mut out[at..]);
            let left = cctx.compress_stream2(&mut ob, &mut input, how).ok()?;
            at += ob.pos();
            if left == 0 {
                out.truncate(at);
                return Some(out);
            }
            if at == out.len() {
                out.resize(out.len() * 2, 0);
            }
        }
    }
}

fn new_cctx() -> Option<CCtx<'static>> {
    let mut c = CCtx::try_create()?;
    for p in [
        CParameter::CompressionLevel(LEVEL),
        CParameter::WindowLog(PACK_WINDOW_LOG),
        CParameter::ChainLog(CHAIN_LOG),
        CParameter::HashLog(HASH_LOG),
    ] {
        c.set_parameter(p).ok()?;
    }
    Some(c)
}

/// The receiving end of the packed stream (created on first use).
#[derive(Default)]
pub struct Unpacker {
    dctx: Option<DCtx<'static>>,
}

fn bad(why: impl std::fmt::Display) -> DecodeError {
    DecodeError::Undecodable(format!("packed message: {why}"))
}

impl Unpacker {
    /// What the peer sent as `m`: a packed message is unpacked into the
    /// content messages it holds (frames of at most [`MAX_FRAME`] bytes in
    /// all, each a content message).
    pub fn unpack(&mut self, m: ClientMsg) -> Result<Vec<ClientMsg>, DecodeError> {
        let ClientMsg::Packed { data } = m else {
            return Ok(vec![m]);
        };
        let raw = self.expand(&data)?;
        let mut msgs = Vec::new();
        let mut rest = &raw[..];
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return Err(bad("a frame's length is cut"));
            };
            let len = u32::from_le_bytes(*len) as usize;
            if len > tail.len() {
                return Err(bad("a frame is cut"));
            }
            let inner: ClientMsg = decode(&tail[..len])?;
            if !is_content(&inner) {
                return Err(bad(format!("holds {}, not content", inner.name())));
            }
            msgs.push(inner);
            rest = &tail[len..];
        }
        if msgs.is_empty() {
            return Err(bad("holds no message"));
        }
        Ok(msgs)
    }

    /// The bytes one flushed piece of the stream stands for, refused as
    /// soon as they pass [`MAX_FRAME`] (a bomb never grows memory further).
    fn expand(&mut self, data: &[u8]) -> Result<Vec<u8>, DecodeError> {
        if self.dctx.is_none() {
            let mut d = DCtx::try_create().ok_or_else(|| bad("out of memory"))?;
            d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG))
                .map_err(|c| bad(zstd_safe::get_error_name(c)))?;
            self.dctx = Some(d);
        }
        let dctx = self.dctx.as_mut().expect("created above");
        let mut out = vec![0u8; (data.len() * 4).clamp(4096, MAX_FRAME + 1)];
        let mut input = InBuffer::around(data);
        let mut at = 0;
        loop {
            let mut ob = OutBuffer::around(&mut out[at..]);
            let before = input.pos();
            dctx.decompress_stream(&mut ob, &mut input)
                .map_err(|c| bad(zstd_safe::get_error_name(c)))?;
            let made = ob.pos();
            at += made;
            if made == 0 && input.pos() == before && at < out.len() {
                return Err(bad("truncated"));
            }
            if at > MAX_FRAME {
                return Err(bad(format!("over {MAX_FRAME} bytes")));
            }
            if at < out.len() {
                if input.pos() == data.len() {
                    out.truncate(at);
                    return Ok(out);
                }
                continue;
            }
            let grown = (out.len() * 2).min(MAX_FRAME + 1);
            out.resize(grown, 0);
        }
    }
}

#[cfg(test)]
mod tests;
