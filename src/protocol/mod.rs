//! The wire protocol, in two layers: [`frame`] (length-prefixed byte
//! frames, size checked before allocation) and [`message`] (typed requests
//! and responses, serialised with postcard). PROTOCOL.md describes both.

pub mod frame;
pub mod message;

pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME};
pub use message::*;
