//! A digest that reads ahead: a reader thread fills the next block while
//! the current one is cut and hashed on all cores, so a large file's
//! digest no longer waits for each read (issue 13: on a 2 GiB file the
//! reads were an eighth of the digest, on one thread, with the cores idle).
//!
//! Blocks are read into buffers with room in front for the unconsumed
//! tail of the previous block (at most one chunk), so only that tail is
//! copied, never the block. The result equals [`super::digest_partly`]'s.

use super::{digest_partly, Digest, DigestState, MAX_CHUNK, READ_BLOCK};
use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel};

/// Room kept in front of each block for the previous block's tail (the
/// last, possibly truncated, chunk: at most [`MAX_CHUNK`] bytes).
const ROOM: usize = MAX_CHUNK as usize;

/// Bytes read at a time: half of [`READ_BLOCK`], so the two buffers in
/// turn hold what the one-block digest held (memory must not grow).
const BLOCK: usize = READ_BLOCK / 2;

/// A block as read: its buffer, how many bytes follow [`ROOM`], and
/// whether the input ended there.
type Block = (Vec<u8>, usize, bool);

/// [`super::digest_partly`], reading the next block on a thread of its own
/// while the current one is cut and hashed. Inputs of one block or less
/// are digested as they are (a thread would cost more than it saves).
pub fn digest_ahead<R: Read + Send>(
    r: R,
    size_hint: u64,
    state: DigestState,
    stop: &dyn Fn() -> bool,
) -> io::Result<Result<Digest, DigestState>> {
    if size_hint.saturating_sub(state.offset) <= BLOCK as u64 {
        return digest_partly(r, size_hint, state, stop);
    }
    std::thread::scope(|s| {
        let (full_tx, full) = sync_channel::<io::Result<Block>>(1);
        let (free, free_rx) = channel::<Vec<u8>>();
        for _ in 0..2 {
            let _ = free.send(vec![0u8; ROOM + BLOCK]);
        }
        s.spawn(move || {
            let mut r = r;
            // Ends when the input does, or when the digest stops (its ends
            // of both channels are dropped).
            for mut buf in free_rx {
                let block = fill(&mut r, &mut buf[ROOM..]).map(|(n, eof)| (buf, n, eof));
                let last = !matches!(block, Ok((_, _, false)));
                if full_tx.send(block).is_err() || last {
                    return;
                }
            }
        });
        let mut state = state;
        let mut tail: Vec<u8> = Vec::with_capacity(ROOM);
        loop {
            let block = full
                .recv()
                .expect("the reader sends until the end of the input or an error");
            let (mut buf, n, eof) = block?;
            let start = ROOM - tail.len();
            buf[start..ROOM].copy_from_slice(&tail);
            let data = &buf[start..ROOM + n];
            let consumed = state.take_block(data, eof);
            tail.clear();
            tail.extend_from_slice(&data[consumed..]);
            assert!(tail.len() <= ROOM, "a tail longer than a chunk");
            if eof {
                return Ok(Ok(state.finish()));
            }
            let _ = free.send(buf);
            if stop() {
                // The unconsumed tail is read again on resume.
                return Ok(Err(state));
            }
        }
    })
}

/// Fills `buf` from `r`: how many bytes, and whether the input ended.
fn fill<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok((filled, true)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((filled, false))
}

#[cfg(test)]
mod tests {
    use super::super::tests::noise;
    use super::super::{digest_bytes, DigestState};
    use super::*;

    /// Reading ahead gives the one-go digest, around block boundaries.
    #[test]
    fn reading_ahead_gives_the_same_digest() {
        for len in [
            BLOCK + 1,
            2 * BLOCK,
            2 * BLOCK + ROOM + 17,
            3 * READ_BLOCK + 12_345,
        ] {
            let data = noise(len, len as u64);
            let want = digest_bytes(&data);
            let got = digest_ahead(&data[..], len as u64, DigestState::default(), &|| false)
                .unwrap()
                .unwrap_or_else(|_| panic!("never asked to stop"));
            assert_eq!(got, want, "len {len}");
        }
        // Zeros: every chunk of the largest size, tails of a whole chunk.
        let zeros = vec![0u8; 2 * READ_BLOCK + 5];
        let got = digest_ahead(
            &zeros[..],
            zeros.len() as u64,
            DigestState::default(),
            &|| false,
        )
        .unwrap()
        .unwrap_or_else(|_| panic!("never asked to stop"));
        assert_eq!(got, digest_bytes(&zeros));
    }

    /// Stopping after every block and resuming from the state (as the
    /// client does in watch mode) gives the same digest as one go.
    #[test]
    fn reading_ahead_resumes_where_it_stopped() {
        let data = noise(4 * READ_BLOCK + 999, 5);
        let mut state = DigestState::default();
        let mut stops = 0;
        let d = loop {
            let at = state.offset as usize;
            match digest_ahead(&data[at..], data.len() as u64, state, &|| true).unwrap() {
                Ok(d) => break d,
                Err(s) => {
                    assert!(s.offset as usize > at, "progress every time");
                    stops += 1;
                    state = s;
                }
            }
        };
        assert!(stops >= 2, "{stops}");
        assert_eq!(d, digest_bytes(&data));
    }

    /// A read error ends the digest with that error, the reader stopped.
    #[test]
    fn a_read_error_is_returned() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk gone"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let size = 3 * READ_BLOCK as u64;
        let r = digest_ahead(
            Failing(READ_BLOCK + 10),
            size,
            DigestState::default(),
            &|| false,
        );
        assert_eq!(r.err().map(|e| e.to_string()), Some("disk gone".into()));
    }
}
