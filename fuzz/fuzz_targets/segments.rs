//! Segments: arbitrary bytes through `SegmentReader` (raw, zstd and
//! acknowledgement segments, with acknowledgements recorded). It must
//! never panic, never yield more than it is asked for at a time, and
//! count exactly the frame bytes it yielded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replica::transport::compress::{Acks, SegmentReader};
use std::sync::{Arc, OnceLock};
use tokio::io::AsyncReadExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let acks = Arc::new(Acks::default());
        let mut r = SegmentReader::new(data, Some(acks.clone())).expect("decoder");
        let mut piece = [0u8; 4096];
        let mut total = 0u64;
        // A small input can inflate hugely: read a bounded amount.
        while total < 64 << 20 {
            match r.read(&mut piece).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        assert_eq!(acks.read(), total);
        assert!(acks.take().len() <= data.len() / 12);
    });
});
