//! Least privilege, proved in the lab. The agent runs in the node namespace
//! the way the DaemonSet runs it in a cluster: uid 0 with every capability
//! dropped but those of deploy/capabilities.txt (bounding, permitted and
//! effective sets; nothing inheritable or ambient, as containerd does),
//! no_new_privs (allowPrivilegeEscalation: false), a read-only root
//! filesystem (readOnlyRootFilesystem: true) and a read-only /sys (what a
//! container that is not privileged gets), the ConfigMap's policy. Then:
//!
//! - with exactly that set it enforces: test -> production is dropped,
//!   production -> production passes; it pins its state; the CLI commands
//!   of `kubectl exec` (status, flows, explain) work with the same set; the
//!   kernel keeps enforcing while no agent runs (an upgrade), the next agent
//!   adopts, and one with --detach-on-exit (deploy/uninstall) leaves
//!   nothing behind;
//! - with any one required capability of the set removed it refuses to
//!   start, naming the missing capability (the agent's preflight check,
//!   agent/src/caps.rs); with that check skipped, the kernel refuses too:
//!   each capability is really needed (if one stops being needed, this test
//!   says so);
//! - without a wanted one (NET_BROADCAST) it enforces and warns naming it,
//!   and with the check skipped the kernel refuses what it is for (following
//!   peer addresses), which the agent reports;
//! - CAP_SYS_ADMIN alone passes the check and works, as the kernel accepts it
//!   for all three: the check does not refuse what the kernel allows.
//!
//! Needs root (CI runs as root) and `setpriv` (util-linux).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use envfence::caps::{self, CapSet};
use envfence_tests::agent::{agent_binary, Agent, AgentOptions, METRICS_ADDR, READY_LINE};
use envfence_tests::fixture::{serial, workspace};
use envfence_tests::lab::{wait_until, Family, Lab, LabProcess, PodSpec, NODE};

/// The DaemonSet's capabilities (deploy/capabilities.txt), as numbers.
fn deployed() -> Vec<u8> {
    let path = workspace().join("deploy/capabilities.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            caps::from_name(l)
                .unwrap_or_else(|| panic!("{}: unknown capability {l}", path.display()))
        })
        .collect()
}

/// `CAP_NET_ADMIN` -> `net_admin` (setpriv's spelling).
fn setpriv_name(cap: u8) -> String {
    caps::name(cap)
        .trim_start_matches("CAP_")
        .to_ascii_lowercase()
}

/// A launcher script that starts the agent binary confined as in the
/// DaemonSet, with `keep` as its only capabilities. It runs in the private
/// mount namespace [`Lab::spawn_in_ns`] gives every process, so its mounts
/// and read-only remounts touch nothing outside. Its /run/envfence is a
/// directory of the launcher's that outlives each agent, as the hostPath
/// does in a cluster.
struct Launcher {
    dir: PathBuf,
    path: PathBuf,
    setpriv: &'static str,
    bounding: String,
    bin: PathBuf,
}

impl Launcher {
    fn new(name: &str, keep: &[u8]) -> Result<Launcher> {
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .context("setpriv (util-linux) is needed to drop capabilities")?;
        let bin = agent_binary()?;
        let dir = std::env::temp_dir().join(format!("envfence-caps-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let host_run = dir.join("run-envfence");
        std::fs::create_dir_all(&host_run)
            .with_context(|| format!("creating {}", host_run.display()))?;
        let bounding = format!(
            "--bounding-set=-all{}",
            keep.iter()
                .map(|&c| format!(",+{}", setpriv_name(c)))
                .collect::<String>()
        );
        let script = format!(
            "#!/bin/sh\n\
             set -e\n\
             # /run/envfence: the hostPath of the state and the API socket\n\
             # (writable, kept across agents) in a /run of this mount namespace.\n\
             mount -t tmpfs -o mode=0755,size=1m envfence-run /run\n\
             mkdir /run/envfence\n\
             mount --bind {host_run} /run/envfence\n\
             # readOnlyRootFilesystem: true, and the read-only /sys of a container\n\
             # that is not privileged (/sys/fs/bpf stays a writable mount of its own).\n\
             mount -o remount,bind,ro /run\n\
             mount -o remount,bind,ro /\n\
             mount -o remount,bind,ro /sys\n\
             # uid 0; bounding = permitted = effective = the kept set, nothing\n\
             # inheritable or ambient; no_new_privs.\n\
             exec {setpriv} --no-new-privs --inh-caps=-all --ambient-caps=-all \
             {bounding} -- {bin} \"$@\"\n",
            host_run = host_run.display(),
            bin = bin.display()
        );
        let path = dir.join("confined-envfence");
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))?;
        Ok(Launcher {
            dir,
            path,
            setpriv,
            bounding,
            bin,
        })
    }

    /// `kubectl exec`: runs `envfence ARGS` in the namespaces of the running
    /// agent `pid` (its mounts and network), with the same capabilities.
    fn exec(&self, pid: u32, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-m", "-n", "--", self.setpriv])
            .args(["--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all"])
            .args([&self.bounding, "--"])
            .arg(&self.bin)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null());
        cmd.output().context("running nsenter (util-linux)")
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The ConfigMap's policy file.
fn policy_file() -> PathBuf {
    workspace().join("deploy/base/policy.yaml")
}

/// The agent's default state directory and API socket, as the DaemonSet
/// uses them (Agent::start_with would choose others).
const DAEMONSET_DIRS: &str = "--state-dir /run/envfence --api-socket /run/envfence/envfence.sock";

/// The options of the DaemonSet's agent: its policy and directories.
fn daemonset_options() -> AgentOptions {
    AgentOptions::config(&policy_file()).args(DAEMONSET_DIRS.split(' '))
}

/// Whether the agent `p` exited or said it is ready within 60 s.
fn settles(p: &LabProcess) -> bool {
    wait_until(Duration::from_secs(60), || {
        !p.is_running() || p.stderr_lines().iter().any(|l| l.contains(READY_LINE))
    })
}

/// `envfence_attached_interfaces` of the agent in the lab's node.
fn attached(lab: &Lab) -> Result<f64> {
    let metrics = lab.http_get(NODE, METRICS_ADDR, "/metrics")?;
    let name = "envfence_attached_interfaces";
    Ok(envfence_tests::metric_value(&metrics, name, &[]).unwrap_or(0.0))
}

/// Starts the launcher in the node namespace with the agent's arguments.
fn spawn(lab: &Lab, launcher: &Launcher, skip_check: bool) -> Result<LabProcess> {
    let mut cmd = Command::new(&launcher.path);
    cmd.arg("agent")
        .arg("--config")
        .arg(policy_file())
        .args(["--metrics-addr", METRICS_ADDR])
        .args(DAEMONSET_DIRS.split(' '))
        .env("NO_COLOR", "1");
    if skip_check {
        cmd.env(caps::SKIP_ENV, "1");
    }
    lab.spawn_in_ns(NODE, cmd)
}

/// What became of an agent that should not enforce.
enum Outcome {
    /// It exited (status, its stderr).
    Exited(ExitStatus, String),
    /// It started but attached to nothing.
    AttachedNothing(String),
}

/// Waits until the agent exits, or is ready; fails if it enforces.
fn must_not_enforce(lab: &Lab, p: &LabProcess) -> Result<Outcome> {
    ensure!(settles(p), "the agent neither exited nor became ready");
    if let Some(status) = p.wait_timeout(Duration::from_millis(200))? {
        return Ok(Outcome::Exited(status, p.stderr_tail(40)));
    }
    let attached = attached(lab)?;
    if attached == 0.0 {
        return Ok(Outcome::AttachedNothing(p.stderr_tail(40)));
    }
    bail!(
        "the agent enforces ({attached} interfaces attached): the capability removed is not \
         needed; its stderr:\n{}",
        p.stderr_tail(40)
    )
}

/// The capability sets of a process, from /proc/PID/status.
fn proc_caps(pid: u32) -> Result<(String, [CapSet; 5])> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get = |f: &str| CapSet::from_status(&status, f);
    let [eff, prm, bnd, inh, amb] = ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"].map(get);
    let sets = [eff?, prm?, bnd?, inh?, amb?];
    Ok((status, sets))
}

const BLOCKED: Duration = Duration::from_millis(1000);
const PASSES: Duration = Duration::from_secs(5);

#[test]
fn enforces_with_exactly_the_daemonset_capabilities() -> Result<()> {
    let _guard = serial();
    let set = deployed();
    let launcher = Launcher::new("exact", &set)?;
    let lab = Lab::example()?;
    let opts = daemonset_options();
    let agent = Agent::start_with(&lab, &launcher.path, &opts)?;
    let pid = agent.process().pid();

    // It runs confined exactly as intended.
    let (status, [eff, prm, bnd, inh, amb]) = proc_caps(pid)?;
    let want = CapSet::of(&set);
    assert_eq!(eff, want, "effective: {eff}");
    assert_eq!(prm, want, "permitted: {prm}");
    assert_eq!(bnd, want, "bounding: {bnd}");
    assert_eq!(inh, CapSet(0), "inheritable: {inh}");
    assert_eq!(amb, CapSet(0), "ambient: {amb}");
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t0\t0\t0\t0")),
        "uid 0: {status}"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root_mount = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .context("no / in mountinfo")?;
    assert!(
        root_mount
            .split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|x| x == "ro")),
        "the root filesystem is not read-only: {root_mount}"
    );

    // Nothing it wants is missing: peer addresses are followed.
    let stderr = agent.process().stderr_tail(200);
    assert!(!stderr.contains(caps::PEERS_NOT_FOLLOWED), "{stderr}");
    assert!(!stderr.contains("envfence lacks capability"), "{stderr}");

    // And it enforces.
    assert!(agent.metric("envfence_attached_interfaces", &[])? >= 7.0);
    for family in [Family::V4, Family::V6] {
        let prod1 = lab.pod("prod1")?.ip(family);
        let _l = lab.tcp_listen("prod1", prod1, 8080)?;
        assert!(
            !lab.tcp_connect("test1", prod1, 8080, BLOCKED)?,
            "test1 -> prod1 tcp/8080 connected ({family:?})"
        );
        assert!(
            lab.tcp_connect("prod2", prod1, 8080, PASSES)?,
            "prod2 -> prod1 tcp/8080 did not connect ({family:?})"
        );
        let test1 = lab.pod("test1")?.ip(family);
        let dropped = wait_until(Duration::from_secs(5), || {
            agent.events().iter().any(|e| {
                e.src == test1 && e.dst == prod1 && e.verdict == "drop" && e.rule == "test-to-prod"
            })
        });
        assert!(dropped, "no drop event for test1 -> prod1 ({family:?})");
    }
    let pins = lab.bpffs_dir().map(|d| d.join("envfence"));
    if let Some(pins) = &pins {
        assert!(
            pin_count(pins) > 0,
            "nothing pinned under {}",
            pins.display()
        );
    }

    // `kubectl exec ds/envfence -- envfence ...` (README, "Deploy to a
    // cluster") works with the container's capabilities.
    let (test1, prod1) = (
        lab.pod("test1")?.ip(Family::V4).to_string(),
        lab.pod("prod1")?.ip(Family::V4).to_string(),
    );
    let investigate: [&[&str]; 3] = [
        &["status"],
        &["flows", "--verdict", "drop"],
        &[
            "explain", &test1, &prod1, "--proto", "tcp", "--port", "8080",
        ],
    ];
    for args in investigate {
        let out = launcher.exec(pid, args)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "envfence {} failed ({}): {text}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if args[0] != "status" {
            assert!(text.contains("drop"), "envfence {}: {text}", args.join(" "));
        }
    }

    // An upgrade (the pod restarted): the kernel keeps enforcing while no
    // agent runs, and the next agent, as confined, adopts what is pinned.
    agent.stop_ok(Duration::from_secs(10))?;
    let prod1 = lab.pod("prod1")?.ip(Family::V4);
    let _l = lab.tcp_listen("prod1", prod1, 8080)?;
    assert!(
        !lab.tcp_connect("test1", prod1, 8080, BLOCKED)?,
        "no agent running: test1 -> prod1 connected (enforcement did not outlive the agent)"
    );
    assert!(lab.tcp_connect("prod2", prod1, 8080, PASSES)?);

    // Uninstall (deploy/uninstall adds --detach-on-exit): the next agent
    // adopts, and on SIGTERM detaches and removes every pin.
    let uninstall = opts.clone().args(["--detach-on-exit"]);
    let agent = Agent::start_with(&lab, &launcher.path, &uninstall)?;
    assert!(!lab.tcp_connect("test1", prod1, 8080, BLOCKED)?);
    agent.stop_ok(Duration::from_secs(10))?;
    assert!(
        lab.tcp_connect("test1", prod1, 8080, PASSES)?,
        "after the uninstall run test1 -> prod1 is still blocked"
    );
    if let Some(pins) = &pins {
        assert_eq!(pin_count(pins), 0, "pins left under {}", pins.display());
    }
    Ok(())
}

/// Files (pins) below `dir`, recursively; 0 when it does not exist.
fn pin_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let path = e.path();
                if path.is_dir() {
                    pin_count(&path)
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn each_capability_is_needed_and_named_when_missing() -> Result<()> {
    let _guard = serial();
    let set = deployed();
    let lab = Lab::new(&PodSpec::example_pods()[..2])?;
    for &gone in &set {
        let keep: Vec<u8> = set.iter().copied().filter(|&c| c != gone).collect();
        let launcher = Launcher::new(&setpriv_name(gone), &keep)?;
        if caps::WANTED.iter().any(|r| r.capability == gone) {
            without_a_wanted_one(&lab, &launcher, gone, &keep)?;
            continue;
        }

        // The agent's check names the missing capability, and only it.
        let p = spawn(&lab, &launcher, false)?;
        let status = p
            .wait_timeout(Duration::from_secs(30))?
            .context("the agent should exit at once")?;
        let stderr = p.stderr_tail(20);
        assert!(!status.success(), "started without {}", caps::name(gone));
        let expected = format!("envfence needs capability {} (", caps::name(gone));
        assert!(
            stderr.contains(&expected),
            "without {} the agent should say {expected:?}; it says:\n{stderr}",
            caps::name(gone)
        );
        assert!(
            stderr.contains(&format!("it has: {}", CapSet::of(&keep))),
            "{stderr}"
        );
        assert_eq!(
            stderr.matches("envfence needs capability").count(),
            1,
            "{stderr}"
        );
        assert!(!stderr.contains(READY_LINE), "{stderr}");

        // With the check skipped, the kernel refuses: the capability is
        // needed, not just asked for.
        let p = spawn(&lab, &launcher, true)?;
        match must_not_enforce(&lab, &p)? {
            Outcome::Exited(status, stderr) => {
                assert!(!status.success(), "{stderr}");
                // The verifier's reason when there is one, else the error.
                let why = stderr
                    .lines()
                    .find(|l| l.contains("prohibited"))
                    .or_else(|| stderr.lines().find(|l| l.contains("error")))
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect::<String>();
                eprintln!("without {}, the kernel: {why}", caps::name(gone));
            }
            Outcome::AttachedNothing(stderr) => {
                eprintln!(
                    "without {}, the agent attached nothing:\n{stderr}",
                    caps::name(gone)
                );
                p.terminate(Duration::from_secs(10))?;
            }
        }
    }

    // No capability at all: all the required ones named.
    let launcher = Launcher::new("none", &[])?;
    let p = spawn(&lab, &launcher, false)?;
    p.wait_timeout(Duration::from_secs(30))?
        .context("the agent should exit at once")?;
    let stderr = p.stderr_tail(20);
    for c in caps::REQUIRED.iter().map(|r| r.capability) {
        assert!(
            stderr.contains(&format!("envfence needs capability {} (", caps::name(c))),
            "{stderr}"
        );
    }
    assert!(stderr.contains("it has: none"), "{stderr}");
    Ok(())
}

/// Without a wanted capability the agent starts, enforces and warns naming
/// it (and only it); with the check skipped the kernel refuses what the
/// capability is for, and the agent says so and still enforces.
fn without_a_wanted_one(lab: &Lab, launcher: &Launcher, gone: u8, keep: &[u8]) -> Result<()> {
    let lacks = format!("envfence lacks capability {} (", caps::name(gone));
    for skip_check in [false, true] {
        let p = spawn(lab, launcher, skip_check)?;
        let ready = settles(&p);
        let stderr = p.stderr_tail(40);
        ensure!(
            ready && p.is_running(),
            "without {} (check skipped: {skip_check}) the agent should enforce:\n{stderr}",
            caps::name(gone)
        );
        ensure!(attached(lab)? > 0.0, "attached nothing:\n{stderr}");
        // The kernel refuses the subscription either way.
        ensure!(
            stderr.contains(caps::PEERS_NOT_FOLLOWED),
            "without {} the kernel should refuse following peer addresses:\n{stderr}",
            caps::name(gone)
        );
        if skip_check {
            ensure!(!stderr.contains(&lacks), "{stderr}");
        } else {
            ensure!(
                stderr.contains(&lacks),
                "the agent should say {lacks:?}:\n{stderr}"
            );
            ensure!(
                stderr.contains(&format!("it has: {}", CapSet::of(keep))),
                "{stderr}"
            );
            ensure!(!stderr.contains("envfence needs capability"), "{stderr}");
        }
        eprintln!(
            "without {} (check skipped: {skip_check}): {}",
            caps::name(gone),
            stderr
                .lines()
                .find(|l| l.contains(caps::PEERS_NOT_FOLLOWED))
                .unwrap_or("")
        );
        p.terminate(Duration::from_secs(10))?;
    }
    Ok(())
}

/// CAP_SYS_ADMIN alone passes the check, and the kernel agrees (it accepts
/// it for bpf, perfmon and net-admin program types): the check refuses
/// nothing the kernel allows.
#[test]
fn sys_admin_alone_is_accepted_as_the_kernel_accepts_it() -> Result<()> {
    let _guard = serial();
    let launcher = Launcher::new("sys_admin", &[caps::CAP_SYS_ADMIN])?;
    let lab = Lab::new(&PodSpec::example_pods()[..2])?;
    let agent = Agent::start_with(&lab, &launcher.path, &daemonset_options())?;
    let (_, [eff, ..]) = proc_caps(agent.process().pid())?;
    assert_eq!(eff, CapSet::of(&[caps::CAP_SYS_ADMIN]));
    assert_eq!(agent.metric("envfence_attached_interfaces", &[])?, 2.0);
    agent.stop_ok(Duration::from_secs(10))?;
    Ok(())
}
