//! A connection to the syslog receiver: plain TCP, or TLS (rustls) with a
//! CA and optionally a client certificate.

use std::{
    io::{Read as _, Write},
    net::{Shutdown, TcpStream, ToSocketAddrs as _},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{pki_types::ServerName, ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

/// TLS settings (the options that name them in errors).
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// `--syslog-ca`: the CA that signed the receiver's certificate (PEM).
    pub ca: PathBuf,
    /// `--syslog-cert` and `--syslog-key`: a client certificate, when the
    /// receiver asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
    /// `--syslog-server-name`: the name the receiver's certificate must
    /// carry (default: the host of `--syslog-addr`).
    pub server_name: String,
}

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {value}: {reason}")]
pub struct TlsError {
    pub setting: &'static str,
    pub value: String,
    pub reason: String,
}

fn bad(setting: &'static str, value: impl ToString, reason: impl ToString) -> TlsError {
    TlsError {
        setting,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Builds the client configuration; every file is read and checked now.
pub fn client_config(
    opts: &TlsOptions,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), TlsError> {
    let show = |p: &PathBuf| p.display().to_string();
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&opts.ca)
        .map_err(|e| {
            bad(
                "--syslog-ca",
                show(&opts.ca),
                format!("cannot read a PEM file: {e}"),
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            bad(
                "--syslog-ca",
                show(&opts.ca),
                format!("not a PEM certificate file: {e}"),
            )
        })?;
    if cas.is_empty() {
        return Err(bad(
            "--syslog-ca",
            show(&opts.ca),
            "no certificate in the file",
        ));
    }
    for ca in cas {
        roots.add(ca).map_err(|e| {
            bad(
                "--syslog-ca",
                show(&opts.ca),
                format!("not a usable CA certificate: {e}"),
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("--syslog-tls", "", e))?
        .with_root_certificates(roots);
    let config = match &opts.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| {
                    bad(
                        "--syslog-cert",
                        show(cert),
                        format!("cannot read a PEM file: {e}"),
                    )
                })?
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    bad(
                        "--syslog-cert",
                        show(cert),
                        format!("not a PEM certificate file: {e}"),
                    )
                })?;
            if chain.is_empty() {
                return Err(bad(
                    "--syslog-cert",
                    show(cert),
                    "no certificate in the file",
                ));
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                bad(
                    "--syslog-key",
                    show(key),
                    format!("no PEM private key: {e}"),
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                bad(
                    "--syslog-key",
                    show(key),
                    format!("does not go with --syslog-cert: {e}"),
                )
            })?
        }
    };
    let name = ServerName::try_from(opts.server_name.clone())
        .map_err(|e| bad("--syslog-server-name", &opts.server_name, e))?;
    Ok((Arc::new(config), name))
}

/// An open connection.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write blocked this long (a receiver that stopped reading) breaks the
/// connection; the records are resent on the next one.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

impl Conn {
    /// Connects (and completes the TLS handshake). The error says what
    /// failed, for the log.
    pub fn open(
        addr: &str,
        tls: Option<&(Arc<ClientConfig>, ServerName<'static>)>,
    ) -> Result<Conn, String> {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve it: {e}"))?
            .collect();
        let mut last = String::from("no address");
        let mut sock = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = format!("connecting to {a}: {e}"),
            }
        }
        let sock = sock.ok_or(last)?;
        let _ = sock.set_nodelay(true);
        sock.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let Some((config, name)) = tls else {
            return Ok(Conn::Plain(sock));
        };
        let conn = ClientConnection::new(Arc::clone(config), name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(|e| {
                format!(
                    "TLS handshake: {e} (check --syslog-ca, --syslog-server-name, --syslog-cert)"
                )
            })?;
        }
        Ok(Conn::Tls(Box::new(stream)))
    }

    fn sock(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }

    pub fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data),
            Conn::Tls(t) => t.write_all(data),
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(t) => t.flush(),
        }
    }

    /// Whether the receiver closed the connection (or broke it): a syslog
    /// receiver never sends anything but TLS housekeeping (session
    /// tickets), so end of stream, an error or data is the end.
    pub fn peer_closed(&mut self) -> bool {
        if self.sock().set_nonblocking(true).is_err() {
            return true;
        }
        let closed = match self {
            Conn::Plain(sock) => {
                let mut b = [0u8; 1];
                match sock.peek(&mut b) {
                    Ok(_) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                }
            }
            Conn::Tls(t) => loop {
                match t.conn.read_tls(&mut t.sock) {
                    Ok(0) => break true,
                    Ok(_) => {
                        if t.conn.process_new_packets().is_err() {
                            break true;
                        }
                        let mut b = [0u8; 64];
                        match t.conn.reader().read(&mut b) {
                            // close_notify, or application data (never sent
                            // by a receiver).
                            Ok(_) => break true,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break true,
                        }
                    }
                    Err(e) => break e.kind() != std::io::ErrorKind::WouldBlock,
                }
            },
        };
        let _ = self.sock().set_nonblocking(false);
        closed
    }

    /// Ends the connection and waits (up to `wait`) until the receiver has
    /// read everything up to our end of stream and closed its side: then
    /// every record sent was read. `false` when that cannot be known (the
    /// receiver reset the connection or did not answer).
    pub fn close_confirmed(mut self, wait: Duration) -> bool {
        if let Conn::Tls(t) = &mut self {
            t.conn.send_close_notify();
            if t.conn.complete_io(&mut t.sock).is_err() {
                return false;
            }
        }
        if self.flush().is_err() {
            return false;
        }
        let sock = self.sock();
        if sock.shutdown(Shutdown::Write).is_err() {
            return false;
        }
        let deadline = Instant::now() + wait;
        let mut raw: &TcpStream = sock;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || raw.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match raw.read(&mut buf) {
                Ok(0) => return true,
                // TLS: the receiver's close_notify; read on to the end.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}
