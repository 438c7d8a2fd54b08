//! A tiny reader of the Prometheus text exposition format, enough to assert
//! on the agent's `/metrics`; and [`Server`], a real Prometheus (Debian's
//! package) run by a test inside a lab namespace, queried through its API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::lab::{wait_until, Lab, LabProcess};

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every sample line of `text` (comments and malformed lines are
/// skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The value of metric `name` whose labels include all of `labels`. When
/// several series match (a partial label set), their sum; `None` when none
/// does.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for s in parse(text) {
        if s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)) {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",...}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

/// Percent-encodes a query parameter.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `promtool ARGS`; its output, or an error with it.
pub fn promtool(args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = Command::new("promtool").args(args).output().context(
        "running promtool (Debian package `prometheus`; `cargo xtask setup` installs it)",
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

/// A Prometheus server running in a lab namespace (killed with the lab).
pub struct Server<'a> {
    lab: &'a Lab,
    who: String,
    addr: String,
    pub process: LabProcess,
    config: PathBuf,
}

impl<'a> Server<'a> {
    /// Starts `prometheus` in `who`'s namespace of `lab`, listening on
    /// `addr`, with `config` and its data in `data`, plus `extra` flags;
    /// waits until it is ready.
    pub fn start(
        lab: &'a Lab,
        who: &str,
        addr: &str,
        config: &Path,
        data: &Path,
        extra: &[&str],
    ) -> Result<Server<'a>> {
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .args(extra);
        let process = lab
            .spawn_in_ns(who, cmd)
            .context("starting prometheus (`cargo xtask setup` installs it)")?;
        let server = Server {
            lab,
            who: who.to_owned(),
            addr: addr.to_owned(),
            process,
            config: config.to_path_buf(),
        };
        let ready = wait_until(Duration::from_secs(30), || {
            lab.http_get(who, addr, "/-/ready").is_ok() || !server.process.is_running()
        });
        ensure!(
            ready && server.process.is_running(),
            "prometheus did not become ready: {}",
            server.process.stderr_tail(30)
        );
        Ok(server)
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET path` of the API: its `data`, or an error.
    pub fn api(&self, path: &str) -> Result<Value> {
        let body = self.lab.http_get(&self.who, &self.addr, path)?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        ensure!(v["status"] == "success", "{path}: {v}");
        Ok(v["data"].clone())
    }

    /// The instant vector of `query`: (labels, value) per series.
    pub fn query(&self, query: &str) -> Result<Vec<(Value, f64)>> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(query)))?;
        let mut out = Vec::new();
        for r in data["result"].as_array().context("result")? {
            let value: f64 = r["value"][1]
                .as_str()
                .context("value")?
                .parse()
                .context("value")?;
            out.push((r["metric"].clone(), value));
        }
        Ok(out)
    }

    /// The value of a query that returns at most one series (0 when none).
    pub fn scalar(&self, query: &str) -> Result<f64> {
        let r = self.query(query)?;
        ensure!(r.len() <= 1, "{query}: {r:?}");
        Ok(r.first().map_or(0.0, |(_, v)| *v))
    }

    /// Alerts in `state` named `name` whose labels include `labels`.
    pub fn alerts(&self, name: &str, state: &str, labels: &[(&str, &str)]) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"]
            .as_array()
            .context("alerts")?
            .iter()
            .filter(|a| {
                a["labels"]["alertname"] == name
                    && a["state"] == state
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            })
            .cloned()
            .collect())
    }

    /// Waits until alert `name` with `labels` fires.
    pub fn wait_alert(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Value> {
        let start = Instant::now();
        loop {
            if let Some(a) = self.alerts(name, "firing", labels)?.into_iter().next() {
                println!("{name} firing after {:.1?}: {a}", start.elapsed());
                return Ok(a);
            }
            if start.elapsed() > timeout {
                bail!(
                    "{name} {labels:?} not firing within {timeout:?}; alerts: {}; prometheus stderr:\n{}",
                    self.api("/api/v1/alerts")?,
                    self.process.stderr_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Rewrites the configuration and makes Prometheus reload it (SIGHUP).
    pub fn reconfigure(&self, config: &str) -> Result<()> {
        std::fs::write(&self.config, config)?;
        self.process.signal(nix::sys::signal::Signal::SIGHUP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP envfence_packets_total Packets judged.
# TYPE envfence_packets_total counter
envfence_packets_total{dst_env="production",src_env="staging",verdict="audit"} 12
envfence_packets_total{dst_env="production",src_env="test",verdict="drop"} 3
envfence_bytes_total{dst_env="production",src_env="staging",verdict="audit"} 1.5e3
envfence_build_info{version="0.1.0",weird="a\"b\\c"} 1
envfence_up 1
"#;

    #[test]
    fn values_by_labels() {
        let l = [
            ("src_env", "staging"),
            ("dst_env", "production"),
            ("verdict", "audit"),
        ];
        assert_eq!(metric_value(TEXT, "envfence_packets_total", &l), Some(12.0));
        assert_eq!(metric_value(TEXT, "envfence_bytes_total", &l), Some(1500.0));
        assert_eq!(
            metric_value(TEXT, "envfence_packets_total", &[("dst_env", "production")]),
            Some(15.0)
        );
        assert_eq!(
            metric_value(TEXT, "envfence_packets_total", &[("verdict", "allow")]),
            None
        );
        assert_eq!(metric_value(TEXT, "envfence_up", &[]), Some(1.0));
        assert_eq!(
            metric_value(TEXT, "envfence_build_info", &[("weird", "a\"b\\c")]),
            Some(1.0)
        );
        assert_eq!(metric_value(TEXT, "envfence_packets", &[]), None);
    }
}
