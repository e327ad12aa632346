//! The service's pipeline: every WAL operator lakets runs, on one slot.

use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::operators::chunk_tracker::ChunkTracker;
use crate::operators::delta_sink::DeltaSink;
use crate::operators::invalidations::Invalidations;
use crate::operators::last_value::LastValueCache;
use crate::wal::{Pipeline, PipelineConfig, PipelineStatus};

/// A pipeline with the chunk tracker, the Last Value Cache, the rollup invalidations and
/// the Delta mirror, each on its own connection, reporting into `status` (kept across
/// restarts).
pub async fn standard_pipeline(
    db: &tokio_postgres::Config,
    config: PipelineConfig,
    status: Arc<Mutex<PipelineStatus>>,
) -> Result<Pipeline> {
    let slot = config.source.slot.clone();
    let tracker = ChunkTracker::new(crate::db::connect_with(db).await?, slot.clone()).await?;
    let lvc = LastValueCache::new(crate::db::connect_with(db).await?, slot.clone()).await?;
    let invalidations =
        Invalidations::new(crate::db::connect_with(db).await?, slot.clone()).await?;
    let delta = DeltaSink::new(crate::db::connect_with(db).await?, slot).await?;
    Ok(Pipeline::new(db.clone(), config)
        .with_status(status)
        .operator(tracker)
        .operator(lvc)
        .operator(invalidations)
        .operator(delta))
}
