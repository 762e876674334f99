//! Messages: arbitrary bytes through `decode` for every message type the
//! wire carries. Whatever decodes must re-encode (without panicking) to
//! bytes that decode to an equal value, and re-encoding that is stable.
//! Decoded hard links and extended attributes also go through the server's
//! checks (`tree::Extras`), which must refuse or accept without panicking;
//! the input, as the data of a `Packed` message, goes through the server's
//! unpacker (`transport::packed`), which must refuse or unpack within its
//! bounds without panicking.
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
    let mut extras = replica::tree::Extras::default();
    match decode::<ClientMsg>(data) {
        Ok(ClientMsg::Links(links)) => {
            if extras.add_links(links, 64).is_ok() {
                let _ = extras.validate(&replica::tree::Manifest::default());
            }
        }
        Ok(ClientMsg::Xattrs(list)) => {
            let _ = extras.add_xattrs(list, 64);
        }
        _ => {}
    }
    let mut unpacker = replica::transport::packed::Unpacker::default();
    if let Ok(msgs) = unpacker.unpack(ClientMsg::Packed {
        data: data.to_vec(),
    }) {
        assert!(!msgs.is_empty(), "a packed message unpacked to nothing");
    }
});
