//! The client's driver: safety rails, state locations, connecting (over
//! TCP or to an in-process server for a local target), running passes with
//! reconnection, and stopping a pass on request (a signal): the in-process
//! server of a local target finishes or discards the file in flight and
//! leaves no temporary file behind.

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::index::SourceIndex;
use crate::protocol::PassOptions;
use crate::report::{PassReport, PassSummary, Reporter};
use crate::session::client::{ClientLink, ClientPass, PassObserver};
use crate::transport::client::{connect, connect_local, ConnectOptions, Target};
use crate::transport::server::{ServerOptions, ServerShared};
use crate::tree::{scan_source, Pages, ScanOptions, SourceScan};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything `replica sync` and `replica watch` need to know.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    pub src: PathBuf,
    pub target: Option<Target>,
    pub token: Option<String>,
    pub excludes: Vec<String>,
    pub state_dir: PathBuf,
    pub checksum: bool,
    pub dry_run: bool,
    pub delete_excluded: bool,
    pub max_delete: Option<u64>,
    pub fsync: bool,
    pub force: bool,
    /// Let an empty source empty a non-empty replica.
    pub allow_empty_source: bool,
    /// For a local target: free space to keep on the destination.
    pub min_free: crate::transport::server::MinFree,
    /// Speak plaintext to the server (loopback testing only).
    pub insecure_plaintext: bool,
    /// The server certificate's expected fingerprint (else trust on first use).
    pub fingerprint: Option<String>,
    /// The command (`sync`, `watch`), told to a server.
    pub command: &'static str,
    /// `--xattrs`: replicate `user.*` extended attributes.
    pub xattrs: bool,
    /// `--versions DIR` for a local target (a server has its own).
    pub versions: Option<crate::versions::VersionsOptions>,
    /// `--bwlimit`: paces what goes to a remote target (one bucket may be
    /// shared by several targets). Local targets are not limited.
    pub bwlimit: Option<Arc<crate::transport::throttle::Bandwidth>>,
    /// `--compress`: how the link to a remote target is compressed.
    pub compress: crate::protocol::Compress,
    /// Entries per page of a paged pass (None: [`PAGE_ENTRIES`]).
    pub page_entries: Option<usize>,
}

/// Entries per page of a full pass, by default: the pass sends the tree
/// as pages of whole directories of about this many entries, so the server
/// holds one page and the client two (the one being served and the next,
/// read meanwhile), or the widest directory if it is larger. Half of what
/// was measured first (32,768 with one page on the client, issue 18):
/// a few MB less on each side at no measurable cost in time.
pub const PAGE_ENTRIES: usize = 16_384;

/// Where a pass's manifest comes from.
#[derive(Clone)]
enum PassSource<'s> {
    /// A scan made beforehand, sent whole.
    Scan(&'s SourceScan),
    /// Pages made as the pass goes (a full pass).
    Pages(Option<Arc<crate::tree::ScanCounter>>),
}

/// The default place for replica's own state (indexes, keys).
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REPLICA_STATE_DIR") {
        return d.into();
    }
    directories::ProjectDirs::from("", "", "replica")
        .map(|p| p.data_dir().to_path_buf())
        .unwrap_or_else(|| std::env::temp_dir().join("replica-state"))
}

/// Refuses dangerous source/destination pairs (unless `force`). Returns
/// the canonical source and, for a local target, the canonical destination.
pub fn check_paths(src: &Path, target: &Target, force: bool) -> Result<(PathBuf, Option<PathBuf>)> {
    // A missing or wrong source is a failure (exit 1), not a usage
    // mistake: it is what an unmounted disk looks like.
    let src_c = std::fs::canonicalize(src).map_err(|e| Error::source(src, &e))?;
    if !src_c.is_dir() {
        return Err(Error::Source {
            path: src.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    let Target::Local(dest) = target else {
        return Ok((src_c, None));
    };
    if dest.exists() && !dest.is_dir() {
        return Err(Error::Usage(format!(
            "{}: destination exists and is not a directory",
            dest.display()
        )));
    }
    let dest_c = canonical_even_if_missing(dest);
    if dest_c == src_c {
        return Err(Error::Usage(format!(
            "{}: destination is the source itself",
            dest.display()
        )));
    }
    if !force {
        if dest_c.starts_with(&src_c) {
            return Err(Error::Usage(format!(
                "{}: destination lies inside the source {}; use --force to allow it (the destination is then skipped when scanning)",
                dest.display(),
                src.display()
            )));
        }
        if src_c.starts_with(&dest_c) {
            return Err(Error::Usage(format!(
                "{}: the source lies inside the destination, whose other contents would be deleted; use --force to allow it",
                dest.display()
            )));
        }
        if dest_c.parent().is_none() {
            return Err(Error::Usage(format!(
                "{}: refusing to replicate onto a filesystem root; use --force",
                dest.display()
            )));
        }
        if let Some(home) = directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf()) {
            if std::fs::canonicalize(&home)
                .map(|h| h == dest_c)
                .unwrap_or(false)
            {
                return Err(Error::Usage(format!(
                    "{}: refusing to replicate onto your home directory; use --force",
                    dest.display()
                )));
            }
        }
    }
    Ok((src_c, Some(dest_c)))
}

fn canonical_even_if_missing(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => canonical_even_if_missing(parent).join(name),
        _ => abs,
    }
}

/// Where trusted server fingerprints are remembered.
pub fn known_hosts(state_dir: &Path) -> PathBuf {
    state_dir.join("known_hosts")
}

/// How a client connects to `addr`, from its options.
pub fn client_connect_options(opts: &SyncOptions, addr: &str) -> Result<ConnectOptions> {
    use crate::transport::tls::{load_or_create_identity, Pin};
    if opts.insecure_plaintext {
        return Ok(ConnectOptions {
            token: opts.token.clone(),
            pin: None,
            identity: None,
            command: opts.command,
            bwlimit: opts.bwlimit.clone(),
            compress: opts.compress,
        });
    }
    let pin = match &opts.fingerprint {
        Some(fp) => Pin::Exact(check_fingerprint(fp)?),
        None => Pin::TrustOnFirstUse {
            known_hosts: known_hosts(&opts.state_dir),
            host: addr.to_string(),
        },
    };
    let identity = load_or_create_identity(&opts.state_dir.join("client")).ok();
    Ok(ConnectOptions {
        token: opts.token.clone(),
        pin: Some(pin),
        identity,
        command: opts.command,
        bwlimit: opts.bwlimit.clone(),
        compress: opts.compress,
    })
}

/// A `--fingerprint` as typed, checked before anything connects.
pub fn check_fingerprint(fp: &str) -> Result<String> {
    crate::transport::tls::normalize_fingerprint(fp).map_err(|reason| {
        Error::Usage(format!(
            "--fingerprint {fp}: {reason} (expected blake3: followed by 64 hex digits, as `replica serve` prints it)"
        ))
    })
}

/// The shortest `--every` and `--rescan-every` accepted: below it a
/// period is a mistake (a busy loop), not a schedule.
pub const MIN_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Refuses a zero or absurdly small period given to `flag`.
pub fn check_period(flag: &str, d: std::time::Duration) -> Result<()> {
    if d < MIN_PERIOD {
        return Err(Error::Usage(format!(
            "{flag} {}: too short; give at least 1s (e.g. {flag} 30s)",
            humantime::format_duration(d)
        )));
    }
    Ok(())
}

/// A client bound to one source and one target, keeping its connection and
/// source index between passes.
pub struct Syncer {
    pub opts: SyncOptions,
    pub src: PathBuf,
    target: Target,
    rt: tokio::runtime::Handle,
    link: Option<ClientLink>,
    local: Option<Arc<ServerShared>>,
    index: Option<SourceIndex>,
    filter: Filter,
    skip: Vec<PathBuf>,
    pub reporter: Arc<Reporter>,
    /// Files still being written (set by the watcher).
    pub hold: Option<Arc<std::sync::Mutex<std::collections::HashSet<String>>>>,
    /// Set by `watch` when newer changes wait for this target.
    pub preempt: Option<Arc<std::sync::atomic::AtomicBool>>,
    saved_digests: crate::session::client::SavedDigests,
    /// The empty stand-in for a dry run's missing destination.
    _scratch: Option<Scratch>,
    /// How this target is doing (watch).
    pub health: Arc<TargetHealth>,
    /// Shown each page of a paged pass as it is read (`watch` learns its
    /// hard-link groups there).
    pub page_tap: Option<crate::tree::PageTap>,
}

/// An empty directory standing in for a destination that does not exist,
/// so that a dry run creates nothing; removed (with the index made for it)
/// when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let base = std::env::temp_dir();
        for n in 0u32.. {
            let p = base.join(format!("replica-dry-run-{}-{n}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => {
                    std::fs::create_dir(p.join("dest")).map_err(|e| Error::io(&p, e))?;
                    return Ok(Scratch(p));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
        unreachable!("some scratch name is free")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a target of `watch` is doing, readable after the watch ends.
#[derive(Debug, Default)]
pub struct TargetHealth {
    /// The last pass failed (transiently); cleared by a pass that works.
    failing: std::sync::atomic::AtomicBool,
    /// Why the target was given up for good.
    fatal: std::sync::Mutex<Option<String>>,
    /// A pass was cut off by a signal.
    interrupted: std::sync::atomic::AtomicBool,
}

impl TargetHealth {
    /// A transient failure: to be retried.
    pub fn fail_for_now(&self) {
        self.failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A permanent failure: the target is given up.
    pub fn fail_for_good(&self, why: String) {
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// A pass worked; true if the previous one had failed.
    pub fn recovered(&self) -> bool {
        self.failing
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the last pass failed.
    pub fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A pass was cut off by a signal.
    pub fn interrupt(&self) {
        self.interrupted
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn was_interrupted(&self) -> bool {
        self.interrupted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the target was given up, if it was.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Stops a running pass from another thread (a signal handler).
#[derive(Clone)]
pub struct PassStopper {
    local: Option<Arc<ServerShared>>,
}

impl PassStopper {
    /// Asks the pass to stop after the file in flight. True when it will
    /// (a local target); false when only dropping the connection can stop
    /// it (a server keeps or removes its own temporary files then).
    pub fn stop(&self) -> bool {
        match &self.local {
            Some(shared) => {
                shared
                    .shutdown
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

impl Syncer {
    pub fn new(
        opts: SyncOptions,
        reporter: Arc<Reporter>,
        rt: tokio::runtime::Handle,
    ) -> Result<Self> {
        let target = opts
            .target
            .clone()
            .ok_or_else(|| Error::Usage("no target given".into()))?;
        let (src, dest) = check_paths(&opts.src, &target, opts.force)?;
        if let Target::Remote(addr) = &target {
            // A bad --fingerprint is a usage mistake: caught before connecting.
            client_connect_options(&opts, addr)?;
        }
        let filter =
            Filter::for_source(&src, &opts.excludes).map_err(|e| Error::Usage(e.to_string()))?;
        let id =
            blake3::hash(format!("{}\n{}", src.display(), target.describe()).as_bytes()).to_hex();
        let index_path = opts
            .state_dir
            .join("sources")
            .join(&id[..16])
            .join("source.redb");
        let index = match SourceIndex::open(&index_path) {
            Ok(i) => Some(i),
            Err(e) => {
                reporter.warn(&format!("working without a source index: {e}"));
                None
            }
        };
        let scratch = match &dest {
            Some(d) if opts.dry_run && !d.exists() => Some(Scratch::new()?),
            _ => None,
        };
        // The in-process server of a local or s3:// target: where it keeps
        // the replica and its state, its versions, its store.
        let in_process = match (&dest, &target) {
            (None, Target::S3(loc)) => Some((
                PathBuf::from(loc.describe()),
                opts.state_dir.clone(),
                None,
                Some(loc.clone()),
            )),
            (Some(d), _) => {
                let (dest, state_dir) = match &scratch {
                    Some(s) => (s.0.join("dest"), s.0.join("state")),
                    None => (d.clone(), opts.state_dir.clone()),
                };
                Some((dest, state_dir, opts.versions.clone(), None))
            }
            (None, _) => None,
        };
        let local = match in_process {
            Some((dest, state_dir, versions, s3)) => {
                let so = ServerOptions {
                    dest,
                    state_dir,
                    token: None,
                    fsync: opts.fsync,
                    min_free: opts.min_free,
                    tls: false,
                    allowed_clients: Vec::new(),
                    names: crate::tree::NameRules::native(),
                    bwlimit: None,
                    versions,
                    s3,
                };
                Some(ServerShared::open(&so, Arc::new(Reporter::silent()))?)
            }
            None => None,
        };
        Ok(Syncer {
            skip: dest.into_iter().collect(),
            opts,
            src,
            target,
            rt,
            link: None,
            local,
            index,
            filter,
            reporter,
            hold: None,
            preempt: None,
            saved_digests: Default::default(),
            _scratch: scratch,
            health: Arc::default(),
            page_tap: None,
        })
    }

    /// Whether the target is a local directory (served in-process).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// A handle that stops this syncer's running pass from another thread.
    pub fn stopper(&self) -> PassStopper {
        PassStopper {
            local: self.local.clone(),
        }
    }

    /// After a stopped pass: drops the connection and, for a local target,
    /// waits for the in-process server to let go of the replica and removes
    /// the temporary files it kept for resuming (nothing will resume them
    /// once this process ends).
    pub fn abandon(&mut self) {
        self.disconnect();
        if let Some(shared) = &self.local {
            crate::transport::server::discard_partials(shared, std::time::Duration::from_secs(30));
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The paths a scan must never enter (a replica inside the source).
    pub fn skip(&self) -> &[PathBuf] {
        &self.skip
    }

    fn connect(&mut self) -> Result<()> {
        if self.link.is_none() {
            let link = match &self.local {
                Some(shared) => self.rt.block_on(connect_local(shared.clone()))?,
                None => {
                    let Target::Remote(addr) = &self.target else {
                        unreachable!()
                    };
                    let co = client_connect_options(&self.opts, addr)?;
                    let (link, trust) = self.rt.block_on(connect(addr, &co))?;
                    if let Some(t) = trust.filter(|t| t.newly_trusted) {
                        self.reporter.info(&format!(
                            "trusting new server {addr} with certificate {} (remembered in {}); compare it with the fingerprint the server printed",
                            t.fingerprint,
                            known_hosts(&self.opts.state_dir).display()
                        ));
                    }
                    link
                }
            };
            self.link = Some(link);
        }
        Ok(())
    }

    /// Drops the connection (after a failure).
    pub fn disconnect(&mut self) {
        self.link = None;
    }

    /// Scans the whole source tree.
    pub fn scan(&self) -> Result<SourceScan> {
        self.scan_counting(None)
    }

    /// Scans the whole source tree, counting what it finds.
    pub fn scan_counting(
        &self,
        counter: Option<Arc<crate::tree::ScanCounter>>,
    ) -> Result<SourceScan> {
        let so = ScanOptions {
            filter: self.filter.clone(),
            skip: self.skip.clone(),
            counter,
        };
        scan_source(&self.src, &so).map_err(|e| Error::source(&self.src, &e))
    }

    /// The source as pages, for a paged pass.
    fn pages(&self, counter: Option<Arc<crate::tree::ScanCounter>>) -> Result<Pages> {
        let so = ScanOptions {
            filter: self.filter.clone(),
            skip: self.skip.clone(),
            counter,
        };
        let max = self.opts.page_entries.unwrap_or(PAGE_ENTRIES);
        Pages::new(&self.src, so, max)
            .map(|p| p.with_tap(self.page_tap.clone()))
            .map_err(|e| Error::source(&self.src, &e))
    }

    /// Whether a full pass goes as pages: always (a dry run too: the
    /// server notes on disk what each page would have done, and later
    /// pages see it). With `--max-delete` a paged pass carries out
    /// additions and updates page by page and refuses every removal at the
    /// end if there are more than N (the server counts them on disk).
    pub fn paged(&self) -> bool {
        true
    }

    fn pass_options(&self) -> PassOptions {
        PassOptions {
            checksum: self.opts.checksum,
            dry_run: self.opts.dry_run,
            delete_excluded: self.opts.delete_excluded,
            max_delete: self.opts.max_delete,
            excludes: self.filter.patterns().to_vec(),
            allow_empty_source: self.opts.allow_empty_source,
            xattrs: self.opts.xattrs,
        }
    }

    /// One pass over a given scan. Files that changed while being sent are
    /// picked up by up to two follow-up passes.
    pub fn pass_with(
        &mut self,
        scan: &SourceScan,
        observer: Option<&dyn PassObserver>,
    ) -> Result<PassReport> {
        self.pass_from(PassSource::Scan(scan), observer)
    }

    /// One full pass, its manifest sent as pages made as the pass goes.
    pub fn pass_paged(
        &mut self,
        observer: Option<&dyn PassObserver>,
        counter: Option<Arc<crate::tree::ScanCounter>>,
    ) -> Result<PassReport> {
        if !self.paged() {
            let scan = self.scan_counting(counter)?;
            return self.pass_with(&scan, observer);
        }
        self.pass_from(PassSource::Pages(counter), observer)
    }

    fn pass_from(
        &mut self,
        source: PassSource,
        observer: Option<&dyn PassObserver>,
    ) -> Result<PassReport> {
        let started = std::time::Instant::now();
        let before = self.reporter.counts();
        self.reporter.pass_started();
        let result = self.pass_summary(source, observer);
        self.reporter.pass_finished();
        Ok(PassReport {
            summary: result?,
            counts: self.reporter.counts().since(&before),
            elapsed: started.elapsed(),
            local: self.local.is_some(),
        })
    }

    fn pass_summary(
        &mut self,
        source: PassSource,
        observer: Option<&dyn PassObserver>,
    ) -> Result<PassSummary> {
        if let PassSource::Scan(scan) = source {
            for w in &scan.warnings {
                self.reporter.warn(&w.to_string());
            }
            for e in &scan.errors {
                self.reporter.error(&e.to_string());
            }
        }
        let opts = self.pass_options();
        let mut total: Option<PassSummary> = None;
        let mut scan_owned: Option<SourceScan> = None;
        let empty = SourceScan::default();
        for attempt in 0..3 {
            let current = match (&scan_owned, &source) {
                (Some(s), _) => s,
                (None, PassSource::Scan(s)) => s,
                (None, PassSource::Pages(_)) => &empty,
            };
            let mut pages = match &source {
                PassSource::Pages(counter) => Some(self.pages(counter.clone())?),
                PassSource::Scan(_) => None,
            };
            self.connect()?;
            let result = {
                let pass = ClientPass {
                    link: self.link.as_ref().expect("connected"),
                    root: &self.src,
                    scan: current,
                    index: self.index.as_ref(),
                    reporter: &self.reporter,
                    observer,
                    hold: self.hold.as_deref(),
                    preempt: self.preempt.as_deref(),
                    saved_digests: &self.saved_digests,
                };
                match pages.as_mut() {
                    Some(pages) => pass.run_pages(opts.clone(), pages),
                    None => pass.run(opts.clone()),
                }
            };
            let outcome = match result {
                Ok(o) => o,
                Err(e) => {
                    self.disconnect();
                    return Err(e);
                }
            };
            let mut s = outcome.summary;
            s.preempted = outcome.preempted;
            if let Some(why) = s.stats.stopped.take() {
                s.stats.stopped = Some(format!("{}: {why}", self.src.display()));
            }
            if let Some(prev) = total.take() {
                s.preempted.extend(prev.preempted);
                s.wire_sent += prev.wire_sent;
                s.wire_received += prev.wire_received;
                s.stats.ops += prev.stats.ops;
                s.stats.received += prev.stats.received;
                s.stats.reused += prev.stats.reused;
            }
            let retry = outcome.changed_during_pass > 0 && attempt < 2 && !opts.dry_run;
            if retry {
                // The errors were transient: the follow-up pass decides.
                s.stats.errors = s
                    .stats
                    .errors
                    .saturating_sub(outcome.changed_during_pass as u64);
                total = Some(s);
                if let PassSource::Scan(_) = source {
                    scan_owned = Some(self.scan()?);
                }
                continue;
            }
            return Ok(s);
        }
        Ok(total.unwrap_or_default())
    }

    /// One full pass (paged, see [`Syncer::pass_paged`]).
    pub fn pass(&mut self, observer: Option<&dyn PassObserver>) -> Result<PassReport> {
        self.pass_paged(observer, None)
    }

    /// Ends the session politely.
    pub fn close(&mut self) {
        if let Some(link) = self.link.take() {
            link.send(crate::protocol::ClientMsg::Bye);
            if let Some(writer) = link.close() {
                let _ = self.rt.block_on(async move {
                    tokio::time::timeout(std::time::Duration::from_secs(5), writer).await
                });
            }
        }
    }
}
