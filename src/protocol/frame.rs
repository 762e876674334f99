//! Frames: a little-endian `u32` length, then that many bytes of payload.
//! A length over [`MAX_FRAME`] is refused before anything is allocated; a
//! clean end of stream between frames is `Ok(None)`, one inside a frame is
//! an error.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload accepted in one frame.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("{}", describe_read_error(.0))]
    Io(#[from] std::io::Error),
}

/// A read error in words: a peer that vanished mid-stream (rustls reports
/// a missing close_notify with a link to its manual) is just that.
fn describe_read_error(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "connection closed abruptly by the peer".into()
    } else {
        e.to_string()
    }
}

/// Decodes one frame from the front of `buf`, if a whole one is there.
/// Returns the payload and the number of bytes consumed.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len as u64));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((&buf[4..4 + len], 4 + len)))
}

/// Reads one frame into `buf` (reused between calls).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<bool, FrameError> {
    read_frame_max(r, buf, MAX_FRAME).await
}

/// Reads one frame of at most `max` bytes. The buffer grows only as bytes
/// arrive, so a peer that announces a large frame and sends nothing costs
/// nothing.
pub async fn read_frame_max<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len as u64));
    }
    buf.clear();
    (&mut *r).take(len as u64).read_to_end(buf).await?;
    if buf.len() < len {
        return Err(FrameError::Truncated);
    }
    Ok(true)
}

/// Writes one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(payload.len() as u64));
    }
    w.write_all(&(payload.len() as u32).to_le_bytes()).await?;
    w.write_all(payload).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let buf = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(matches!(parse_frame(&buf), Err(FrameError::TooLarge(_))));
    }

    #[tokio::test]
    async fn eof_between_and_inside_frames() {
        let mut empty: &[u8] = &[];
        let mut buf = Vec::new();
        assert!(!read_frame(&mut empty, &mut buf).await.unwrap());
        let mut cut: &[u8] = &[5, 0, 0, 0, 1, 2];
        assert!(matches!(
            read_frame(&mut cut, &mut buf).await,
            Err(FrameError::Truncated)
        ));
        let mut half_len: &[u8] = &[5, 0];
        assert!(matches!(
            read_frame(&mut half_len, &mut buf).await,
            Err(FrameError::Truncated)
        ));
    }

    proptest! {
        #[test]
        fn frames_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut wire = Vec::new();
                for p in &payloads { write_frame(&mut wire, p).await.unwrap(); }
                let mut r: &[u8] = &wire;
                let mut buf = Vec::new();
                for p in &payloads {
                    assert!(read_frame(&mut r, &mut buf).await.unwrap());
                    assert_eq!(&buf, p);
                }
                assert!(!read_frame(&mut r, &mut buf).await.unwrap());
            });
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_frame(&bytes);
        }
    }
}
