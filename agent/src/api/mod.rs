//! The local, read-only HTTP API on a Unix socket, for the CLI.

use std::{path::PathBuf, sync::Arc};

use crate::{status::Status, store::EventStore};

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

/// Binds the socket and serves until `shutdown` resolves.
pub async fn serve(
    opts: ApiOptions,
    ctx: ApiContext,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context as _;
    use axum::{routing::get, Json, Router};
    if let Some(dir) = opts.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&opts.socket);
    let listener = tokio::net::UnixListener::bind(&opts.socket)
        .with_context(|| format!("binding {}", opts.socket.display()))?;
    let status = Arc::clone(&ctx.status);
    let app = Router::new().route(
        "/v1/status",
        get(move || {
            let status = Arc::clone(&status);
            async move { Json(status.get()) }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("local API failed: {e}");
        }
    }))
}
