//! A watcher of the agent's (`envfence::netwatch`) on its own thread
//! inside a lab namespace, in a current-thread tokio runtime: it reports
//! what it started with, then every event stamped with the time it got
//! it, until the test drops it. The test collects the events with
//! timeouts and can make the thread stop reading for a while (the kernel
//! keeps queueing: overflows on purpose).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns;

enum Report<S, E> {
    Started(S),
    Event(Instant, E),
    Paused,
    Failed(String),
}

/// What the watcher thread's body reports through.
pub struct Feed<S, E> {
    tx: Sender<Report<S, E>>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    told_paused: AtomicBool,
}

impl<S, E> Feed<S, E> {
    /// Reports the start; false when the test is gone.
    pub fn started(&self, start: S) -> bool {
        self.tx.send(Report::Started(start)).is_ok()
    }
    /// Reports an event (stamped now); false when the test is gone.
    pub fn event(&self, event: E) -> bool {
        self.tx.send(Report::Event(Instant::now(), event)).is_ok()
    }
    /// [`Feed::paused`], and then a 10 ms nap: `if feed.held().await {
    /// continue }` at the top of the body's loop.
    pub async fn held(&self) -> bool {
        let paused = self.paused();
        if paused {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        paused
    }

    /// Whether the test wants the body to return.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    /// Whether the body must not read now ([`NsWatcher::pause`]); tells the
    /// test once per pause that it saw it.
    pub fn paused(&self) -> bool {
        let paused = self.paused.load(Ordering::SeqCst);
        if paused && !self.told_paused.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send(Report::Paused);
        } else if !paused {
            self.told_paused.store(false, Ordering::SeqCst);
        }
        paused
    }
}

/// The watcher thread (see the module docs): `S` is what it starts with,
/// `E` what it sees.
pub struct NsWatcher<S, E> {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    reports: Receiver<Report<S, E>>,
    handle: Option<JoinHandle<()>>,
    /// Every event received so far, in order, with when it was seen.
    pub events: Vec<(Instant, E)>,
}

impl<S: Send + 'static, E: Send + 'static> NsWatcher<S, E> {
    /// Runs `body` on a thread in namespace `ns`, inside a current-thread
    /// tokio runtime, and waits (10 s) for its start.
    pub fn start<F, Fut>(ns: &str, body: F) -> Result<(NsWatcher<S, E>, S)>
    where
        F: FnOnce(Feed<S, E>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let (tx, reports) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let feed = Feed {
            tx: tx.clone(),
            stop: stop.clone(),
            paused: paused.clone(),
            told_paused: AtomicBool::new(false),
        };
        let ns = ns.to_string();
        let handle = std::thread::spawn(move || {
            let outcome = netns::in_netns(&ns, move || -> Result<()> {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building the tokio runtime")?
                    .block_on(body(feed))
            });
            if let Err(e) = outcome.and_then(|r| r) {
                let _ = tx.send(Report::Failed(format!("{e:#}")));
            }
        });
        let watcher = NsWatcher {
            stop,
            paused,
            reports,
            handle: Some(handle),
            events: Vec::new(),
        };
        match watcher.reports.recv_timeout(Duration::from_secs(10)) {
            Ok(Report::Started(start)) => Ok((watcher, start)),
            Ok(Report::Failed(e)) => bail!("the watcher failed to start: {e}"),
            Ok(_) => bail!("the watcher reported before starting"),
            Err(e) => bail!("the watcher did not start: {e}"),
        }
    }

    fn absorb(&mut self, report: Report<S, E>) -> Result<()> {
        match report {
            Report::Event(at, event) => self.events.push((at, event)),
            Report::Failed(e) => bail!("the watcher failed: {e}"),
            Report::Started(_) | Report::Paused => {}
        }
        Ok(())
    }

    /// Collects events until `done(events)` holds or `timeout` passes;
    /// whether `done` held.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[(Instant, E)]) -> bool,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.events) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(report) => self.absorb(report)?,
                Err(RecvTimeoutError::Timeout) => return Ok(done(&self.events)),
                Err(RecvTimeoutError::Disconnected) => bail!("the watcher thread is gone"),
            }
        }
    }

    /// Collects events until none came for `quiet`.
    pub fn wait_quiet(&mut self, quiet: Duration) -> Result<()> {
        loop {
            match self.reports.recv_timeout(quiet) {
                Ok(report) => self.absorb(report)?,
                Err(RecvTimeoutError::Timeout) => return Ok(()),
                Err(RecvTimeoutError::Disconnected) => bail!("the watcher thread is gone"),
            }
        }
    }

    /// Stops the body reading (the kernel keeps queueing) until
    /// [`NsWatcher::resume`]; returns once the body saw it (what it sent
    /// before is collected).
    pub fn pause(&mut self) -> Result<()> {
        self.paused.store(true, Ordering::SeqCst);
        loop {
            match self.reports.recv_timeout(Duration::from_secs(5)) {
                Ok(Report::Paused) => return Ok(()),
                Ok(report) => self.absorb(report)?,
                Err(e) => bail!("the watcher did not pause: {e}"),
            }
        }
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// How many events match `is`.
    pub fn count(&self, is: impl Fn(&E) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| is(e)).count()
    }
}

impl<S, E> Drop for NsWatcher<S, E> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
