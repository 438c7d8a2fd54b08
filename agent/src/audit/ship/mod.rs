//! Shipping the audit log to a syslog receiver (a SIEM): every record, in
//! order, as an RFC 5424 message in an octet-counted frame, over TCP or
//! TLS, at least once.
//!
//! The audit file is the source of truth: the shipper reads it (its own
//! thread, its own file descriptors), so a receiver that is slow or down
//! never holds up the event pipeline or enforcement; the file simply grows
//! ahead of what was shipped (`envfence_audit_ship_backlog_records`).
//!
//! Plain syslog over TCP has no acknowledgement, and a successful write
//! only means the bytes reached our socket buffer. So delivery is
//! *confirmed* at checkpoints: every `checkpoint` interval (and at exit)
//! the shipper ends its stream and waits until the receiver, having read
//! everything up to the end of stream, closes its side; then it reconnects.
//! The last confirmed seq is persisted in `FILE.shipped`. Whenever a
//! connection breaks (receiver stopped, restarted, network), everything
//! after the last confirmed record is sent again on the next connection:
//! no gap, and duplicates carry the same seq and hash, which
//! `envfence audit verify --siem` skips.

mod conn;
pub mod cursor;
mod syslog;
mod tail;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

pub use conn::{client_config, TlsError, TlsOptions};
pub use tail::Tail;

use conn::Conn;

/// How the audit log is shipped.
#[derive(Clone, Debug)]
pub struct ShipOptions {
    /// `--syslog-addr`: `HOST:PORT` of the receiver.
    pub addr: String,
    pub tls: Option<TlsOptions>,
    /// HOSTNAME of the messages (the node name).
    pub hostname: String,
    /// How often delivery is confirmed (see the module docs).
    pub checkpoint: Duration,
}

/// What the shipper did, for metrics.
#[derive(Debug, Default)]
pub struct ShipState {
    /// Last seq sent, +1 (0: none yet).
    sent: AtomicU64,
    /// Last seq the receiver confirmed, +1 (0: none yet).
    confirmed: AtomicU64,
    pub connected: AtomicBool,
    /// Connection attempts and connections that failed.
    pub errors: AtomicU64,
    /// Records sent again after a connection broke.
    pub resent: AtomicU64,
    /// Records that were rotated away before they could be shipped.
    pub lost: AtomicU64,
    pub last_error: Mutex<String>,
}

impl ShipState {
    pub fn sent(&self) -> Option<u64> {
        self.sent.load(Ordering::Relaxed).checked_sub(1)
    }

    pub fn confirmed(&self) -> Option<u64> {
        self.confirmed.load(Ordering::Relaxed).checked_sub(1)
    }

    fn set_error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// The running shipper.
pub struct Shipper {
    pub state: Arc<ShipState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A shipping setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("--syslog-addr {0:?}: expected HOST:PORT")]
    Addr(String),
    #[error("{0}")]
    Cursor(String),
}

/// The host part of `HOST:PORT` (`[v6]:port` too).
pub fn addr_host(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// A wait that ends early when `stop` is set.
fn nap(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

impl Shipper {
    /// Checks the settings (TLS files are read now) and starts shipping the
    /// audit log `base` from the record after the persisted cursor.
    pub fn start(base: &Path, opts: ShipOptions) -> Result<Shipper, ShipError> {
        if addr_host(&opts.addr).is_none() {
            return Err(ShipError::Addr(opts.addr.clone()));
        }
        let tls = opts.tls.as_ref().map(client_config).transpose()?;
        let cursor_file = cursor::cursor_path(base);
        let confirmed = cursor::read(&cursor_file).map_err(ShipError::Cursor)?;
        let state = Arc::new(ShipState::default());
        state
            .confirmed
            .store(confirmed.map_or(0, |s| s + 1), Ordering::Relaxed);
        state
            .sent
            .store(confirmed.map_or(0, |s| s + 1), Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let mut run = Run {
            base: base.to_path_buf(),
            opts,
            tls,
            cursor_file,
            state: Arc::clone(&state),
            stop: Arc::clone(&stop),
            tail: Tail::open(base, confirmed.map_or(0, |s| s + 1)),
            confirmed,
            persisted: confirmed,
            logged: 0,
        };
        let thread = std::thread::Builder::new()
            .name("audit-ship".into())
            .spawn(move || run.run())
            .map_err(|e| ShipError::Cursor(format!("starting the shipping thread: {e}")))?;
        Ok(Shipper {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Ships what is left (for a few seconds at most), confirms and
    /// persists the cursor, and stops.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long the last records may take to go out at exit.
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// Records sent between two looks at the connection and the clock.
const BATCH: usize = 256;

struct Run {
    base: PathBuf,
    opts: ShipOptions,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    cursor_file: PathBuf,
    state: Arc<ShipState>,
    stop: Arc<AtomicBool>,
    tail: Tail,
    confirmed: Option<u64>,
    persisted: Option<u64>,
    logged: u64,
}

impl Run {
    fn log(&mut self, what: String) {
        self.logged += 1;
        if self.logged <= 5 || self.logged.is_power_of_two() {
            tracing::warn!(
                "audit shipping to --syslog-addr {}: {what} ({} problem(s) so far; the audit file keeps every record, shipping resumes from seq {})",
                self.opts.addr,
                self.logged,
                self.confirmed.map_or(0, |s| s + 1)
            );
        }
        self.state.set_error(what);
    }

    fn next_seq(&self) -> u64 {
        self.confirmed.map_or(0, |s| s + 1)
    }

    fn persist(&mut self) {
        if self.persisted == self.confirmed {
            return;
        }
        if let Some(seq) = self.confirmed {
            if let Err(e) = cursor::write(&self.cursor_file, seq) {
                self.log(format!(
                    "cannot write the cursor {}: {e}",
                    self.cursor_file.display()
                ));
                return;
            }
        }
        self.persisted = self.confirmed;
    }

    fn confirm(&mut self, upto: Option<u64>) {
        if upto > self.confirmed {
            self.confirmed = upto;
            self.state
                .confirmed
                .store(upto.map_or(0, |s| s + 1), Ordering::Relaxed);
        }
        self.persist();
    }

    fn run(&mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut exit_by: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::Relaxed) && exit_by.is_none() {
                exit_by = Some(Instant::now() + EXIT_GRACE);
            }
            if exit_by.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            let conn = match Conn::open(&self.opts.addr, self.tls.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    self.state.connected.store(false, Ordering::Relaxed);
                    self.log(e);
                    if exit_by.is_some() {
                        break;
                    }
                    nap(&self.stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.state.connected.store(true, Ordering::Relaxed);
            // Everything after the last confirmed record, again.
            let from = self.next_seq();
            let sent_before = self.state.sent();
            if sent_before.is_some_and(|s| s >= from) {
                let again = sent_before.map_or(0, |s| s + 1 - from);
                self.state.resent.fetch_add(again, Ordering::Relaxed);
            }
            self.tail.seek(from);
            match self.session(conn, exit_by.is_some()) {
                Ok(()) => {}
                Err(e) => {
                    self.state.connected.store(false, Ordering::Relaxed);
                    self.log(e);
                    if exit_by.is_none() {
                        nap(&self.stop, backoff);
                    }
                }
            }
            if exit_by.is_some() && self.confirmed == self.state.sent() {
                break;
            }
        }
        self.state.connected.store(false, Ordering::Relaxed);
        self.persist();
    }

    /// One connection: sends records until the checkpoint, then confirms.
    fn session(&mut self, mut conn: Conn, exiting: bool) -> Result<(), String> {
        let started = Instant::now();
        let mut last_sent: Option<u64> = None;
        loop {
            let stopping = exiting || self.stop.load(Ordering::Relaxed);
            let mut n = 0;
            let mut wrote = false;
            while n < BATCH {
                let rec = self
                    .tail
                    .next_record()
                    .map_err(|e| format!("reading {}: {e}", self.base.display()))?;
                let Some((seq, line)) = rec else { break };
                let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
                let host = syslog::header_field(&self.opts.hostname, 255);
                conn.write_all(&syslog::frame(&line, seq, &ts, &host))
                    .map_err(|e| format!("sending seq {seq}: {e}"))?;
                last_sent = Some(seq);
                self.state.sent.store(seq + 1, Ordering::Relaxed);
                wrote = true;
                n += 1;
            }
            let lost = self.tail.take_skipped();
            if lost > 0 {
                self.state.lost.fetch_add(lost, Ordering::Relaxed);
                tracing::error!(
                    "audit shipping: {lost} record(s) were rotated away before they could be shipped (raise --audit-keep or --audit-max-bytes)"
                );
            }
            if wrote {
                conn.flush().map_err(|e| format!("sending: {e}"))?;
            }
            if conn.peer_closed() {
                return Err("the receiver closed the connection".to_owned());
            }
            let due = started.elapsed() >= self.opts.checkpoint;
            let idle = n == 0;
            if last_sent.is_some() && (due || (stopping && idle)) {
                // Confirm: end the stream, wait for the receiver to close.
                return if conn.close_confirmed(Duration::from_secs(5)) {
                    self.confirm(last_sent);
                    Ok(())
                } else {
                    Err(format!(
                        "the receiver did not confirm reading up to seq {} (it reset the connection or did not close it)",
                        last_sent.map_or(0, |s| s)
                    ))
                };
            }
            if stopping && idle {
                return Ok(());
            }
            if idle {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
