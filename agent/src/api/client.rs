//! A small blocking HTTP/1.1 client for the local API's Unix socket (the
//! CLI needs no async runtime for a few GETs and one stream).

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/envfence/envfence.sock";

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "agent not reachable at {} (is it running? is --socket right?): {reason}",
        .socket.display()
    )]
    NotRunning { socket: PathBuf, reason: String },
    #[error(
        "permission denied on {} : the local API is for root and the members of the group the agent was given with --api-group",
        .socket.display()
    )]
    PermissionDenied { socket: PathBuf },
    #[error("talking to the agent at {}: {source}", .socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent at {} answered {status}: {body}", .socket.display())]
    Status {
        socket: PathBuf,
        status: u16,
        body: String,
    },
    #[error("the agent at {} sent an answer this CLI cannot read ({reason}); is it the same envfence version?", .socket.display())]
    Protocol { socket: PathBuf, reason: String },
}

impl ClientError {
    /// Whether the agent is simply not there (as opposed to answering
    /// badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::NotRunning { .. } | ClientError::PermissionDenied { .. }
        )
    }
}

/// A client of one socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// One parsed response head, and the body reader after it.
struct Response {
    status: u16,
    chunked: bool,
    length: Option<usize>,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                socket: self.socket.clone(),
            },
            io::ErrorKind::NotFound => ClientError::NotRunning {
                socket: self.socket.clone(),
                reason: "no such socket".to_owned(),
            },
            io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                socket: self.socket.clone(),
                reason: "connection refused (a stale socket: the agent is gone)".to_owned(),
            },
            _ => ClientError::NotRunning {
                socket: self.socket.clone(),
                reason: e.to_string(),
            },
        })
    }

    fn io(&self) -> impl FnOnce(io::Error) -> ClientError + '_ {
        move |source| ClientError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    fn protocol(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            reason: reason.into(),
        }
    }

    fn request(
        &self,
        path_and_query: &str,
        read_timeout: Option<Duration>,
    ) -> Result<Response, ClientError> {
        let mut stream = self.connect()?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(self.io())?;
        stream.set_read_timeout(read_timeout).map_err(self.io())?;
        let req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: envfence-cli\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).map_err(self.io())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(self.io())?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| self.protocol(format!("status line {:?}", line.trim())))?;
        let (mut chunked, mut length) = (false, None);
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(self.io())?;
            if n == 0 {
                return Err(self.protocol("the headers end early"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if name == "content-length" {
                    length = value.parse().ok();
                }
            }
        }
        Ok(Response {
            status,
            chunked,
            length,
            reader,
        })
    }

    /// GETs `path_and_query` and decodes the JSON answer.
    pub fn get_json<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ClientError> {
        let mut resp = self.request(path_and_query, Some(self.timeout))?;
        let body = self.read_body(&mut resp)?;
        if resp.status != 200 {
            return Err(ClientError::Status {
                socket: self.socket.clone(),
                status: resp.status,
                body: body_message(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| self.protocol(e.to_string()))
    }

    fn read_body(&self, resp: &mut Response) -> Result<Vec<u8>, ClientError> {
        let mut body = Vec::new();
        if resp.chunked {
            let mut chunks = Chunked::new(&mut resp.reader);
            chunks.read_to_end(&mut body).map_err(self.io())?;
        } else if let Some(n) = resp.length {
            body.resize(n, 0);
            resp.reader.read_exact(&mut body).map_err(self.io())?;
        } else {
            resp.reader.read_to_end(&mut body).map_err(self.io())?;
        }
        Ok(body)
    }

    /// GETs a stream of JSON lines and gives each non-empty line to
    /// `on_line` until the agent ends the stream or `on_line` returns
    /// `false`.
    pub fn stream_lines(
        &self,
        path_and_query: &str,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let mut resp = self.request(path_and_query, None)?;
        if resp.status != 200 {
            let body = self.read_body(&mut resp)?;
            return Err(ClientError::Status {
                socket: self.socket.clone(),
                status: resp.status,
                body: body_message(&body),
            });
        }
        let reader: Box<dyn Read + '_> = if resp.chunked {
            Box::new(Chunked::new(&mut resp.reader))
        } else {
            Box::new(&mut resp.reader)
        };
        let mut lines = BufReader::new(reader);
        let mut line = String::new();
        loop {
            line.clear();
            let n = lines.read_line(&mut line).map_err(self.io())?;
            if n == 0 {
                return Ok(());
            }
            let l = line.trim();
            if !l.is_empty() && !on_line(l) {
                return Ok(());
            }
        }
    }
}

/// The `error` of a `{"error": "..."}` body, else the body's text.
fn body_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

/// Decodes a chunked transfer-encoded body.
struct Chunked<'a, R: BufRead> {
    inner: &'a mut R,
    left: usize,
    done: bool,
}

impl<'a, R: BufRead> Chunked<'a, R> {
    fn new(inner: &'a mut R) -> Self {
        Self {
            inner,
            left: 0,
            done: false,
        }
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let mut line = String::new();
        if self.inner.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended inside a chunk",
            ));
        }
        let size = line.trim().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {:?}", line.trim()),
            )
        })?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if self.inner.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    break;
                }
            }
            self.done = true;
        }
        self.left = size;
        Ok(())
    }
}

impl<R: BufRead> Read for Chunked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            self.next_chunk()?;
            if self.done {
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended inside a chunk",
            ));
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoding() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let mut out = String::new();
        Chunked::new(&mut r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello, world");
    }

    #[test]
    fn unreachable_socket_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let e = Client::new(&path)
            .get_json::<serde_json::Value>("/v1/status")
            .unwrap_err();
        assert!(e.is_unreachable());
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("is it running?"), "{text}");
    }
}
