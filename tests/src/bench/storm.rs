//! d. Event storm: the figures of the `storm` integration test
//! (tests/tests/storm.rs), which floods forbidden UDP over thousands of
//! flows through a lab at an agent, checks that every count is exact, and
//! prints events/s delivered, events lost, the agent's CPU and RSS. The
//! bench runs that test's executable (built by `cargo xtask bench`) and
//! tabulates what it printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::table::{thousands, Table};
use super::{Part, Section};
use crate::netns;

/// The newest `storm-<hash>` test executable next to this one, if any.
fn find_storm_test() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let deps = if dir.ends_with("deps") {
        dir.to_path_buf()
    } else {
        dir.join("deps")
    };
    std::fs::read_dir(deps)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("storm-") && !name.contains('.')
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// The number just before `suffix` in `line` (`"12.5% during"` → 12.5).
fn number_before(line: &str, suffix: &str) -> Option<f64> {
    let end = line.find(suffix)?;
    let head = line[..end].trim_end();
    let start = head
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(0, |i| i + 1);
    head[start..].parse().ok()
}

/// The first number after `marker` in `line` (`"events/s; 0 lost"` → 0).
fn number_after(line: &str, marker: &str) -> Option<f64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let rest = &rest[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.').parse().ok()
}

#[derive(Debug, Default)]
struct Figures {
    packets_per_sec: Option<f64>,
    delivered: Option<f64>,
    events_per_sec: Option<f64>,
    lost: Option<f64>,
    cpu_storm: Option<f64>,
    cpu_drain: Option<f64>,
    rss_max_kib: Option<f64>,
    rss_hwm_kib: Option<f64>,
}

fn parse(lines: &[String]) -> Figures {
    let mut f = Figures::default();
    for l in lines {
        let l = l.trim();
        if l.starts_with("sent:") {
            f.packets_per_sec = number_before(l, "packets/s");
        } else if l.starts_with("events:") {
            f.delivered = number_before(l, "delivered");
            f.events_per_sec = number_before(l, "events/s");
            f.lost = number_after(l, "events/s");
        } else if l.starts_with("agent CPU:") {
            f.cpu_storm = number_before(l, "% during the storm");
            f.cpu_drain = number_before(l, "% until");
        } else if l.starts_with("agent RSS:") {
            f.rss_max_kib = number_before(l, "KiB max");
            f.rss_hwm_kib = number_before(l, "KiB high-water");
        }
    }
    f
}

pub fn section(
    storm_test: Option<&Path>,
    agent_bin: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Section> {
    let test = storm_test
        .map(Path::to_path_buf)
        .or_else(find_storm_test)
        .ok_or_else(|| {
            anyhow!("no storm test executable: build it with `cargo test --release -p envfence-tests --test storm --no-run` (cargo xtask bench does) or pass --storm-test")
        })?;
    log(&format!("storm: running {}", test.display()));
    let mut cmd = Command::new(&test);
    cmd.args(["--nocapture", "--test-threads=1"])
        .env("ENVFENCE_BIN", agent_bin)
        .env("RUST_BACKTRACE", "0");
    let out = netns::output_with_timeout(&mut cmd, Duration::from_secs(900))
        .with_context(|| format!("running {}", test.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest prints "test <name> ... " before the test's first line.
    let mut lines: Vec<String> = Vec::new();
    for l in stdout.lines() {
        if let Some(i) = l.find("storm figures") {
            lines.push(l[i..].to_string());
        } else if !lines.is_empty() && l.starts_with("  ") {
            lines.push(l.to_string());
        } else if !lines.is_empty() {
            break;
        }
    }
    let f = parse(&lines);
    let mut s = Section::new(Part::Storm);
    s.intro.push("From the `storm` integration test (tests/tests/storm.rs): sender threads in a test pod flood UDP to a production pod over thousands of distinct flows (all dropped and reported by the agent, report interval 1 s, audit log on) for a fixed time, then the test checks that counters, events and the audit log add up exactly. Its printed figures are below, verbatim too.".into());
    let mut t = Table::new(
        "d. Event storm (forbidden UDP flows through the lab at the agent)",
        "packets/s sent | events delivered | events/s delivered | events lost | agent CPU % (storm) | agent CPU % (until drained) | agent RSS max | agent RSS high-water",
    );
    let n = |v: Option<f64>| v.map_or("—".into(), thousands);
    let pct = |v: Option<f64>| v.map_or("—".into(), |x| format!("{x:.1}"));
    let mib = |v: Option<f64>| v.map_or("—".into(), |k| format!("{:.1} MiB", k / 1024.0));
    t.row(vec![
        n(f.packets_per_sec),
        n(f.delivered),
        n(f.events_per_sec),
        n(f.lost),
        pct(f.cpu_storm),
        pct(f.cpu_drain),
        mib(f.rss_max_kib),
        mib(f.rss_hwm_kib),
    ]);
    t.note("Agent CPU: user + system time of the agent process over wall time, 100% = one core. Events lost: `envfence_datapath_total{kind=\"events_lost\"}` (ring buffer full; the packets of a lost report are carried into the flow's next one).");
    s.tables.push(t);
    s.verbatim = lines;
    if !out.status.success() {
        let tail: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .chain(stdout.lines())
            .filter(|l| l.contains("panicked") || l.contains("Error") || l.contains("error"))
            .take(10)
            .map(str::to_string)
            .collect();
        s.error = Some(format!(
            "the storm test's own checks failed ({}; the figures it printed are shown): {}",
            out.status,
            tail.join(" / ")
        ));
    } else if f.events_per_sec.is_none() {
        s.error =
            Some("the storm test passed but printed no figures this bench understands".into());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_storm_figures() {
        let lines: Vec<String> = [
            "storm figures (2 CPUs, 3 pinned sender threads, 12288 flows, report interval 1000 ms, audit log on):",
            "  events: 40000 delivered during the storm = 4000 events/s; 123 report attempts lost (ring buffer full)",
            "  sent: 1234567 datagrams in 10.0 s = 123457 packets/s (0 sends failed, 12 dropped by the veth)",
            "  agent CPU: 35.5% during the storm, 20.1% until every event was printed (12.0 s)",
            "  agent RSS: 10000 KiB before, 20480 KiB max sampled, 19000 KiB after, 21000 KiB high-water mark",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = parse(&lines);
        assert_eq!(f.packets_per_sec, Some(123457.0));
        assert_eq!(f.delivered, Some(40000.0));
        assert_eq!(f.events_per_sec, Some(4000.0));
        assert_eq!(f.lost, Some(123.0));
        assert_eq!(f.cpu_storm, Some(35.5));
        assert_eq!(f.cpu_drain, Some(20.1));
        assert_eq!(f.rss_max_kib, Some(20480.0));
        assert_eq!(f.rss_hwm_kib, Some(21000.0));
        // The older wording.
        assert_eq!(
            number_after("= 4000 events/s, 123 lost", "events/s"),
            Some(123.0)
        );
    }
}
