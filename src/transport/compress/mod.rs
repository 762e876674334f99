//! `--compress`: how a link's byte stream is compressed after the
//! handshake.
//!
//! With `Level` and `Auto` each direction is a sequence of *segments*
//! ([`segments`]): a `u32` little-endian header (bit 31 set for zstd, the
//! low 31 bits the length of what follows, at most [`segments::MAX_SEGMENT`])
//! and then either the frames' bytes as they are, or the next piece of one
//! continuous zstd stream (flushed at the segment's end, so the reader can
//! decode all of it). The zstd context spans segments and files. With
//! `Auto`, [`choice`] picks zstd or raw per segment by measured throughput.

pub mod choice;
pub mod segments;

pub use choice::{Chooser, Sample, Way};
pub use segments::{SegmentReader, SegmentWriter};
