//! The agent's API socket the CLI talks to: raw requests get clear errors,
//! and only root and the `--api-group` may connect.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::process::Command;

use anyhow::{anyhow, bail, Result};
use envfence_tests::agent::agent_binary;
use envfence_tests::cli::*;
use envfence_tests::fixture::agent_lock;
use envfence_tests::lab::require_root;

/// The API itself: read-only, clear errors.
#[test]
fn api_is_read_only_with_clear_errors() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    // The API itself: read-only, clear errors.
    let (code, body) = raw_http(&s.socket, "GET /v1/flows?verdict=nope HTTP/1.1")?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nope"), "{body}");
    let (code, body) = raw_http(&s.socket, "GET /v1/nothing HTTP/1.1")?;
    assert_eq!(code, 404, "{body}");
    let (code, _) = raw_http(&s.socket, "POST /v1/status HTTP/1.1")?;
    assert_eq!(code, 405);
    let (code, body) = raw_http(&s.socket, "GET /v1/top?by=src&limit=1 HTTP/1.1")?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}

/// The socket is root's (and the --api-group's) only: its directory 0750,
/// itself 0660; a user outside the group cannot connect and is told so;
/// a member of the group can.
#[test]
fn api_socket_is_for_root_and_its_group_only() -> Result<()> {
    require_root()?;
    let user = TempUser::create()?;
    let s = start(&["--api-group", &user.name])?;
    let dir = s
        .socket
        .parent()
        .ok_or_else(|| anyhow!("socket without directory"))?;
    let dmeta = std::fs::metadata(dir)?;
    assert_eq!(dmeta.permissions().mode() & 0o777, 0o750);
    assert_eq!((dmeta.uid(), dmeta.gid()), (0, user.gid));
    let smeta = std::fs::symlink_metadata(&s.socket)?;
    assert_eq!(smeta.permissions().mode() & 0o777, 0o660);
    assert_eq!((smeta.uid(), smeta.gid()), (0, user.gid));
    let bin = agent_binary()?;
    let sock = s.socket();

    // Root: fine.
    let f = s.api(&["flows", "-o", "json"])?.ok()?;
    f.json()?;
    // Another user, not in the group: refused, and told why.
    let outsider = as_user(&bin, user.uid, 65534, &["flows", "--socket", &sock])?.code(1)?;
    assert!(
        outsider
            .stderr
            .contains(&format!("permission denied on {sock}")),
        "{}",
        outsider.stderr
    );
    assert!(
        outsider.stderr.contains("--api-group"),
        "{}",
        outsider.stderr
    );
    // status does not call an agent it cannot reach "down".
    let st = as_user(&bin, user.uid, 65534, &["status", "--socket", &sock])?.code(1)?;
    assert!(
        st.stderr.contains(&format!("permission denied on {sock}")),
        "{}",
        st.stderr
    );
    assert!(!st.stdout.contains("DOWN"), "{}", st.stdout);
    // The same user with the group: answered.
    let member = as_user(
        &bin,
        user.uid,
        user.gid,
        &["flows", "--socket", &sock, "-o", "json"],
    )?
    .ok()?;
    member.json()?;
    Ok(())
}

/// `bin ARGS` run as `uid`:`gid` with no supplementary groups.
fn as_user(bin: &std::path::Path, uid: u32, gid: u32, args: &[&str]) -> Result<Run> {
    run_cmd(
        Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
            .args(["--clear-groups", "--"])
            .arg(bin)
            .args(args),
    )
}

/// A system user and group made for one test, removed when dropped.
struct TempUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TempUser {
    fn create() -> Result<TempUser> {
        let name = format!("efcli{}", std::process::id());
        remove_user(&name);
        run_cmd(Command::new("groupadd").args(["--system", &name]))?.ok()?;
        let mut useradd = Command::new("useradd");
        useradd.args("--system --no-create-home --shell /usr/sbin/nologin --gid".split(' '));
        let made = run_cmd(useradd.args([&name, &name]))?;
        if made.code != 0 {
            remove_user(&name);
            bail!("useradd {name}: {}", made.stderr);
        }
        let user = nix::unistd::User::from_name(&name)?
            .ok_or_else(|| anyhow!("user {name} was not created"))?;
        Ok(TempUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        remove_user(&self.name);
    }
}

/// Removes user `name` and group `name` where they exist.
fn remove_user(name: &str) {
    let _ = run_cmd(Command::new("userdel").arg(name));
    let _ = run_cmd(Command::new("groupdel").arg(name));
}
