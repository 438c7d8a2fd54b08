//! The eBPF programs' own log lines (aya-log), forwarded to the agent's log.
//! Off by default: the level lives in the object's read-only data, so at
//! level 0 the verifier removes every log statement from the hot path.

use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};

/// Log levels of the datapath (aya-log's numbering; 0 = off).
pub fn parse_level(s: &str) -> Option<u8> {
    Some(match s {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        _ => return None,
    })
}

/// Forwards aya-log records to `tracing` (target `envfence::datapath`).
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "envfence::datapath", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "envfence::datapath", "{msg}"),
            log::Level::Info => tracing::info!(target: "envfence::datapath", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "envfence::datapath", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "envfence::datapath", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// The datapath's log ring buffer, readable from tokio.
pub struct DatapathLog {
    fd: AsyncFd<EbpfLogger<TracingLog>>,
}

impl DatapathLog {
    pub(super) fn new(logger: EbpfLogger<TracingLog>) -> std::io::Result<Self> {
        // SAFETY: the logger owns its ring buffer's fd for as long as the
        // AsyncFd owns the logger, and always reports that same fd.
        let fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Waits for log records and forwards them.
    pub async fn forward(&mut self) -> std::io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
        Ok(())
    }
}
