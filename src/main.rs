//! The `replica` command: parses arguments into the library's option
//! structs, runs, prints. Exit codes: 0 success, 1 failure, 2 usage error.

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use replica::progress::Progress;
use replica::report::{check_log_file, ConsoleOps, PassReport, Reporter, Verbosity};
use replica::shutdown::{watch_signals, Signal, Stop};
use replica::syncer::{check_period, default_state_dir, SyncOptions, Syncer};
use replica::transport::client::Target;
use replica::transport::server::{
    discard_partials, is_loopback, resolve_listen, serve_listener, ServerOptions, ServerShared,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "replica",
    version,
    about = "Keep an exact replica of a directory, locally or on a server, sending only what the replica lacks."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a destination directory to replica clients.
    #[command(
        after_help = "Example:\n  replica serve /backup/photos --listen 0.0.0.0:7420 --token \"$SECRET\""
    )]
    Serve(ServeArgs),
    /// Make the target equal to the source, once (or every DURATION).
    #[command(
        after_help = "Examples:\n  replica sync ~/photos /mnt/usb/photos\n  replica sync ~/photos replica://nas.local:7420 --token \"$SECRET\"\n  replica sync ~/photos replica://[::1]:7420 --every 5m"
    )]
    Sync(SyncArgs),
    /// Keep one or more targets in sync continuously (initial pass, then every change).
    #[command(
        after_help = "Examples:\n  replica watch ~/notes replica://nas.local:7420 --token \"$SECRET\"\n  replica watch ~/notes /mnt/usb/notes replica://[::1]:7420"
    )]
    Watch(WatchArgs),
    /// Show a running server's status.
    #[command(
        after_help = "Example:\n  replica status replica://nas.local:7420 --token \"$SECRET\""
    )]
    Status {
        /// replica://HOST:PORT
        server: String,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Where replica keeps its state (known server fingerprints).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print this client's certificate fingerprint (for a server's --allow-client).
    Identity {
        /// Where replica keeps its state.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  replica completions bash > /etc/bash_completion.d/replica"
    )]
    Completions { shell: clap_complete::Shell },
}

#[derive(Args)]
struct Common {
    /// Append every operation to this file (RFC 3339 timestamps).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Where replica keeps its indexes [default: the platform data dir, or $REPLICA_STATE_DIR].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// fsync every file before it is renamed into place (slower, strictest durability).
    #[arg(long)]
    fsync: bool,
    /// Only errors and pass summaries.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Say why each operation happened and how many bytes it sent or rebuilt.
    #[arg(short, long)]
    verbose: bool,
    /// Move files a pass removes or replaces into DIR (outside the
    /// destination, on its filesystem) instead of deleting them; for
    /// `serve`, or `sync`/`watch` to a local directory.
    #[arg(long, value_name = "DIR")]
    versions: Option<PathBuf>,
    /// How long versions are kept (pruned at the end of each pass).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = humantime::parse_duration, requires = "versions")]
    keep_versions: Duration,
    /// The S3 endpoint of s3:// targets [default: $AWS_ENDPOINT_URL, else AWS].
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
}

/// A target with `--s3-endpoint` applied.
fn with_endpoint(t: Target, c: &Common) -> Target {
    match t {
        Target::S3(mut loc) => {
            if c.s3_endpoint.is_some() {
                loc.endpoint = c.s3_endpoint.clone();
            }
            Target::S3(loc)
        }
        t => t,
    }
}

/// `--versions` and `--keep-versions`, as the library takes them.
fn versions_of(c: &Common) -> Option<replica::versions::VersionsOptions> {
    c.versions
        .as_ref()
        .map(|dir| replica::versions::VersionsOptions {
            dir: dir.clone(),
            keep: c.keep_versions,
        })
}

/// Refuses `--versions` when no target is a local directory.
fn check_versions(c: &Common, targets: &[Target]) -> anyhow::Result<()> {
    if let (Some(_), Some(Target::S3(loc))) = (
        &c.versions,
        targets.iter().find(|t| matches!(t, Target::S3(_))),
    ) {
        return Err(usage(format!(
            "--versions keeps versions in a directory; {} is an object store (use the bucket's own versioning)",
            loc.describe()
        )));
    }
    if c.versions.is_some() && !targets.iter().any(|t| matches!(t, Target::Local(_))) {
        return Err(usage(
            "--versions keeps versions where the replica is: pass it to `replica serve` for a replica://HOST:PORT target".into(),
        ));
    }
    Ok(())
}

/// How a client reaches a server.
#[derive(Args, Clone)]
struct RemoteArgs {
    /// Shared secret of the server.
    #[arg(long, env = "REPLICA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server certificate's fingerprint (as `replica serve` prints it);
    /// without it the first certificate seen is trusted and remembered.
    #[arg(long, value_name = "FINGERPRINT")]
    fingerprint: Option<String>,
    /// Speak plaintext to a server started with --insecure-plaintext (loopback testing only).
    #[arg(long)]
    insecure_plaintext: bool,
    /// Limit what is sent to servers to RATE bytes per second, all targets
    /// together (e.g. 500K, 2M = 2 MiB/s, 1G). Local targets are not limited.
    #[arg(long, value_name = "RATE", value_parser = parse_bwlimit)]
    bwlimit: Option<u64>,
    /// How the link to servers is compressed: auto (the default: zstd
    /// while it moves data faster than sending it raw, measured as it
    /// goes), off, or a zstd level 1..19 (always compressed).
    #[arg(long, value_name = "auto|off|LEVEL", value_parser = parse_compress)]
    compress: Option<replica::protocol::Compress>,
}

fn parse_compress(s: &str) -> Result<replica::protocol::Compress, String> {
    s.parse()
}

/// Refuses `--compress` when no target goes over the network.
fn check_compress(remote: &RemoteArgs, targets: &[Target]) -> anyhow::Result<()> {
    if remote.compress.is_some() && !targets.iter().any(|t| matches!(t, Target::Remote(_))) {
        return Err(usage(
            "--compress sets how the network link is compressed; no target is replica://HOST:PORT"
                .into(),
        ));
    }
    Ok(())
}

fn parse_bwlimit(s: &str) -> Result<u64, String> {
    replica::transport::throttle::parse_rate(s).map_err(|e| e.to_string())
}

/// One bucket for every remote target of this process; refuses a limit
/// that no target would use.
fn bandwidth(
    remote: &RemoteArgs,
    targets: &[Target],
) -> anyhow::Result<Option<Arc<replica::transport::throttle::Bandwidth>>> {
    let Some(rate) = remote.bwlimit else {
        return Ok(None);
    };
    if !targets.iter().any(|t| matches!(t, Target::Remote(_))) {
        return Err(usage(
            "--bwlimit limits what goes over the network; no target is replica://HOST:PORT".into(),
        ));
    }
    Ok(Some(replica::transport::throttle::Bandwidth::new(rate)))
}

#[derive(Args)]
struct ServeArgs {
    /// Destination directory (created if missing).
    dest: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7420", value_name = "ADDR")]
    listen: String,
    /// Shared secret clients must present (required unless listening on loopback).
    #[arg(long, env = "REPLICA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Accept clients presenting this certificate fingerprint (see `replica identity`) without the token (repeatable).
    #[arg(long, value_name = "FINGERPRINT")]
    allow_client: Vec<String>,
    /// Speak plaintext instead of TLS. For loopback testing only: refused on other addresses.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Serve a live page (GET /), GET /status (JSON) and GET /metrics
    /// (Prometheus) on this address.
    #[arg(long, value_name = "ADDR")]
    status_addr: Option<String>,
    /// Limit what the server sends to clients to RATE bytes per second
    /// (e.g. 500K, 2M = 2 MiB/s).
    #[arg(long, value_name = "RATE", value_parser = parse_bwlimit)]
    bwlimit: Option<u64>,
    /// Warn when free space drops below this, and refuse files that would not
    /// leave it free: bytes with an optional K/M/G/T suffix, or a percentage.
    #[arg(long, value_name = "SIZE|PCT", default_value = "1G")]
    min_free: String,
    /// Refuse, per file, names Windows cannot hold (`C:`, `CON`, `a\b`,
    /// a trailing dot...), for a replica that Windows will read. Without it
    /// the names this platform can hold are accepted.
    #[arg(long)]
    portable_names: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct SyncArgs {
    /// Source directory.
    src: PathBuf,
    /// A local directory, or replica://HOST:PORT for a running server.
    target: String,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    pass: PassArgs,
    /// Repeat a pass every DURATION (e.g. 30s, 5m, 1h) until interrupted.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// Show what a pass would do and send; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    #[command(flatten)]
    common: Common,
}

/// What a pass compares, excludes and may delete (sync and watch).
#[derive(Args, Clone)]
struct PassArgs {
    /// Exclude paths matching this gitignore-style glob (repeatable); the
    /// source's .replicaignore is read too.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Compare content hashes even when size and modification time match.
    #[arg(long)]
    checksum: bool,
    /// Also delete excluded paths from the replica.
    #[arg(long)]
    delete_excluded: bool,
    /// Refuse every removal of a pass that would remove more than N entries.
    #[arg(long, value_name = "N")]
    max_delete: Option<u64>,
    /// Allow a destination inside the source, a filesystem root or your home directory.
    #[arg(long)]
    force: bool,
    /// Let an empty source empty a replica that holds entries. Without it such
    /// a pass changes nothing and fails (an unmounted disk or a wrong path must
    /// not wipe a replica).
    #[arg(long)]
    allow_empty_source: bool,
    /// Replicate `user.*` extended attributes (Linux, macOS).
    #[arg(long)]
    xattrs: bool,
    /// Entries per page of a full pass (tests and benchmarks).
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    page_entries: Option<u32>,
}

/// The library's options for one source and target.
fn sync_options(
    src: &std::path::Path,
    target: Target,
    remote: &RemoteArgs,
    pass: &PassArgs,
    common: &Common,
    dry_run: bool,
    bwlimit: Option<Arc<replica::transport::throttle::Bandwidth>>,
) -> SyncOptions {
    SyncOptions {
        bwlimit: bwlimit.filter(|_| matches!(target, Target::Remote(_))),
        compress: remote.compress.unwrap_or_default(),
        versions: versions_of(common).filter(|_| matches!(target, Target::Local(_))),
        src: src.to_path_buf(),
        target: Some(target),
        token: remote.token.clone(),
        fingerprint: remote.fingerprint.clone(),
        insecure_plaintext: remote.insecure_plaintext,
        excludes: pass.exclude.clone(),
        state_dir: common.state_dir.clone().unwrap_or_else(default_state_dir),
        checksum: pass.checksum,
        dry_run,
        delete_excluded: pass.delete_excluded,
        max_delete: pass.max_delete,
        fsync: common.fsync,
        force: pass.force,
        allow_empty_source: pass.allow_empty_source,
        xattrs: pass.xattrs,
        page_entries: pass.page_entries.map(|n| n as usize),
        min_free: replica::transport::server::MinFree::Bytes(0),
        command: "",
    }
}

#[derive(Args)]
struct WatchArgs {
    /// Source directory.
    src: PathBuf,
    /// Targets: local directories and/or replica://HOST:PORT (each kept in sync independently).
    #[arg(required = true)]
    targets: Vec<String>,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    pass: PassArgs,
    /// Full rescan period, catching changes no watcher reports (network filesystems).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    rescan_every: Duration,
    #[command(flatten)]
    common: Common,
}

fn verbosity(c: &Common) -> Verbosity {
    if c.quiet {
        Verbosity::Quiet
    } else if c.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The checks of `Common` that need no side effect (before anything is touched).
fn check_common(c: &Common) -> anyhow::Result<()> {
    if let Some(p) = &c.log_file {
        check_log_file(p).map_err(lib_err)?;
    }
    Ok(())
}

/// The operation log of a command; `progress` draws bars and the live
/// window of recent operations on a terminal.
fn reporter(c: &Common, progress: Option<&Progress>) -> anyhow::Result<Reporter> {
    let v = verbosity(c);
    let r = Reporter::new(c.log_file.as_deref(), v).map_err(lib_err)?;
    Ok(match progress {
        Some(p) => r
            .with_progress(p.multi.clone())
            .with_console_ops(ConsoleOps::detect(v, p.op_window())),
        None => r.with_console_ops(ConsoleOps::detect(v, None)),
    })
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let s3_dest = match replica::store::S3Location::parse(&a.dest.to_string_lossy()) {
        Some(loc) => {
            let mut loc = loc.map_err(usage)?;
            if a.common.s3_endpoint.is_some() {
                loc.endpoint = a.common.s3_endpoint.clone();
            }
            if a.common.versions.is_some() {
                return Err(usage(format!(
                    "--versions keeps versions in a directory; {} is an object store (use the bucket's own versioning)",
                    loc.describe()
                )));
            }
            Some(loc)
        }
        None => None,
    };
    if s3_dest.is_none() && a.dest.exists() && !a.dest.is_dir() {
        return Err(usage(format!(
            "{}: not a directory (serve keeps the replica in a directory; give a new or existing one)",
            a.dest.display()
        )));
    }
    let listen = resolve_listen("--listen", &a.listen).map_err(usage)?;
    let status_addr = match &a.status_addr {
        Some(s) => Some(resolve_listen("--status-addr", s).map_err(usage)?),
        None => None,
    };
    let min_free = replica::transport::server::MinFree::parse(&a.min_free)
        .map_err(|e| usage(e.to_string()))?;
    if !is_loopback(&listen) && a.token.as_deref().unwrap_or("").is_empty() {
        return Err(usage(format!(
            "refusing to listen on non-loopback address {listen} without a token; pass --token or set REPLICA_TOKEN"
        )));
    }
    if a.insecure_plaintext && !is_loopback(&listen) {
        return Err(usage(format!(
            "--insecure-plaintext is for loopback testing only; refusing to serve plaintext on {listen}"
        )));
    }
    check_common(&a.common)?;
    let rt = runtime()?;
    let progress = Progress::new(!a.common.quiet);
    let reporter = Arc::new(reporter(&a.common, Some(&progress))?);
    let opts = ServerOptions {
        dest: a.dest.clone(),
        state_dir: a.common.state_dir.clone().unwrap_or_else(default_state_dir),
        token: a.token.clone(),
        fsync: a.common.fsync,
        min_free,
        tls: !a.insecure_plaintext,
        allowed_clients: a.allow_client.clone(),
        names: if a.portable_names {
            replica::tree::NameRules::Windows
        } else {
            replica::tree::NameRules::native()
        },
        bwlimit: a.bwlimit.map(replica::transport::throttle::Bandwidth::new),
        versions: versions_of(&a.common),
        s3: s3_dest,
    };
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    if let Some(v) = &opts.versions {
        // DIR inside DEST, around it or on another filesystem: a usage error.
        let dest = std::fs::create_dir_all(&a.dest)
            .and_then(|()| std::fs::canonicalize(&a.dest))
            .with_context(|| format!("cannot open {}", a.dest.display()))?;
        replica::versions::check_dir(&v.dir, &dest).map_err(|e| usage(e.to_string()))?;
    }
    let shared = ServerShared::open(&opts, reporter.clone()).map_err(lib_err)?;
    match &shared.fingerprint {
        Some(fp) => println!("certificate fingerprint {fp}"),
        None => println!("WARNING: plaintext mode (--insecure-plaintext): traffic is neither encrypted nor authenticated; for loopback testing only"),
    }
    rt.spawn(shared.stats.clone().track_speed());
    if let Some(sa) = status_addr {
        let l = rt
            .block_on(tokio::net::TcpListener::bind(sa))
            .with_context(|| format!("cannot listen on {sa} for status"))?;
        let at = l.local_addr()?;
        println!("status on http://{at}/status");
        println!("live page on http://{at}/");
        rt.spawn(replica::status::http::serve_http(
            l,
            shared.stats.clone(),
            std::future::pending(),
        ));
    }
    println!("listening on {addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let status_line = progress.server_status(shared.stats.clone());
    rt.block_on(serve_listener(listener, shared.clone(), async {
        replica::shutdown::signal().await;
    }));
    drop(status_line);
    // Parts of large files kept for resuming live in this process only.
    discard_partials(&shared, Duration::from_secs(5));
    reporter.info("stopped");
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug)]
struct UsageError(String);
impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

fn lib_err(e: replica::Error) -> anyhow::Error {
    match e {
        replica::Error::Usage(m) => usage(m),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Says that a pass was cut off and what it had done.
fn say_interrupted(
    reporter: &Reporter,
    before: &replica::report::OpCounts,
    sig: Signal,
    local: bool,
) {
    let done = reporter.counts().since(before).describe();
    let done = if done.is_empty() {
        "nothing changed yet".to_string()
    } else {
        format!("done before stopping: {done}")
    };
    let temps = if local {
        "no temporary file left behind"
    } else {
        "the server discards what was in flight (a large file resumes next time)"
    };
    reporter.always(&format!(
        "interrupted ({}): {done}; {temps}; run the command again to finish",
        match sig {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    ));
}

/// Watches for signals during `sync`: the first stops the pass in
/// progress (a local one finishes or discards the file in flight; a
/// remote one is cut off at once, the server keeping or removing its
/// temporary files), a second ends the process.
fn sync_signals(
    rt: &tokio::runtime::Runtime,
    syncer: &Syncer,
    reporter: &Arc<Reporter>,
    progress: &Progress,
    in_pass: &Arc<std::sync::atomic::AtomicBool>,
) -> Stop {
    let stopper = syncer.stopper();
    let (reporter, multi, in_pass) = (reporter.clone(), progress.multi.clone(), in_pass.clone());
    let before = reporter.counts();
    watch_signals(rt.handle(), move |sig| {
        if stopper.stop() || !in_pass.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let _ = multi.clear();
        say_interrupted(&reporter, &before, sig, false);
        replica::progress::restore_terminal();
        std::process::exit(i32::from(sig.exit_code()));
    })
}

fn sync(a: SyncArgs) -> anyhow::Result<ExitCode> {
    let target = with_endpoint(Target::parse(&a.target).map_err(usage)?, &a.common);
    if let Some(p) = a.every {
        check_period("--every", p).map_err(lib_err)?;
    }
    let bw = bandwidth(&a.remote, std::slice::from_ref(&target))?;
    check_versions(&a.common, std::slice::from_ref(&target))?;
    check_compress(&a.remote, std::slice::from_ref(&target))?;
    check_common(&a.common)?;
    let rt = runtime()?;
    let progress = Progress::new(!a.common.quiet);
    let reporter = Arc::new(reporter(&a.common, Some(&progress))?);
    let opts = SyncOptions {
        command: "sync",
        ..sync_options(&a.src, target, &a.remote, &a.pass, &a.common, a.dry_run, bw)
    };
    let mut syncer = Syncer::new(opts, reporter.clone(), rt.handle().clone()).map_err(lib_err)?;
    let in_pass = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = sync_signals(&rt, &syncer, &reporter, &progress, &in_pass);
    let mut last_failed;
    loop {
        let started = std::time::Instant::now();
        let before = reporter.counts();
        in_pass.store(true, std::sync::atomic::Ordering::Relaxed);
        let result = progress.pass(&mut syncer, &stop);
        in_pass.store(false, std::sync::atomic::Ordering::Relaxed);
        match (result, stop.signal()) {
            (Err(_), Some(sig)) => {
                syncer.abandon();
                say_interrupted(&reporter, &before, sig, syncer.is_local());
                return Ok(ExitCode::from(sig.exit_code()));
            }
            (Ok(r), _) => last_failed = report_pass(&reporter, &r),
            (Err(e), None) if a.every.is_none() => return Err(lib_err(e)),
            (Err(e), None) => {
                last_failed = true;
                reporter.error(&format!("pass failed: {e}; retrying at the next period"));
            }
        }
        let Some(period) = a.every else { break };
        while !stop.is_set() && started.elapsed() < period {
            std::thread::sleep(Duration::from_millis(50).min(period));
        }
        if stop.is_set() {
            break;
        }
    }
    syncer.close();
    Ok(if last_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints a pass's summary (and why it stopped early); true if it failed.
fn report_pass(reporter: &Reporter, r: &PassReport) -> bool {
    reporter.summary(r);
    if let Some(why) = &r.summary.stats.stopped {
        reporter.error(why);
    }
    r.failed()
}

fn watch(a: WatchArgs) -> anyhow::Result<ExitCode> {
    let targets = a
        .targets
        .iter()
        .map(|t| Target::parse(t).map_err(usage))
        .map(|t| t.map(|t| with_endpoint(t, &a.common)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    check_period("--rescan-every", a.rescan_every).map_err(lib_err)?;
    let bw = bandwidth(&a.remote, &targets)?;
    check_versions(&a.common, &targets)?;
    check_compress(&a.remote, &targets)?;
    check_common(&a.common)?;
    let rt = runtime()?;
    let reporter = Arc::new(reporter(&a.common, None)?);
    let mut syncers = Vec::new();
    for (t, target) in a.targets.iter().zip(targets) {
        let opts = SyncOptions {
            command: "watch",
            ..sync_options(
                &a.src,
                target,
                &a.remote,
                &a.pass,
                &a.common,
                false,
                bw.clone(),
            )
        };
        let prefix = if a.targets.len() > 1 {
            format!("[{t}] ")
        } else {
            String::new()
        };
        let r = Arc::new(reporter_for(&a.common)?.with_prefix(prefix));
        syncers.push(Syncer::new(opts, r, rt.handle().clone()).map_err(lib_err)?);
    }
    let health: Vec<_> = syncers.iter().map(|s| s.health.clone()).collect();
    let stoppers: Vec<_> = syncers.iter().map(Syncer::stopper).collect();
    let stop_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = {
        let stop_flag = stop_flag.clone();
        watch_signals(rt.handle(), move |_| {
            stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
            for s in &stoppers {
                s.stop();
            }
        })
    };
    let opts = replica::watch::WatchOptions {
        rescan_every: a.rescan_every,
        ..Default::default()
    };
    replica::watch::watch(syncers, opts, stop_flag).map_err(lib_err)?;
    if let Some(why) = health.iter().find_map(|h| h.fatal()) {
        return Err(anyhow::anyhow!("watch stopped: {why}"));
    }
    let sig = stop.signal();
    if let Some(sig) = sig.filter(|_| health.iter().any(|h| h.was_interrupted())) {
        reporter.always("interrupted: a pass was cut off; the next run completes it");
        return Ok(ExitCode::from(sig.exit_code()));
    }
    reporter.info("stopped");
    Ok(if health.iter().any(|h| h.failing()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A reporter for one of `watch`'s targets.
fn reporter_for(c: &Common) -> anyhow::Result<Reporter> {
    reporter(c, None)
}

fn status(
    server: &str,
    remote: RemoteArgs,
    state_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Target::Remote(addr) = Target::parse(server).map_err(usage)? else {
        return Err(usage(format!("{server}: expected replica://HOST:PORT")));
    };
    // Shared network options that mean nothing for one small request.
    for (flag, given) in [
        ("--compress", remote.compress.is_some()),
        ("--bwlimit", remote.bwlimit.is_some()),
    ] {
        if given {
            return Err(usage(format!(
                "{flag} applies to sync and watch; `replica status` sends one small request"
            )));
        }
    }
    let so = SyncOptions {
        token: remote.token,
        fingerprint: remote.fingerprint,
        insecure_plaintext: remote.insecure_plaintext,
        state_dir: state_dir.unwrap_or_else(default_state_dir),
        command: "status",
        ..Default::default()
    };
    let co = replica::syncer::client_connect_options(&so, &addr).map_err(lib_err)?;
    let rt = runtime()?;
    let text = rt
        .block_on(replica::transport::client::query_status(&addr, &co))
        .map_err(lib_err)?;
    if json {
        println!("{text}");
    } else {
        let snap: replica::status::StatusSnapshot =
            serde_json::from_str(&text).context("unreadable status")?;
        print!("{}", snap.to_human());
    }
    Ok(ExitCode::SUCCESS)
}

/// glibc gives each thread that allocates its own heap ("arena") and
/// keeps what is freed there for reuse by that thread: with the session,
/// the index writer, the pool and the runtime's threads each holding
/// freed pages, a first copy of 1M files peaked at 77 MB instead of 40.
/// Two arenas keep that flat; the threads mostly hand buffers over rather
/// than allocate at once, so contention costs little (bench/scale).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a field of glibc's malloc parameters; it
    // is called first thing in main, before this program starts any
    // thread, so no allocation can race with the change.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Sync(a) => sync(a),
        Cmd::Watch(a) => watch(a),
        Cmd::Status {
            server,
            remote,
            state_dir,
            json,
        } => status(&server, remote, state_dir, json),
        Cmd::Identity { state_dir } => {
            let dir = state_dir.unwrap_or_else(default_state_dir).join("client");
            match replica::transport::tls::load_or_create_identity(&dir) {
                Ok(id) => {
                    println!("{}", id.fingerprint);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(anyhow::anyhow!("{e}")),
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "replica",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("replica: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
