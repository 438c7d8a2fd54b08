//! What the benchmark ran on: CPU, cores, kernel, memory, load, tools,
//! date, and the envfence commit.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::table::Table;

#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub os: String,
    pub memory: String,
    pub load_at_start: String,
    pub date: String,
    pub commit: String,
    pub tools: Vec<(String, String)>,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let hypervisor = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "hypervisor"));
        let cpu = if hypervisor {
            format!("{cpu} (virtual machine)")
        } else {
            cpu
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = first_line("/proc/sys/kernel/osrelease");
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or("unknown".into(), |kib| {
                format!("{:.1} GiB", kib / 1024.0 / 1024.0)
            });
        let load_at_start = load_average();
        let commit = {
            let rev = command_line("git", &["rev-parse", "--short=12", "HEAD"]);
            let dirty = Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .current_dir(workspace())
                .output()
                .ok()
                .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
            match rev {
                Some(r) if dirty => format!("{r} + uncommitted changes"),
                Some(r) => r,
                None => "unknown".into(),
            }
        };
        let tools = [
            ("iperf3", vec!["--version"]),
            ("nft", vec!["--version"]),
            ("iptables", vec!["--version"]),
        ]
        .into_iter()
        .map(|(t, args)| {
            let v = command_line(t, &args).unwrap_or_else(|| "not found".into());
            (t.to_string(), v)
        })
        .collect();
        Machine {
            cpu,
            cores,
            kernel,
            os,
            memory,
            load_at_start,
            date: utc_now(),
            commit,
            tools,
        }
    }

    pub fn table(&self) -> Table {
        let mut t = Table::new("Machine", "what | value");
        t.row(vec!["CPU".into(), self.cpu.clone()]);
        t.row(vec!["cores (online)".into(), self.cores.to_string()]);
        t.row(vec!["kernel".into(), self.kernel.clone()]);
        t.row(vec!["OS".into(), self.os.clone()]);
        t.row(vec!["memory".into(), self.memory.clone()]);
        t.row(vec![
            "load average at start (1/5/15 min)".into(),
            self.load_at_start.clone(),
        ]);
        t.row(vec!["date (UTC)".into(), self.date.clone()]);
        t.row(vec!["envfence commit".into(), self.commit.clone()]);
        for (tool, v) in &self.tools {
            t.row(vec![tool.clone(), v.clone()]);
        }
        t
    }
}

/// The 1/5/15-minute load averages.
pub fn load_average() -> String {
    first_line("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn workspace() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(workspace())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
