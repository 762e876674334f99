//! Speaking the protocol by hand over a raw TCP stream (hostile-peer and
//! handshake tests).

use super::{Server, DEADLINE};
use std::io::{Read, Write};
use std::net::TcpStream;

/// Writes one frame: little-endian u32 length, then the payload.
pub fn write_frame(s: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let mut buf = (payload.len() as u32).to_le_bytes().to_vec();
    buf.extend_from_slice(payload);
    s.write_all(&buf)?;
    s.flush()
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = s.read(&mut len[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let n = u32::from_le_bytes(len) as usize;
    assert!(n <= 64 << 20, "absurd frame length {n} from the server");
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Reads the next non-empty frame (zero-length frames are keep-alives).
pub fn read_message(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        match read_frame(s)? {
            Some(b) if b.is_empty() => continue,
            other => return Ok(other),
        }
    }
}

/// A well-formed, uncompressed client hello.
pub fn hello(token: &str) -> replica::protocol::Hello {
    replica::protocol::Hello {
        magic: replica::protocol::MAGIC,
        version: replica::protocol::PROTOCOL_VERSION,
        chunker: replica::chunk::CHUNKER_VERSION,
        token: token.into(),
        compress: replica::protocol::Compress::Off,
        client: "black-box test".into(),
        purpose: replica::protocol::Purpose::Sync,
    }
}

/// Sends a typed message as one frame.
pub fn send_msg<T: serde::Serialize>(s: &mut TcpStream, msg: &T) -> std::io::Result<()> {
    write_frame(s, &replica::protocol::encode(msg))
}

/// Connects, says hello and returns the stream with the server's answer.
pub fn raw_session(server: &Server, token: &str) -> (TcpStream, replica::protocol::HelloReply) {
    let mut s = server.connect();
    send_msg(&mut s, &hello(token)).unwrap();
    let reply = read_message(&mut s).unwrap().expect("a hello reply");
    let reply = replica::protocol::decode(&reply).expect("a decodable hello reply");
    (s, reply)
}

/// Reads until the peer closes the connection (or resets it); false if it
/// is still open when the deadline passes.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}
