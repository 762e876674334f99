//! The `session` target: see `src/session.rs` (the harness lives in the
//! fuzz crate's library so `examples/` can replay hand-written scenarios).
#![no_main]

use libfuzzer_sys::fuzz_target;
use replica_fuzz::session::{run, Input};

// Typed input: `cargo fuzz fmt session <file>` prints it as an `Input`.
fuzz_target!(|input: Input| run(input));
