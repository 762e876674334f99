//! A real three-node Garage cluster for the object-store tests
//! (`tests/garage/cluster`), a byte-counting relay in front of it, an
//! independent reader (rclone, and the raw object listing through the S3
//! API), and `replica` runs with the cluster's environment.
//!
//! A missing Garage fails the test with how to install it: never a skip.

use super::{bin, Run};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The cluster script.
pub fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/garage/cluster")
}

/// A running cluster, stopped on drop.
pub struct Garage {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
}

impl Garage {
    pub fn start() -> Garage {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("bash")
            .arg(cluster_script())
            .arg("start")
            .arg(dir.path())
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .expect("run tests/garage/cluster");
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(3) {
            panic!("Garage is required by the object-store tests and was not found: {err}\ninstall it with `cargo install garage@2.5.0 --locked` (about 10 minutes), or set GARAGE=/path/to/garage; .ci/run does this");
        }
        assert!(out.status.success(), "cluster start failed: {err}");
        let env = std::fs::read_to_string(dir.path().join("env")).expect("cluster env");
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing in {env}"))
                .to_string()
        };
        Garage {
            endpoint: get("AWS_ENDPOINT_URL"),
            key_id: get("AWS_ACCESS_KEY_ID"),
            secret: get("AWS_SECRET_ACCESS_KEY"),
            bucket: get("BUCKET"),
            dir,
        }
    }

    fn script(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(cluster_script())
            .args(args)
            .output()
            .expect("cluster script");
        assert!(
            out.status.success(),
            "cluster {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops node `n` (1..3) hard.
    pub fn kill(&self, n: u32) {
        let d = self.dir.path().to_string_lossy().into_owned();
        self.script(&["kill", &d, &n.to_string()]);
    }

    /// Starts node `n` again.
    pub fn revive(&self, n: u32) {
        let d = self.dir.path().to_string_lossy().into_owned();
        self.script(&["revive", &d, &n.to_string()]);
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// A `replica` command with the cluster's environment (and none of the
    /// machine's AWS settings).
    pub fn replica(&self, endpoint: &str) -> Command {
        let mut c = Command::new(bin());
        clean_aws_env(&mut c);
        c.env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_REGION", "us-east-1")
            .env("NO_COLOR", "1")
            .env_remove("REPLICA_TOKEN")
            .env_remove("REPLICA_STATE_DIR")
            .stdin(std::process::Stdio::null());
        c
    }

    /// `replica sync SRC s3://BUCKET/PREFIX --state-dir STATE EXTRA...`.
    pub fn sync(&self, src: &Path, prefix: &str, state: &Path, extra: &[&str]) -> Run {
        self.sync_via(&self.endpoint.clone(), src, prefix, state, extra)
    }

    /// The same through another endpoint (a relay).
    pub fn sync_via(
        &self,
        endpoint: &str,
        src: &Path,
        prefix: &str,
        state: &Path,
        extra: &[&str],
    ) -> Run {
        let out = self
            .replica(endpoint)
            .arg("sync")
            .arg(src)
            .arg(self.url(prefix))
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .output()
            .expect("run replica");
        out.into()
    }

    /// rclone with this cluster as remote `garage:`.
    pub fn rclone(&self) -> Command {
        let mut c = Command::new("rclone");
        clean_aws_env(&mut c);
        let p = "RCLONE_CONFIG_GARAGE_";
        c.env(format!("{p}TYPE"), "s3")
            .env(format!("{p}PROVIDER"), "Other")
            .env(format!("{p}ACCESS_KEY_ID"), &self.key_id)
            .env(format!("{p}SECRET_ACCESS_KEY"), &self.secret)
            .env(format!("{p}ENDPOINT"), &self.endpoint)
            .env(format!("{p}REGION"), "us-east-1")
            .env(format!("{p}FORCE_PATH_STYLE"), "true")
            .env("RCLONE_CONFIG", "/dev/null");
        c
    }

    /// Reads `PREFIX` back into `dest` with `rclone copy --links
    /// --metadata`. Symlinks are copied in a second run without
    /// `--metadata`: rclone 1.60 turns every object's `content-type` into a
    /// `user.` extended attribute, which Linux refuses on a symlink.
    pub fn rclone_copy_back(&self, prefix: &str, dest: &Path) {
        for args in [
            &[
                "copy",
                "--links",
                "--metadata",
                "--create-empty-src-dirs",
                "--exclude",
                "*.rclonelink",
            ][..],
            &["copy", "--links", "--include", "*.rclonelink"][..],
        ] {
            let out = self
                .rclone()
                .args(args)
                .arg(format!("garage:{}/{prefix}", self.bucket))
                .arg(dest)
                .output()
                .expect("rclone (apt-get install rclone)");
            assert!(
                out.status.success(),
                "rclone {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        unescape_names(dest);
    }

    /// A plain S3 client (the test's own view of the bucket).
    pub fn client(&self) -> S3 {
        S3::new(&self.endpoint, &self.key_id, &self.secret)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let d = self.dir.path().to_string_lossy().into_owned();
        let _ = Command::new("bash")
            .arg(cluster_script())
            .args(["stop", &d])
            .output();
    }
}

/// Undoes the layout's escaping (documented in README: one trailing `⁓`
/// dropped) in a tree rclone copied back.
fn unescape_names(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            unescape_names(&p);
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(orig) = name.strip_suffix('\u{2053}') {
            std::fs::rename(&p, dir.join(orig)).unwrap();
        }
    }
}

/// Removes the machine's AWS settings from a command's environment.
pub fn clean_aws_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
}

/// The raw object store, through the S3 API (independent of replica).
pub struct S3 {
    rt: tokio::runtime::Runtime,
    pub client: aws_sdk_s3::Client,
}

/// An object as listed and HEADed.
#[derive(Debug, Clone)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub meta: std::collections::HashMap<String, String>,
}

impl S3 {
    pub fn new(endpoint: &str, key: &str, secret: &str) -> S3 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let creds = aws_sdk_s3::config::Credentials::new(key, secret, None, None, "test");
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(endpoint)
            .force_path_style(true)
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        S3 {
            rt,
            client: aws_sdk_s3::Client::from_conf(conf),
        }
    }

    /// Every object under `prefix/` with its user metadata.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<Object> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let r = self
                    .client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(format!("{prefix}/"))
                    .set_continuation_token(token)
                    .send()
                    .await
                    .expect("list");
                for o in r.contents() {
                    let key = o.key().unwrap().to_string();
                    let h = self
                        .client
                        .head_object()
                        .bucket(bucket)
                        .key(&key)
                        .send()
                        .await;
                    let meta = match h {
                        Ok(h) => h.metadata().cloned().unwrap_or_default(),
                        // Removed since the listing (a watch at work).
                        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                            continue
                        }
                        Err(e) => panic!("head {key}: {e:?}"),
                    };
                    out.push(Object {
                        key: key[prefix.len() + 1..].to_string(),
                        size: o.size().unwrap_or(0) as u64,
                        meta,
                    });
                }
                token = r.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out
        })
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8], meta: &[(&str, &str)]) {
        self.rt.block_on(async {
            let mut r = self
                .client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.to_vec().into());
            for (k, v) in meta {
                r = r.metadata(*k, *v);
            }
            r.send().await.expect("put");
        })
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.rt.block_on(async {
            let r = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("get");
            r.body.collect().await.unwrap().into_bytes().to_vec()
        })
    }

    /// Unfinished multipart uploads under `prefix/`.
    pub fn uploads(&self, bucket: &str, prefix: &str) -> usize {
        self.rt.block_on(async {
            let r = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(format!("{prefix}/"))
                .send()
                .await
                .expect("list uploads");
            r.uploads().len()
        })
    }
}

/// A TCP relay in front of the store counting the bytes sent to it.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    pub up: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relays loopback connections to `endpoint` (`http://HOST:PORT`).
    pub fn start(endpoint: &str) -> Relay {
        let upstream = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let up = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (up2, stop2) = (up.clone(), stop.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(c) = c else { continue };
                let Ok(s) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                let up = up2.clone();
                std::thread::spawn(move || pipe(c, s, Some(up)));
                std::thread::spawn(move || pipe(s2, c2, None));
            }
        });
        Relay { addr, up, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes sent to the store so far.
    pub fn sent(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// What the bucket must hold for a source tree, worked out from the tree
/// alone (the layout of README "Replicas on object storage"): object key
/// relative to the prefix -> (body, rclone `mtime` text, rclone `mode`
/// text). Directories are `dir/` markers (the root is `""`), symlinks
/// `NAME.rclonelink` holding the target, names ending in `.rclonelink` or
/// `⁓` get one `⁓` more.
pub fn expected_objects(
    src: &Path,
) -> std::collections::BTreeMap<String, (Vec<u8>, String, Option<String>)> {
    let snap = super::snapshot(src);
    let mut out = std::collections::BTreeMap::new();
    for (path, node) in snap {
        let rel = if path == "." { String::new() } else { path };
        let mtime = format!("{}.{:09}", node.mtime.0, node.mtime.1);
        let escape = |name: &str| {
            if name.ends_with(".rclonelink") || name.ends_with('\u{2053}') {
                format!("{name}\u{2053}")
            } else {
                name.to_string()
            }
        };
        let (dir, name) = match rel.rfind('/') {
            Some(i) => (format!("{}/", &rel[..i]), rel[i + 1..].to_string()),
            None => (String::new(), rel.clone()),
        };
        match node.kind {
            super::snapshot::Kind::Dir => {
                let key = if rel.is_empty() {
                    String::new()
                } else {
                    format!("{rel}/")
                };
                out.insert(
                    key,
                    (
                        Vec::new(),
                        mtime,
                        Some(format!("{:o}", 0o40000 | node.mode)),
                    ),
                );
            }
            super::snapshot::Kind::File(data) => {
                let key = format!("{dir}{}", escape(&name));
                out.insert(
                    key,
                    (data, mtime, Some(format!("{:o}", 0o100000 | node.mode))),
                );
            }
            super::snapshot::Kind::Symlink(t) => {
                let key = format!("{dir}{}.rclonelink", escape(&name));
                out.insert(key, (t.into_bytes(), mtime, None));
            }
            super::snapshot::Kind::Special => {}
        }
    }
    out
}

/// Differences between the bucket under `prefix` and what it must hold
/// for `src` (keys, sizes, bodies, metadata), one line each.
pub fn layout_diffs(s3: &S3, bucket: &str, prefix: &str, src: &Path) -> Vec<String> {
    let want = expected_objects(src);
    let mut have: std::collections::BTreeMap<String, Object> = s3
        .objects(bucket, prefix)
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    let mut diffs = Vec::new();
    for (key, (body, mtime, mode)) in &want {
        let Some(o) = have.remove(key) else {
            diffs.push(format!("{key:?}: missing"));
            continue;
        };
        if o.size != body.len() as u64 {
            diffs.push(format!("{key:?}: size {} != {}", o.size, body.len()));
        } else if !body.is_empty()
            && body.len() < (1 << 20)
            && s3.get(bucket, &format!("{prefix}/{key}")) != *body
        {
            diffs.push(format!("{key:?}: body differs"));
        }
        if o.meta.get("mtime") != Some(mtime) {
            diffs.push(format!(
                "{key:?}: mtime {:?} != {mtime}",
                o.meta.get("mtime")
            ));
        }
        if let Some(m) = mode {
            if o.meta.get("mode") != Some(m) {
                diffs.push(format!("{key:?}: mode {:?} != {m}", o.meta.get("mode")));
            }
        }
    }
    for key in have.keys() {
        diffs.push(format!("{key:?}: extra object"));
    }
    diffs
}

#[track_caller]
pub fn assert_layout(s3: &S3, bucket: &str, prefix: &str, src: &Path) {
    let d = layout_diffs(s3, bucket, prefix, src);
    assert!(
        d.is_empty(),
        "bucket differs from the source:\n  {}",
        d.join("\n  ")
    );
}
