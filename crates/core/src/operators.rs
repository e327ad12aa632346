//! The WAL operators lakets runs, in one list ([`standard_pipeline`]). Each receives whole
//! transactions in commit order (as bounded slices) and makes their effects durable
//! together with the end LSN of the last one it applied (the contract:
//! [`lakets_wal::operator`]). Each lives beside its feature:
//! [`crate::chronotable::tracker`], [`crate::lvc::operator`],
//! [`crate::rollup::invalidations`] and [`crate::coldtier::sink`].

use std::sync::{Arc, Mutex};

use crate::chronotable::tracker::ChunkTracker;
use crate::coldtier::sink::{DeltaSink, MaintenanceSchedule};
use crate::error::{PgResultExt, Result};
use crate::lvc::operator::LastValueCache;
use crate::lvc::view::LvcView;
use crate::rollup::invalidations::Invalidations;
use crate::wal::{Pipeline, PipelineConfig, PipelineStatus};

/// Prepares an operator's SQL session: a stuck lock fails the flush (and restarts the
/// pipeline) instead of hanging it, and every commit is durable before it returns. With a
/// database or role default of `synchronous_commit = off`, a flush could report a position
/// durable that a PostgreSQL crash then loses, and the slot would be confirmed past it.
pub async fn prepare_session(client: &tokio_postgres::Client, operator: &str) -> Result<()> {
    // Set again: the client may come from a caller that did not open it through
    // `crate::db`.
    client
        .batch_execute(&format!(
            "SET lock_timeout = '10s'; {}",
            crate::db::session_set_statements()
        ))
        .await
        .pg_context(|| format!("preparing the session of operator {operator}"))
}

pub use lakets_wal::operator::Operator;

/// A pipeline of lakets: every (re)start of its stream prepared through the catalog
/// ([`crate::catalog::replication::StreamPreparation`]).
pub fn pipeline(db: crate::db::DbConfig, config: PipelineConfig) -> Pipeline {
    Pipeline::new(db, config)
        .with_preparation(Arc::new(crate::catalog::replication::StreamPreparation))
}

/// A pipeline with every operator: the chunk tracker, the Last Value Cache, the rollup
/// invalidations and the Delta mirror, each on its own connection, reporting into `status`
/// (kept across restarts) and, when given, publishing the LVC to `view`.
pub async fn standard_pipeline(
    db: &crate::db::DbConfig,
    config: PipelineConfig,
    status: Arc<Mutex<PipelineStatus>>,
    view: Option<Arc<LvcView>>,
) -> Result<Pipeline> {
    pipeline_with_maintenance(db, config, status, view, None).await
}

/// [`standard_pipeline`], with the Delta operator maintaining its tables on `maintenance`.
pub async fn pipeline_with_maintenance(
    db: &crate::db::DbConfig,
    config: PipelineConfig,
    status: Arc<Mutex<PipelineStatus>>,
    view: Option<Arc<LvcView>>,
    maintenance: Option<MaintenanceSchedule>,
) -> Result<Pipeline> {
    let slot = config.source.slot.clone();
    let tracker = ChunkTracker::new(crate::db::connect_with(db).await?, slot.clone()).await?;
    let mut lvc = LastValueCache::new(crate::db::connect_with(db).await?, slot.clone()).await?;
    if let Some(view) = view {
        lvc = lvc.with_view(view);
    }
    let invalidations =
        Invalidations::new(crate::db::connect_with(db).await?, slot.clone()).await?;
    let mut delta = DeltaSink::new(crate::db::connect_with(db).await?, slot).await?;
    if let Some(schedule) = maintenance {
        delta = delta.with_maintenance(schedule);
    }
    Ok(pipeline(db.clone(), config)
        .with_status(status)
        .operator(tracker)
        .operator(lvc)
        .operator(invalidations)
        .operator(delta))
}
