//! The local, read-only HTTP API on a Unix socket, for the CLI.
//!
//! No TCP listener: the socket's directory is `0750` and the socket `0660`,
//! owned by root and the group given with `--api-group` (root's group by
//! default), so only root and that group can connect. Every endpoint is a
//! GET; nothing can be changed through it.
//!
//! | endpoint | answer |
//! |---|---|
//! | `/v1/status` | [`types::StatusReport`] |
//! | `/v1/flows?QUERY` | [`types::FlowsReply`]: stored events that match |
//! | `/v1/flows/follow?QUERY` | JSON lines: each new matching event as it comes (after the newest `last` stored ones, or those `since`), until the client goes; `{"lagged":N}` when N events were missed |
//! | `/v1/top?QUERY` | [`types::TopReply`] |
//!
//! QUERY ([`types::FlowQuery`], checked and applied by [`query`]): `from_env`, `to_env`, `verdict`, `proto`,
//! `rule` (comma-separated lists), `ip` (address or CIDR, either side),
//! `port` (either side), `since`, `until` (RFC 3339, or a duration ago:
//! `5m`), `last` (newest N); for top also `by` (pair, src, dst, rule) and
//! `limit`. Errors are `{"error": "..."}` with status 400 or 404.
//!
//! Try it: `curl --unix-socket /run/envfence/envfence.sock http://x/v1/status`.

pub mod client;
pub mod query;
pub mod report;
pub mod types;

use std::{
    collections::VecDeque,
    convert::Infallible,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use nix::unistd::{Gid, Group};
use tokio::sync::{broadcast, watch};

use crate::{
    datapath::inspect::PinnedState, events::EventRecord, status::Status, store::EventStore,
};
use query::FlowFilter;
use types::{FlowQuery, FlowsReply, Lagged};

/// Where and how the API listens.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Unix socket path (its directory is created 0750, the socket 0660).
    pub socket: PathBuf,
    /// Group owning the socket (default: root's).
    pub group: Option<String>,
}

/// What the API serves.
pub struct ApiContext {
    pub status: Arc<Status>,
    pub store: Arc<EventStore>,
    pub pin_root: Option<PathBuf>,
}

/// Why the API could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "--api-group {0:?}: no such group (create it, or name an existing one: `getent group`)"
    )]
    UnknownGroup(String),
    #[error("--api-group {group:?}: looking the group up failed: {source}")]
    GroupLookup {
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("{}: exists and is not a socket; refusing to replace it (--api-socket)", .0.display())]
    NotASocket(PathBuf),
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> ApiError {
    let path = path.to_path_buf();
    move |source| ApiError::Io { path, what, source }
}

/// The gid of `group` (a name, or a number).
pub fn resolve_group(group: &str) -> Result<Gid, ApiError> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(ApiError::UnknownGroup(group.to_owned())),
        Err(source) => Err(ApiError::GroupLookup {
            group: group.to_owned(),
            source,
        }),
    }
}

/// Mode of the socket's directory.
pub const DIR_MODE: u32 = 0o750;
/// Mode of the socket.
pub const SOCKET_MODE: u32 = 0o660;
/// How often an idle follow stream sends an empty line (so that a client
/// that went away is noticed).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Creates (or tightens) the socket's directory and clears a stale socket.
///
/// The directory is made `0750` owned by the group when envfence creates
/// it or when its name contains `envfence` (`/run/envfence`); any other
/// existing directory (`/tmp` ...) is left as it is.
fn prepare(socket: &Path, gid: Option<Gid>) -> Result<(), ApiError> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        let created = !dir.exists();
        if created {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io_error(dir, "creating the socket's directory"))?;
        }
        let ours = created
            || dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("envfence"));
        if ours {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(io_error(dir, "setting the mode of the socket's directory"))?;
            if let Some(gid) = gid {
                nix::unistd::chown(dir, None, Some(gid)).map_err(|e| ApiError::Io {
                    path: dir.to_path_buf(),
                    what: "setting the group of the socket's directory",
                    source: e.into(),
                })?;
            }
        }
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Another agent still serving here (a rolling upgrade that
            // starts the new pod first) loses the socket to the newest one:
            // refusing would keep the new agent from starting at all.
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                tracing::warn!(
                    socket = %socket.display(),
                    "another process serves on the API socket; taking it over"
                );
            }
            std::fs::remove_file(socket).map_err(io_error(socket, "removing the old socket"))?;
        }
        Ok(_) => return Err(ApiError::NotASocket(socket.to_path_buf())),
        Err(_) => {}
    }
    Ok(())
}

#[derive(Clone)]
struct App {
    status: Arc<Status>,
    store: Arc<EventStore>,
    pin_root: Option<PathBuf>,
    socket: PathBuf,
    stop: watch::Receiver<bool>,
}

/// Binds the socket and serves until `shutdown` resolves.
pub async fn serve(
    opts: ApiOptions,
    ctx: ApiContext,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let gid = opts.group.as_deref().map(resolve_group).transpose()?;
    prepare(&opts.socket, gid)?;
    let listener = tokio::net::UnixListener::bind(&opts.socket)
        .map_err(io_error(&opts.socket, "binding the API socket"))?;
    std::fs::set_permissions(&opts.socket, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io_error(&opts.socket, "setting the socket's mode"))?;
    if let Some(gid) = gid {
        nix::unistd::chown(&opts.socket, None, Some(gid)).map_err(|e| ApiError::Io {
            path: opts.socket.clone(),
            what: "setting the socket's group",
            source: e.into(),
        })?;
    }
    // Follow streams end when the agent stops, so that the graceful
    // shutdown does not wait for their clients.
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = App {
        status: ctx.status,
        store: ctx.store,
        pin_root: ctx.pin_root,
        socket: opts.socket.clone(),
        stop: stop_rx.clone(),
    };
    let router = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/flows", get(flows))
        .route("/v1/flows/follow", get(follow))
        .route("/v1/top", get(top))
        .fallback(not_found)
        .with_state(app);
    tracing::info!(
        socket = %opts.socket.display(),
        group = opts.group.as_deref().unwrap_or("root"),
        "local API listening"
    );
    let socket = opts.socket.clone();
    Ok(tokio::spawn(async move {
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::error!("local API failed: {e}");
        }
        let _ = std::fs::remove_file(&socket);
    }))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint: /v1/status, /v1/flows, /v1/flows/follow, /v1/top",
    )
}

async fn status(State(app): State<App>) -> Response {
    let snapshot = app.status.get();
    let stored = app.store.snapshot().len();
    let seen = app.store.total();
    let socket = app.socket.display().to_string();
    let pin_root = app.pin_root.clone();
    let built = tokio::task::spawn_blocking(move || {
        let mut r = report::from_snapshot(snapshot);
        r.socket = socket;
        r.events_stored = stored;
        r.events_seen = seen;
        match pin_root.as_deref().map(PinnedState::open) {
            Some(Ok(state)) => report::add_kernel_state(&mut r, &state),
            Some(Err(e)) => r.warnings.push(e.to_string()),
            None => {
                r.warnings.push(
                    "the agent pins nothing (--no-pin): counters come from its last interface change"
                        .to_owned(),
                );
                for iface in &mut r.interfaces {
                    report::query_hooks(iface);
                }
            }
        }
        r
    })
    .await;
    match built {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn records(store: &EventStore) -> Vec<EventRecord> {
    store.snapshot().into_iter().map(|(_, r)| r).collect()
}

async fn flows(State(app): State<App>, Query(q): Query<FlowQuery>) -> Response {
    let filter = match FlowFilter::from_query(&q, SystemTime::now()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let all = records(&app.store);
    let reply = FlowsReply {
        events: filter.apply(&all),
        stored: all.len(),
        seen: app.store.total(),
    };
    Json(reply).into_response()
}

async fn top(State(app): State<App>, Query(q): Query<FlowQuery>) -> Response {
    match query::top_reply(&q, &records(&app.store), SystemTime::now()) {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

struct Follow {
    rx: broadcast::Receiver<(u64, EventRecord)>,
    filter: FlowFilter,
    /// Events up to this sequence number were in the backlog.
    after: Option<u64>,
    pending: VecDeque<Bytes>,
    stop: watch::Receiver<bool>,
}

fn json_line<T: serde::Serialize>(value: &T) -> Option<Bytes> {
    let mut line = serde_json::to_vec(value).ok()?;
    line.push(b'\n');
    Some(Bytes::from(line))
}

async fn follow(State(app): State<App>, Query(q): Query<FlowQuery>) -> Response {
    let filter = match FlowFilter::from_query(&q, SystemTime::now()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Subscribe first, then take the backlog: nothing falls in between,
    // and what is in both is skipped by sequence number.
    let rx = app.store.subscribe();
    let stored = app.store.snapshot();
    let after = stored.last().map(|(seq, _)| *seq);
    let mut pending = VecDeque::new();
    if filter.last.is_some() || filter.since.is_some() {
        let backlog: Vec<EventRecord> = stored.into_iter().map(|(_, r)| r).collect();
        pending.extend(filter.apply(&backlog).iter().filter_map(json_line));
    }
    let mut live = filter;
    live.last = None;
    live.until = None;
    let state = Follow {
        rx,
        filter: live,
        after,
        pending,
        stop: app.stop.clone(),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(line) = st.pending.pop_front() {
                return Some((Ok::<Bytes, Infallible>(line), st));
            }
            if *st.stop.borrow() {
                return None;
            }
            tokio::select! {
                changed = st.stop.changed() => {
                    if changed.is_err() || *st.stop.borrow() {
                        return None;
                    }
                }
                r = st.rx.recv() => match r {
                    Ok((seq, record)) => {
                        let fresh = st.after.is_none_or(|a| seq > a);
                        if fresh && st.filter.matches(&record) {
                            if let Some(line) = json_line(&record) {
                                st.pending.push_back(line);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        if let Some(line) = json_line(&Lagged { lagged: n }) {
                            st.pending.push_back(line);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(HEARTBEAT) => {
                    st.pending.push_back(Bytes::from_static(b"\n"));
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
