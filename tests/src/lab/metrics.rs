//! The agent's metrics and HTTP endpoints read from inside a lab
//! namespace: one value, a value polled until it holds, a status code.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

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
    let addr = addr.to_string();
    let path = path.to_string();
    netns::in_netns(ns, move || -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let sock: SocketAddr = addr.parse().context("metrics address")?;
        let mut stream = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let code = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("malformed answer to GET {path}: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })?
}
