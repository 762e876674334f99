//! Regression tests named after the bug they pin.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("replica")
}

/// Starts a plaintext server on a free loopback port; returns it and its address.
fn serve(dest: &Path, state: &Path) -> (Server, String) {
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--min-free",
            "0",
            "-q",
        ])
        .arg(dest)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let addr = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    (Server(child), addr)
}

fn sync(src: &Path, addr: &str, state: &Path) {
    let out = Command::new(bin())
        .arg("sync")
        .arg(src)
        .arg(format!("replica://{addr}"))
        .args(["--insecure-plaintext", "-q", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory moved out of DEST between two passes must not receive the
/// second pass's writes (the server once reused a cached directory handle).
#[test]
fn directory_moved_out_of_dest_between_passes_is_not_written_through() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest, outside) = (
        t.path().join("src"),
        t.path().join("dest"),
        t.path().join("outside"),
    );
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(src.join("a/f1"), "1").unwrap();
    let (_server, addr) = serve(&dest, &t.path().join("ss"));
    let cs = t.path().join("cs");
    sync(&src, &addr, &cs);
    std::fs::rename(dest.join("a"), outside.join("a")).unwrap();
    std::fs::write(src.join("a/f2"), "2").unwrap();
    sync(&src, &addr, &cs);
    assert!(!outside.join("a/f2").exists(), "a write went outside DEST");
    assert_eq!(std::fs::read(dest.join("a/f1")).unwrap(), b"1");
    assert_eq!(std::fs::read(dest.join("a/f2")).unwrap(), b"2");
}
