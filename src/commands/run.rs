//! `lakets run`: the service. Reconciles the database with the config, then streams the
//! WAL through the operators, runs the jobs and serves metrics and gRPC until a signal.

use std::path::Path;

use crate::args::RunOverrides;
use crate::context::{Context, Shutdown};

pub async fn run(
    ctx: &Context,
    config: Option<&Path>,
    overrides: &RunOverrides,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let config = ctx.load_config(config, Some(overrides))?;
    // Refused before the catalog is touched, not only before anything binds.
    config.check_listeners()?;
    let db = config.database_config()?;
    lakets::config::reconcile::reconcile(&db, &config).await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let service = lakets::service::start(&config, db, cancel.clone()).await?;
    if let Some(addr) = service.http_addr {
        eprintln!("metrics: http://{addr}/metrics");
    }
    if let Some(addr) = service.grpc_addr {
        eprintln!("gRPC: {addr}");
    }
    tokio::spawn(async move {
        shutdown.await;
        cancel.cancel();
    });
    service.wait().await?;
    Ok(())
}
