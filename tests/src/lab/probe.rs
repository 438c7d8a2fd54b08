//! Traffic that runs while a test changes something: continuous TCP
//! probers that timestamp every connection attempt from a lab namespace
//! (did a forbidden flow get through, did an allowed one stall), numbered
//! UDP streams, and the statistics of their timings.
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::lab::Lab;
use crate::netns;

/// What one connection attempt gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The handshake completed.
    Connected,
    /// No answer within the probe's timeout (the SYN was dropped).
    TimedOut,
    /// Another error (a refusal means the SYN reached the destination).
    Error(String),
}

impl Outcome {
    pub fn connected(&self) -> bool {
        matches!(self, Outcome::Connected)
    }
    /// Whether the SYN demonstrably reached the destination (a handshake, or
    /// a refusal from the destination's stack).
    pub fn reached(&self) -> bool {
        match self {
            Outcome::Connected => true,
            Outcome::Error(e) => e.contains("refused"),
            Outcome::TimedOut => false,
        }
    }
}

/// One connection attempt.
#[derive(Clone, Debug)]
pub struct ProbeRecord {
    pub start: Instant,
    pub end: Instant,
    pub outcome: Outcome,
}

/// A flow to probe: TCP connects from namespace `from_ns` to `dst`.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// A label for reports (e.g. `test1->prod1`).
    pub name: String,
    /// The full namespace name of the client.
    pub from_ns: String,
    pub dst: SocketAddr,
    /// Give up on an attempt after this long.
    pub timeout: Duration,
}

impl ProbeSpec {
    /// A probe from pod `from` to pod `to`'s IPv4 (or IPv6) `port`.
    pub fn between(
        lab: &Lab,
        from: &str,
        to: &str,
        v6: bool,
        port: u16,
        timeout: Duration,
    ) -> Result<ProbeSpec> {
        let pod = lab.pod(to)?;
        let ip: IpAddr = if v6 {
            pod.ipv6().into()
        } else {
            pod.ipv4().into()
        };
        Ok(ProbeSpec {
            name: format!("{from}->{to}{}", if v6 { "/v6" } else { "" }),
            from_ns: lab.ns(from)?.to_string(),
            dst: SocketAddr::new(ip, port),
            timeout,
        })
    }
}

/// Probers running in the background: one thread per [`ProbeSpec`] that
/// starts a non-blocking TCP connect every `interval` (several may be in
/// flight) and records each attempt's start, end and outcome.
pub struct Prober {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    specs: Vec<ProbeSpec>,
    logs: Vec<Arc<Mutex<Vec<ProbeRecord>>>>,
}

impl Prober {
    pub fn start(specs: Vec<ProbeSpec>, interval: Duration) -> Result<Prober> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut logs = Vec::new();
        for spec in &specs {
            let log: Arc<Mutex<Vec<ProbeRecord>>> = Arc::default();
            logs.push(log.clone());
            let (spec, stop) = (spec.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let ns = spec.from_ns.clone();
                netns::in_netns(&ns, move || probe_loop(&spec, interval, &stop, &log))?
            }));
        }
        let prober = Prober {
            stop,
            threads,
            specs,
            logs,
        };
        // Fail early when a thread could not even start (setns, sockets).
        std::thread::sleep(Duration::from_millis(50));
        if let Some(i) = prober.threads.iter().position(|t| t.is_finished()) {
            let mut prober = prober;
            let t = prober.threads.remove(i);
            let err = match t.join() {
                Ok(Ok(())) => anyhow!("prober {} stopped at once", prober.specs[i].name),
                Ok(Err(e)) => e.context(format!("prober {}", prober.specs[i].name)),
                Err(_) => anyhow!("prober {} panicked", prober.specs[i].name),
            };
            return Err(err);
        }
        Ok(prober)
    }

    pub fn specs(&self) -> &[ProbeSpec] {
        &self.specs
    }

    /// The records of probe `i` so far (finished attempts only).
    pub fn records(&self, i: usize) -> Vec<ProbeRecord> {
        self.logs[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Finished attempts of every probe so far.
    pub fn total(&self) -> usize {
        (0..self.specs.len()).map(|i| self.records(i).len()).sum()
    }

    /// Stops the probers (in-flight attempts are finished first) and returns
    /// every record, by probe.
    pub fn finish(mut self) -> Result<Vec<(ProbeSpec, Vec<ProbeRecord>)>> {
        self.halt()?;
        Ok(self
            .specs
            .iter()
            .cloned()
            .zip(
                self.logs
                    .iter()
                    .map(|l| std::mem::take(&mut *l.lock().unwrap_or_else(|p| p.into_inner()))),
            )
            .collect())
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let mut errors = Vec::new();
        for (i, t) in self.threads.drain(..).enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{}: {e:#}", self.specs[i].name)),
                Err(_) => errors.push(format!("{}: panicked", self.specs[i].name)),
            }
        }
        if !errors.is_empty() {
            bail!("probers failed: {}", errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

struct InFlight {
    socket: Socket,
    start: Instant,
}

fn probe_loop(
    spec: &ProbeSpec,
    interval: Duration,
    stop: &AtomicBool,
    log: &Mutex<Vec<ProbeRecord>>,
) -> Result<()> {
    let domain = if spec.dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let dst = SockAddr::from(spec.dst);
    let mut inflight: Vec<InFlight> = Vec::new();
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && inflight.is_empty() {
            return Ok(());
        }
        if !stopping && now >= next {
            next += interval;
            if next < now {
                next = now + interval;
            }
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
                .context("creating a TCP socket")?;
            socket.set_nonblocking(true)?;
            let start = Instant::now();
            match socket.connect(&dst) {
                Ok(()) => record(log, start, Outcome::Connected),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                    inflight.push(InFlight { socket, start })
                }
                Err(e) => record(log, start, Outcome::Error(e.to_string())),
            }
        }
        // Expire attempts past their timeout.
        let now = Instant::now();
        inflight.retain(|f| {
            if now.duration_since(f.start) >= spec.timeout {
                record(log, f.start, Outcome::TimedOut);
                false
            } else {
                true
            }
        });
        // Wait for a socket to become writable, the next start, or the
        // nearest timeout.
        let mut wake = if stopping {
            now + Duration::from_millis(50)
        } else {
            next
        };
        for f in &inflight {
            wake = wake.min(f.start + spec.timeout);
        }
        let wait_ms = wake
            .saturating_duration_since(Instant::now())
            .as_millis()
            .clamp(0, 1000) as libc::c_int;
        let mut fds: Vec<libc::pollfd> = inflight
            .iter()
            .map(|f| libc::pollfd {
                fd: f.socket.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("poll");
            }
            continue;
        }
        if n == 0 {
            continue;
        }
        let mut done = Vec::new();
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents != 0 {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let f = inflight.swap_remove(i);
            let outcome = match f.socket.take_error() {
                Ok(None) => Outcome::Connected,
                Ok(Some(e)) | Err(e) => Outcome::Error(e.to_string()),
            };
            record(log, f.start, outcome);
        }
    }
}

fn record(log: &Mutex<Vec<ProbeRecord>>, start: Instant, outcome: Outcome) {
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ProbeRecord {
            start,
            end: Instant::now(),
            outcome,
        });
}

/// Counts of a set of records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub attempts: usize,
    pub connected: usize,
    pub timed_out: usize,
    pub errors: usize,
}

impl Tally {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a ProbeRecord>) -> Tally {
        let mut t = Tally::default();
        for r in records {
            t.attempts += 1;
            match r.outcome {
                Outcome::Connected => t.connected += 1,
                Outcome::TimedOut => t.timed_out += 1,
                Outcome::Error(_) => t.errors += 1,
            }
        }
        t
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} attempts: {} connected, {} timed out, {} other errors",
            self.attempts, self.connected, self.timed_out, self.errors
        )
    }
}

// ---------------------------------------------------------------------------
// Statistics

/// (median, max) of `values` (zero when empty).
pub fn median_max(values: &[Duration]) -> (Duration, Duration) {
    if values.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let mut v = values.to_vec();
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

// ---------------------------------------------------------------------------
// UDP

/// Sends one numbered UDP datagram every `interval` from namespace
/// `from_ns` to `dst` until finished (for flows that must never get
/// through: a receiver counts what does).
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl UdpStream {
    pub fn start(from_ns: &str, dst: SocketAddr, interval: Duration) -> Result<UdpStream> {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = from_ns.to_string();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                netns::in_netns(&ns, move || -> Result<u64> {
                    let socket = std::net::UdpSocket::bind(crate::lab::unspecified(dst.ip()))
                        .context("binding UDP")?;
                    let mut sent = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        socket
                            .send_to(&sent.to_be_bytes(), dst)
                            .with_context(|| format!("sending UDP to {dst}"))?;
                        sent += 1;
                        std::thread::sleep(interval);
                    }
                    Ok(sent)
                })?
            })
        };
        Ok(UdpStream {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sending; returns how many datagrams were sent.
    pub fn finish(mut self) -> Result<u64> {
        self.halt()
    }

    fn halt(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("UDP sender panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}
