//! A real rsyslog (Debian's `rsyslog`, `rsyslog-gnutls` for TLS) as the
//! SIEM: started by the test on the loopback of a lab namespace (where the
//! agent runs), on a free port, receiving RFC 5424 over TCP or TLS and
//! writing the message of every envfence record, unchanged, to one file.
//! It can be stopped and started again on the same port. The lab kills it
//! when dropped; its files live in the test's temporary directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::lab::{wait_until, Lab, LabProcess, NODE};

/// A test CA and the certificates made with it (openssl CLI).
pub struct TestCa {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// `openssl WORDS` (separated by spaces) in `dir`, with `-subj SUBJECT`.
fn openssl(dir: &Path, words: &str, subject: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(words.split_whitespace());
    if let Some(subject) = subject {
        cmd.args(["-subj", subject]);
    }
    let out = cmd.output().context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {words}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl TestCa {
    /// A CA `name` (no spaces) in `dir`, a server certificate for
    /// 127.0.0.1 and `localhost`, and a client certificate.
    pub fn make(dir: &Path, name: &str) -> Result<TestCa> {
        ensure!(!name.contains(char::is_whitespace), "CA name {name:?}");
        std::fs::create_dir_all(dir)?;
        let p = |f: &str| dir.join(format!("{name}-{f}"));
        let ca = format!("-CA {name}-ca.pem -CAkey {name}-ca.key");
        let key = "-newkey rsa:2048 -nodes";
        let out = format!("-keyout {name}-ca.key -out {name}-ca.pem");
        let subject = format!("/CN={name} test CA");
        openssl(
            dir,
            &format!("req -x509 {key} -days 2 {out}"),
            Some(&subject),
        )?;
        for (who, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(p(&format!("{who}.ext")), ext)?;
            let f = format!("{name}-{who}");
            let req = format!("req {key} -keyout {f}.key -out {f}.csr");
            openssl(dir, &req, Some(&format!("/CN={who}")))?;
            let sign = format!("x509 -req -in {f}.csr {ca} -CAcreateserial -days 2");
            openssl(dir, &format!("{sign} -extfile {f}.ext -out {f}.pem"), None)?;
        }
        Ok(TestCa {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
        })
    }
}

/// The receiver.
pub struct Rsyslog<'a> {
    lab: &'a Lab,
    dir: PathBuf,
    conf: PathBuf,
    /// The file of received envfence messages.
    pub out: PathBuf,
    pub port: u16,
    process: Option<LabProcess>,
}

impl<'a> Rsyslog<'a> {
    /// Starts rsyslogd in the lab's node namespace, on 127.0.0.1 and a
    /// free port; with `tls`, the port speaks TLS and wants a client
    /// certificate signed by the CA.
    pub fn start(lab: &'a Lab, dir: &Path, tls: Option<&TestCa>) -> Result<Rsyslog<'a>> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(dir.join("work"))?;
        let port = lab.in_ns(NODE, || -> Result<u16> {
            Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
        })??;
        let out = dir.join("siem.log");
        let (global_tls, module_tls) = match tls {
            Some(ca) => (
                format!(
                    "global(defaultNetstreamDriver=\"gtls\" defaultNetstreamDriverCAFile=\"{}\" defaultNetstreamDriverCertFile=\"{}\" defaultNetstreamDriverKeyFile=\"{}\")\n",
                    ca.ca.display(),
                    ca.server_cert.display(),
                    ca.server_key.display()
                ),
                " streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"x509/certvalid\"",
            ),
            None => (String::new(), ""),
        };
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{work}\" maxMessageSize=\"256k\")\n{global_tls}\
                 module(load=\"imtcp\"{module_tls})\n\
                 input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
                 template(name=\"raw\" type=\"string\" string=\"%msg%\\n\")\n\
                 if $app-name == \"envfence\" then {{\n  action(type=\"omfile\" file=\"{out}\" template=\"raw\")\n  stop\n}}\n",
                work = dir.join("work").display(),
                out = out.display(),
            ),
        )?;
        let mut r = Rsyslog {
            lab,
            dir,
            conf,
            out,
            port,
            process: None,
        };
        r.restart()?;
        Ok(r)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on the same port and waits until it listens.
    pub fn restart(&mut self) -> Result<()> {
        ensure!(self.process.is_none(), "rsyslog is already running");
        let mut cmd = Command::new("rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"));
        let process = self.lab.spawn_in_ns(NODE, cmd).context(
            "starting rsyslogd (Debian packages rsyslog, rsyslog-gnutls: `cargo xtask setup`)",
        )?;
        let port = self.port;
        let listening = wait_until(Duration::from_secs(15), || {
            !process.is_running()
                || self
                    .lab
                    .in_ns(NODE, move || {
                        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    })
                    .unwrap_or(false)
        });
        if !listening || !process.is_running() {
            bail!(
                "rsyslogd does not listen on 127.0.0.1:{port}; its stderr:\n{}",
                process.stderr_tail(20)
            );
        }
        self.process = Some(process);
        Ok(())
    }

    /// Stops it (SIGTERM: it writes what it read, then exits).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(p) = self.process.take() {
            let (_, killed) = p.terminate(Duration::from_secs(10))?;
            ensure!(!killed, "rsyslogd did not stop on SIGTERM");
        }
        Ok(())
    }

    pub fn stderr(&self) -> String {
        self.process
            .as_ref()
            .map_or_else(String::new, |p| p.stderr_tail(20))
    }

    /// The lines it wrote.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until a record with `seq` was written.
    pub fn wait_for_seq(&self, seq: u64, timeout: Duration) -> bool {
        let needle = format!("{{\"seq\":{seq},");
        wait_until(timeout, || {
            std::thread::sleep(Duration::from_millis(100));
            self.lines().iter().any(|l| l.starts_with(&needle))
        })
    }
}
