//! Replays, with the `session` harness's checks, the scenario of finding 2
//! in README.md: a directory DEST/a is moved out of DEST (to TRAP) between
//! two passes of one server; the second pass writes into the moved
//! directory, outside DEST, through the server's cached directory handle.
//!
//!     TMPDIR=/dev/shm cargo run --manifest-path fuzz/Cargo.toml --example replay_escape
//!
//! Exits 0 if the harness detects the write outside DEST, 1 if not.

use replica_fuzz::session::*;

fn entry(parent: u8, name: u8, kind: FKind) -> FEntry {
    FEntry {
        parent,
        name: FName::Dict(name),
        kind,
        mode: FMode::None,
        mtime: FTime::Zero,
    }
}

fn pass(files: &[u8]) -> Step {
    // "a" (dictionary name 0) and files in it (strict: parent 1 is "a").
    let mut entries = vec![entry(0, 0, FKind::Dir)];
    entries.extend(
        files
            .iter()
            .map(|&n| entry(1, n, FKind::File(FSize::Content(0)))),
    );
    Step::Send(FMsg::Pass {
        opts: FPass {
            checksum: false,
            dry_run: false,
            delete_excluded: false,
            max_delete: None,
            excludes: vec![],
        },
        strict: true,
        entries,
        opaque: vec![],
        partial: vec![],
        links: vec![],
    })
}

fn answer() -> Step {
    Step::Answer {
        requests: 31,
        inline: true,
        fault: None,
    }
}

fn main() {
    let input = Input {
        // One 7-byte chunk.
        contents: vec![FContent {
            chunks: vec![1],
            group_cuts: vec![],
        }],
        steps: vec![
            pass(&[4]), // a/x.txt
            answer(),
            Step::External(Ext::MoveOut { path: (0, None) }), // mv DEST/a TRAP/0
            pass(&[4, 5]),                                    // a/x.txt, a/y.bin
            answer(),
        ],
    };
    std::panic::set_hook(Box::new(|_| {}));
    match std::panic::catch_unwind(|| run(input)) {
        Ok(()) => {
            println!("not detected: the server did not write outside DEST");
            std::process::exit(1);
        }
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            println!("detected: {msg}");
        }
    }
}
