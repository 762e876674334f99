//! The requests that change the bucket: PUT (whole, or multipart for large
//! files: parts sent a few at once, the upload aborted on failure so none
//! is left unfinished), server-side copy with new metadata, deletes. An
//! object appears under its key only complete: a single PUT or a
//! CompleteMultipartUpload. Conditional writes are never relied on.

use super::client::Conn;
use super::layout::{format_mode, format_mtime, META_MODE, META_MTIME};
use super::lister::bare_etag;
use crate::tree::{Kind, Timestamp};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;

/// Files at least this large are sent in parts.
pub const MULTIPART_MIN: u64 = 32 << 20;
/// Size of one part.
pub const PART_SIZE: u64 = 8 << 20;
/// Parts in flight at once for one file.
const PARTS_AT_ONCE: usize = 4;
/// Largest object CopyObject copies in one request.
pub const COPY_MAX: u64 = 5 << 30;

/// rclone's metadata for an entry.
pub fn metadata(kind: &Kind, mode: Option<u32>, mtime: Timestamp) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert(META_MTIME.to_string(), format_mtime(mtime));
    if let Some(mode) = mode {
        m.insert(META_MODE.to_string(), format_mode(mode, kind));
    }
    m
}

/// Sends a whole object; returns its ETag.
pub async fn put(
    conn: &Conn,
    object: &str,
    body: Vec<u8>,
    meta: HashMap<String, String>,
) -> io::Result<String> {
    let r = conn
        .client
        .put_object()
        .bucket(&conn.bucket)
        .key(object)
        .set_metadata(Some(meta))
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| conn.error(e))?;
    Ok(bare_etag(r.e_tag()))
}

/// Copies `from` to `to` inside the bucket with new metadata; returns the
/// new object's ETag.
pub async fn copy(
    conn: &Conn,
    from: &str,
    to: &str,
    meta: HashMap<String, String>,
) -> io::Result<String> {
    let r = conn
        .client
        .copy_object()
        .bucket(&conn.bucket)
        .key(to)
        .copy_source(format!("{}/{}", conn.bucket, url_encode(from)))
        .metadata_directive(MetadataDirective::Replace)
        .set_metadata(Some(meta))
        .send()
        .await
        .map_err(|e| conn.error(e))?;
    Ok(bare_etag(r.copy_object_result().and_then(|c| c.e_tag())))
}

/// Deletes many objects, a thousand a request.
pub async fn delete_many(conn: &Conn, objects: Vec<String>) -> io::Result<()> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    for batch in objects.chunks(1000) {
        let ids: Vec<ObjectIdentifier> = batch
            .iter()
            .map(|k| {
                ObjectIdentifier::builder()
                    .key(k)
                    .build()
                    .map_err(io::Error::other)
            })
            .collect::<io::Result<_>>()?;
        let del = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(io::Error::other)?;
        let r = conn
            .client
            .delete_objects()
            .bucket(&conn.bucket)
            .delete(del)
            .send()
            .await
            .map_err(|e| conn.error(e))?;
        if let Some(e) = r.errors().first() {
            return Err(io::Error::other(format!(
                "cannot delete {}: {} ({})",
                e.key().unwrap_or("?"),
                e.message().unwrap_or(e.code().unwrap_or("error")),
                conn.what,
            )));
        }
    }
    Ok(())
}

/// Sends a large spool file in parts; returns the ETag. On failure the
/// upload is aborted.
pub fn put_multipart(
    conn: &Arc<Conn>,
    object: &str,
    file: &std::fs::File,
    size: u64,
    meta: HashMap<String, String>,
) -> io::Result<String> {
    let id = conn.run(async {
        let r = conn
            .client
            .create_multipart_upload()
            .bucket(&conn.bucket)
            .key(object)
            .set_metadata(Some(meta))
            .send()
            .await
            .map_err(|e| conn.error(e))?;
        r.upload_id()
            .map(str::to_string)
            .ok_or_else(|| io::Error::other(format!("no upload id ({})", conn.what)))
    })?;
    let r = send_parts(conn, object, &id, file, size);
    match r {
        Ok(parts) => conn.run(async {
            let r = conn
                .client
                .complete_multipart_upload()
                .bucket(&conn.bucket)
                .key(object)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            match r {
                Ok(r) => Ok(bare_etag(r.e_tag())),
                Err(e) => {
                    let err = conn.error(e);
                    let _ = abort(conn, object, &id).await;
                    Err(err)
                }
            }
        }),
        Err(e) => {
            let _ = conn.run(abort(conn, object, &id));
            Err(e)
        }
    }
}

fn send_parts(
    conn: &Arc<Conn>,
    object: &str,
    id: &str,
    file: &std::fs::File,
    size: u64,
) -> io::Result<Vec<CompletedPart>> {
    let n = size.div_ceil(PART_SIZE);
    let mut done = Vec::with_capacity(n as usize);
    let mut in_flight = std::collections::VecDeque::new();
    for part in 0..n {
        let at = part * PART_SIZE;
        let len = PART_SIZE.min(size - at) as usize;
        let mut buf = vec![0u8; len];
        crate::store::read_exact_at(&Spool(file), &mut buf, at)?;
        let (c, key, id) = (conn.clone(), object.to_string(), id.to_string());
        let number = part as i32 + 1;
        in_flight.push_back(conn.spawn(async move {
            let r = c
                .client
                .upload_part()
                .bucket(&c.bucket)
                .key(&key)
                .upload_id(&id)
                .part_number(number)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| c.error(e))?;
            Ok::<_, io::Error>(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(r.e_tag().unwrap_or(""))
                    .build(),
            )
        }));
        if in_flight.len() >= PARTS_AT_ONCE {
            let h = in_flight.pop_front().expect("not empty");
            done.push(conn.run(h).map_err(io::Error::other)??);
        }
    }
    for h in in_flight {
        done.push(conn.run(h).map_err(io::Error::other)??);
    }
    Ok(done)
}

struct Spool<'a>(&'a std::fs::File);

impl crate::store::ReadAt for Spool<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        crate::store::local::pread(self.0, buf, offset)
    }
}

async fn abort(conn: &Conn, object: &str, id: &str) -> io::Result<()> {
    conn.client
        .abort_multipart_upload()
        .bucket(&conn.bucket)
        .key(object)
        .upload_id(id)
        .send()
        .await
        .map_err(|e| conn.error(e))?;
    Ok(())
}

/// Aborts every unfinished multipart upload under the prefix (left by a
/// killed pass: nothing else writes there); returns how many.
pub fn abort_stale_uploads(conn: &Conn) -> io::Result<usize> {
    conn.run(async {
        let r = conn
            .client
            .list_multipart_uploads()
            .bucket(&conn.bucket)
            .prefix(&conn.root)
            .send()
            .await
            .map_err(|e| conn.error(e))?;
        let mut n = 0;
        for u in r.uploads() {
            if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                abort(conn, k, id).await?;
                n += 1;
            }
        }
        Ok(n)
    })
}

/// Percent-encodes an object key for `x-amz-copy-source` (`/` kept).
pub fn url_encode(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The hex MD5 of a body: the ETag a single PUT gets.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_are_percent_encoded() {
        assert_eq!(url_encode("p/a b/ü+x"), "p/a%20b/%C3%BC%2Bx");
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
