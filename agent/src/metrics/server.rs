//! The metrics endpoint: `/metrics` (Prometheus text format), `/healthz`
//! and `/readyz` on `--metrics-addr`, over plain HTTP.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{http::header, response::IntoResponse, routing::get, Router};
use prometheus::{Encoder as _, TextEncoder};
use tokio::net::TcpListener;

use super::{Health, Metrics};

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until
/// `shutdown` resolves. Returns once bound, with the server running on a
/// task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let bound = listener.local_addr().context("metrics socket address")?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move { render(&metrics) }
            }),
        )
        .route("/healthz", {
            let health = Arc::clone(&health);
            get(move || {
                let health = Arc::clone(&health);
                async move { status(health.live()) }
            })
        })
        .route(
            "/readyz",
            get(move || {
                let health = Arc::clone(&health);
                async move { status(health.ready()) }
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("metrics server failed: {e}");
        }
    });
    Ok((bound, task))
}

fn render(metrics: &Metrics) -> axum::response::Response {
    let families = metrics.registry.gather();
    let mut body = Vec::new();
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

fn status((ok, text): (bool, String)) -> axum::response::Response {
    let code = if ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (code, text).into_response()
}
