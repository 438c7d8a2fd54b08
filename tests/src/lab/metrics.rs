//! The agent's metrics and HTTP endpoints read from inside a lab
//! namespace: one value, a value polled until it holds, a status code.
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::netns;
use crate::prom;

/// Polls metric `name` (every 2 ms, from one thread inside `ns`) until
/// `done(value)` holds; returns the value and the moment it was seen, or
/// `None` after `timeout`.
pub fn wait_metric(
    ns: &str,
    addr: &str,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    done: impl Fn(f64) -> bool + Send,
) -> Result<Option<(f64, Instant)>> {
    netns::in_netns(ns, move || {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = crate::lab::http_get_here(addr, "/metrics") {
                if let Some(v) = prom::metric_value(&text, name, labels) {
                    if done(v) {
                        return Some((v, Instant::now()));
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// `GET path` in `ns`: (HTTP status code, body), whatever the status.
pub fn http_status(ns: &str, addr: &str, path: &str) -> Result<(u16, String)> {
    netns::in_netns(ns, || -> Result<(u16, String)> {
        let (status_line, _, body) = crate::lab::http_exchange(addr, path)?;
        let code = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok());
        let code = code.ok_or_else(|| anyhow!("malformed answer to GET {path}: {status_line}"))?;
        Ok((code, body))
    })?
}
