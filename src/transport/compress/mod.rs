//! `--compress`: how a link's byte stream is compressed after the
//! handshake.
//!
//! With `Level` and `Auto` each direction is a sequence of *segments*
//! ([`segments`]): a `u32` little-endian header (bit 31 set for zstd, the
//! low 31 bits the length of what follows, at most [`segments::MAX_SEGMENT`];
//! bit 30 alone marks an 8-byte acknowledgement under `Auto`)
//! and then either the frames' bytes as they are, or the next piece of one
//! continuous zstd stream (flushed at the segment's end, so the reader can
//! decode all of it). The zstd context spans segments and files. With
//! `Auto`, [`choice`] picks zstd or raw per segment by throughput measured end
//! to end: each side acknowledges the frame bytes it has read ([`acks`]).

pub mod acks;
pub mod choice;
pub mod segments;

pub use acks::Acks;
pub use choice::{Chooser, Sample, Way};
pub use segments::{SegmentReader, SegmentWriter};
