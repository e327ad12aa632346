//! The service's HTTP endpoint: Prometheus metrics (`GET /metrics`), a liveness probe
//! (`GET /healthz`: the process answers) and a readiness probe (`GET /readyz`: streaming,
//! and not lagging beyond the configured bound; 503 with the reason otherwise), and, in the
//! service, the dashboard (`crate::dashboard`).
//!
//! Metrics go through the `metrics` facade everywhere in lakets; this installs the
//! Prometheus recorder once per process and renders it. Histograms get explicit buckets
//! (seconds), so Prometheus can aggregate them across instances.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::error::{Error, Result};

/// Buckets for every `*_seconds` histogram: from a millisecond to a minute.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process's Prometheus recorder (installed on first use).
pub fn prometheus() -> Result<PrometheusHandle> {
    static HANDLE: OnceLock<std::result::Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            // Histograms are drained into their buckets by the upkeep.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("lakets-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
        .map_err(|e| Error::Operator(format!("installing the Prometheus recorder: {e}")))
}

/// Says whether the service is ready: Ok(what) or Err(why not).
pub type Readiness = Arc<dyn Fn() -> std::result::Result<String, String> + Send + Sync>;

/// Binds `addr` and serves until `shutdown`; returns the bound address at once (port 0
/// picks a free one) and the server task. Without `ready`, `/readyz` answers like
/// `/healthz`.
pub async fn serve(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<Result<()>>)> {
    serve_with_readiness(addr, shutdown, Arc::new(|| Ok("ok".to_string()))).await
}

pub async fn serve_with_readiness(
    addr: SocketAddr,
    shutdown: CancellationToken,
    ready: Readiness,
) -> Result<(SocketAddr, tokio::task::JoinHandle<Result<()>>)> {
    serve_with_routes(addr, shutdown, ready, Router::new()).await
}

/// As [`serve_with_readiness`], with more routes beside the metrics and probes (the
/// service's dashboard).
pub async fn serve_with_routes(
    addr: SocketAddr,
    shutdown: CancellationToken,
    ready: Readiness,
    routes: Router,
) -> Result<(SocketAddr, tokio::task::JoinHandle<Result<()>>)> {
    let handle = prometheus()?;
    let app = routes
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(what) => (StatusCode::OK, format!("ready: {what}\n")),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding the metrics endpoint to {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("reading the metrics endpoint's address", e))?;
    info!(url = %format!("http://{bound}/metrics"), "serving Prometheus metrics");
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|e| Error::io("serving HTTP", e))
    });
    Ok((bound, task))
}
