//! Frames: arbitrary bytes through `parse_frame` (consumed frame by frame
//! until it asks for more or refuses) and through `read_frame` over a
//! `&[u8]` reader. Both must agree frame for frame, never return a payload
//! over `MAX_FRAME`, and re-framing what they returned must give back the
//! bytes they consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replica::protocol::frame::{parse_frame, read_frame, write_frame, FrameError, MAX_FRAME};
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// How `parse_frame` stopped.
#[derive(Debug)]
enum End {
    /// `Ok(None)` with this many bytes left over.
    NeedMore(usize),
    TooLarge(u64),
}

fuzz_target!(|data: &[u8]| {
    // 1. parse_frame, consuming frames until incomplete or error.
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut at = 0usize;
    let end = loop {
        match parse_frame(&data[at..]) {
            Ok(Some((payload, used))) => {
                assert!(
                    payload.len() <= MAX_FRAME,
                    "parse_frame returned {} bytes",
                    payload.len()
                );
                assert_eq!(
                    used,
                    4 + payload.len(),
                    "consumed count does not match the payload"
                );
                assert!(used <= data.len() - at, "consumed more than was there");
                assert_eq!(payload, &data[at + 4..at + used]);
                frames.push(payload);
                at += used;
            }
            Ok(None) => {
                let rest = &data[at..];
                if rest.len() >= 4 {
                    let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                    assert!(
                        len <= MAX_FRAME && rest.len() < 4 + len,
                        "Ok(None) for a whole frame"
                    );
                }
                break End::NeedMore(rest.len());
            }
            Err(FrameError::TooLarge(n)) => {
                assert!(n > MAX_FRAME as u64, "TooLarge({n}) is within the limit");
                break End::TooLarge(n);
            }
            Err(e) => panic!("parse_frame on a slice failed with {e:?}"),
        }
    };

    // 2. read_frame over a &[u8] reader must see the same frames, then stop
    //    the same way.
    runtime().block_on(async {
        let mut r: &[u8] = data;
        let mut buf = Vec::new();
        for (i, want) in frames.iter().enumerate() {
            match read_frame(&mut r, &mut buf).await {
                Ok(true) => {
                    assert!(
                        buf.len() <= MAX_FRAME,
                        "read_frame returned {} bytes",
                        buf.len()
                    );
                    assert_eq!(
                        &buf[..],
                        *want,
                        "frame {i} differs between parse_frame and read_frame"
                    );
                }
                other => panic!("frame {i}: parse_frame found one, read_frame gave {other:?}"),
            }
        }
        let last = read_frame(&mut r, &mut buf).await;
        match (&end, last) {
            (End::NeedMore(0), Ok(false)) => {}
            (End::NeedMore(n), Err(FrameError::Truncated)) if *n > 0 => {}
            (End::TooLarge(a), Err(FrameError::TooLarge(b))) if *a == b => {}
            (end, last) => panic!("parse_frame ended with {end:?}, read_frame with {last:?}"),
        }

        // 3. Re-framing the payloads reproduces the consumed bytes.
        let mut wire = Vec::new();
        for f in &frames {
            write_frame(&mut wire, f)
                .await
                .expect("write_frame to a Vec");
        }
        assert_eq!(&wire[..], &data[..at]);
    });
});
