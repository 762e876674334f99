//! Messages: arbitrary bytes through `decode` for every message type the
//! wire carries. Whatever decodes must re-encode (without panicking) to
//! bytes that decode to an equal value, and re-encoding that is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replica::protocol::{decode, encode, ClientMsg, Hello, HelloReply, ServerMsg};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(what: &str, data: &[u8]) {
    let Ok(first) = decode::<T>(data) else {
        return;
    };
    let bytes = encode(&first);
    let second = match decode::<T>(&bytes) {
        Ok(m) => m,
        Err(e) => panic!("{what}: re-encoded {first:?} does not decode: {e}"),
    };
    assert_eq!(first, second, "{what}: round trip changed the message");
    assert_eq!(bytes, encode(&second), "{what}: encoding is not stable");
}

fuzz_target!(|data: &[u8]| {
    check::<ClientMsg>("ClientMsg", data);
    check::<ServerMsg>("ServerMsg", data);
    check::<Hello>("Hello", data);
    check::<HelloReply>("HelloReply", data);
});
