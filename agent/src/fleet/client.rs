//! A client of the Prometheus HTTP API (`/api/v1/query`), with the
//! connection options promtool and amtool take: bearer token, basic auth,
//! a CA file, a client certificate, skipping TLS verification.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use base64::Engine as _;
use serde_json::Value;

/// How to reach Prometheus.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Base URL (`http://prometheus:9090`, or one with a path prefix).
    pub url: String,
    /// `Authorization: Bearer` credentials.
    pub bearer_token: Option<String>,
    /// Basic auth user and password.
    pub basic_auth: Option<(String, String)>,
    /// PEM file of the CA(s) that signed the server's certificate (instead
    /// of the built-in web roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key (mutual TLS).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure_skip_verify: bool,
    /// Per request.
    pub timeout: Duration,
}

/// What can go wrong talking to Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("--prometheus {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("cannot reach Prometheus at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Prometheus at {url} answered HTTP {status}{hint}: {body}")]
    Http {
        url: String,
        status: u16,
        hint: &'static str,
        body: String,
    },
    #[error("Prometheus refused the query ({error_type}: {error})\n  query: {query}")]
    Query {
        query: String,
        error_type: String,
        error: String,
    },
    #[error("{url} did not answer like the Prometheus API: {reason}")]
    NotPrometheus { url: String, reason: String },
}

/// One series of an instant vector (or a scalar, with no labels).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Label `name`, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// A Prometheus server.
pub struct PromClient {
    base: String,
    agent: ureq::Agent,
    authorization: Option<String>,
}

fn read_file(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, PromError> {
    std::fs::read(path).map_err(|e| PromError::File {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn tls_config(o: &ClientOptions) -> Result<ureq::tls::TlsConfig, PromError> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder().disable_verification(o.insecure_skip_verify);
    if let Some(path) = &o.ca_file {
        let pem = read_file("--ca-file", path)?;
        let bad = |reason: String| PromError::File {
            what: "--ca-file",
            path: path.display().to_string(),
            reason,
        };
        let mut certs: Vec<Certificate<'static>> = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            if let PemItem::Certificate(c) = item.map_err(|e| bad(e.to_string()))? {
                certs.push(c);
            }
        }
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    match (&o.cert_file, &o.key_file) {
        (Some(cert), Some(key)) => {
            let pem = read_file("--cert-file", cert)?;
            let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if chain.is_empty() {
                return Err(PromError::File {
                    what: "--cert-file",
                    path: cert.display().to_string(),
                    reason: "no PEM certificate in it".into(),
                });
            }
            let key_pem = read_file("--key-file", key)?;
            let key = PrivateKey::from_pem(&key_pem).map_err(|e| PromError::File {
                what: "--key-file",
                path: key.display().to_string(),
                reason: e.to_string(),
            })?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        (Some(p), None) | (None, Some(p)) => {
            return Err(PromError::File {
                what: "--cert-file and --key-file",
                path: p.display().to_string(),
                reason: "give both or neither".into(),
            })
        }
    }
    Ok(tls.build())
}

impl PromClient {
    pub fn new(o: &ClientOptions) -> Result<Self, PromError> {
        let url = o.url.trim();
        let bad = |reason: &str| PromError::BadUrl {
            url: o.url.clone(),
            reason: reason.to_owned(),
        };
        if url.is_empty() {
            return Err(bad(
                "no Prometheus URL: give --prometheus URL or set ENVFENCE_PROMETHEUS_URL",
            ));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("not a URL (want http://HOST:PORT or https://…)"));
        };
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("no host"));
        }
        let authorization = match (&o.bearer_token, &o.basic_auth) {
            (Some(_), Some(_)) => {
                return Err(bad("give a bearer token or basic auth, not both"));
            }
            (Some(t), None) => Some(format!("Bearer {}", t.trim())),
            (None, Some((user, pass))) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )),
            (None, None) => None,
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(o.timeout))
            .tls_config(tls_config(o)?)
            .build();
        Ok(PromClient {
            base: url.trim_end_matches('/').to_owned(),
            agent: config.into(),
            authorization,
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Evaluates `query` at `time` (Unix seconds; now when `None`): the
    /// instant vector's series, or the scalar as one sample without labels.
    pub fn query(&self, query: &str, time: Option<f64>) -> Result<Vec<Sample>, PromError> {
        let url = format!("{}/api/v1/query", self.base);
        let mut req = self.agent.get(&url).query("query", query);
        if let Some(t) = time {
            req = req.query("time", format!("{t:.3}"));
        }
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let mut resp = req.call().map_err(|e| PromError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| PromError::Unreachable {
                url: self.base.clone(),
                reason: format!("reading the answer: {}", describe(&e)),
            })?;
        let parsed: Option<Value> = serde_json::from_str(&body).ok();
        // The API answers errors as JSON with 400/422/503; anything else
        // without that JSON is a proxy, an auth layer or not Prometheus.
        match parsed {
            Some(v) if v["status"] == "success" => {
                parse_data(&v["data"]).map_err(|reason| PromError::NotPrometheus {
                    url: url.clone(),
                    reason,
                })
            }
            Some(v) if v["status"] == "error" => Err(PromError::Query {
                query: query.to_owned(),
                error_type: v["errorType"].as_str().unwrap_or("error").to_owned(),
                error: v["error"].as_str().unwrap_or("").to_owned(),
            }),
            _ if status != 200 => Err(PromError::Http {
                url: url.clone(),
                status,
                hint: match status {
                    401 | 403 => " (check --bearer-token-file / --basic-auth)",
                    404 => " (is the URL Prometheus' base URL, with its --web.route-prefix?)",
                    _ => "",
                },
                body: truncate(&body, 300),
            }),
            _ => Err(PromError::NotPrometheus {
                url,
                reason: format!("not a Prometheus API answer: {}", truncate(&body, 200)),
            }),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The error's text with its causes (a connection refused, a TLS failure).
fn describe(e: &ureq::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

fn number(v: &Value) -> Result<f64, String> {
    let s = v[1].as_str().ok_or("a sample without a value")?;
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        s => s.parse().map_err(|_| format!("sample value {s:?}")),
    }
}

fn parse_data(data: &Value) -> Result<Vec<Sample>, String> {
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .ok_or("no result array")?
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Sample {
                    labels,
                    value: number(&r["value"])?,
                })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: number(&data["result"])?,
        }]),
        other => Err(format!(
            "result type {other:?} (an instant query gives a vector or a scalar)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vectors_and_scalars() {
        let v: Value = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{"job":"envfence","node":"a"},"value":[1.5,"37"]}]}"#,
        )
        .unwrap();
        let s = parse_data(&v).unwrap();
        assert_eq!(s[0].value, 37.0);
        assert_eq!(s[0].label("node"), "a");
        assert_eq!(s[0].label("missing"), "");
        let v: Value =
            serde_json::from_str(r#"{"resultType":"scalar","result":[1.5,"2"]}"#).unwrap();
        assert_eq!(parse_data(&v).unwrap()[0].value, 2.0);
        let v: Value = serde_json::from_str(r#"{"resultType":"matrix","result":[]}"#).unwrap();
        assert!(parse_data(&v).is_err());
    }

    #[test]
    fn urls_and_auth_are_checked() {
        let o = |url: &str| ClientOptions {
            url: url.into(),
            timeout: Duration::from_secs(1),
            ..ClientOptions::default()
        };
        for bad in ["", "prometheus:9090", "ftp://x", "http://"] {
            assert!(PromClient::new(&o(bad)).is_err(), "{bad}");
        }
        let c = PromClient::new(&o("http://127.0.0.1:9/prefix/")).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:9/prefix");
        let both = ClientOptions {
            bearer_token: Some("t".into()),
            basic_auth: Some(("u".into(), "p".into())),
            ..o("http://x:1")
        };
        assert!(PromClient::new(&both).is_err());
        let err = PromClient::new(&o("http://127.0.0.1:9"))
            .unwrap()
            .query("up", None)
            .unwrap_err();
        assert!(
            matches!(err, PromError::Unreachable { .. }),
            "{err}: {err:?}"
        );
    }
}
