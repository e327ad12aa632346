//! `lakets.v1.Admin`: status, chunks, rollups, tiering and the ingest profile. The calls
//! share a bounded pool of database sessions (`grpc.admin_sessions`): however many
//! arrive, they never hold more than that many connections.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{proto, status_of};
use crate::state::ServiceState;

pub struct AdminApi {
    state: Arc<ServiceState>,
}

impl AdminApi {
    pub fn new(state: Arc<ServiceState>) -> Self {
        AdminApi { state }
    }

    async fn client(&self) -> Result<crate::db::pool::Pooled<'_>, Status> {
        self.state.admin_pool.get().await.map_err(status_of)
    }
}

fn opt(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminApi {
    async fn status(
        &self,
        _: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let client = self.client().await?;
        let live = self.state.status.lock().unwrap().clone();
        let s = crate::status::collect(&*client, &self.state.slot, Some(&live))
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::StatusResponse {
            slot: s.slot,
            slot_active: s.slot_active,
            wal_lsn: s.wal_lsn.to_string(),
            received_lsn: s.received_lsn.map(|l| l.to_string()).unwrap_or_default(),
            confirmed_lsn: s.confirmed_lsn.map(|l| l.to_string()).unwrap_or_default(),
            operators: s
                .operators
                .into_iter()
                .map(|o| proto::OperatorPosition {
                    operator: o.operator,
                    durable_lsn: o.durable_lsn.to_string(),
                    lag_bytes: o.lag_bytes,
                })
                .collect(),
            lag_bytes: s.lag_bytes,
            lag_seconds: s.lag_seconds.unwrap_or_default(),
            retained_wal_bytes: s.retained_wal_bytes.unwrap_or_default(),
            wal_status: s.wal_status.unwrap_or_default(),
            streaming: s.streaming.unwrap_or_default(),
            last_error: s.last_error.unwrap_or_default(),
        }))
    }

    async fn chunks(
        &self,
        request: Request<proto::ChunksRequest>,
    ) -> Result<Response<proto::ChunksResponse>, Status> {
        let r = request.into_inner();
        let client = self.client().await?;
        lakets_core::catalog::check_installed(&*client)
            .await
            .map_err(status_of)?;
        let table = match opt(&r.table) {
            Some(t) => Some(
                lakets_core::catalog::registry::find_chronotable(&*client, t)
                    .await
                    .map_err(status_of)?
                    .table,
            ),
            None => None,
        };
        let chunks = lakets_core::catalog::registry::list_all_chunks(
            &*client,
            table.as_ref(),
            r.include_dropped,
        )
        .await
        .map_err(status_of)?;
        Ok(Response::new(proto::ChunksResponse {
            chunks: chunks
                .into_iter()
                .map(|c| proto::Chunk {
                    table: format!("{}.{}", c.schema_name, c.table_name),
                    range_start: crate::report::chunk_bound(c.range_start),
                    range_end: crate::report::chunk_bound(c.range_end),
                    status: c.status.as_str().to_owned(),
                    row_count: c.row_count.unwrap_or(0),
                    size_bytes: c.size_bytes.unwrap_or(0),
                    deferred_reason: c.deferred_reason.unwrap_or_default(),
                    chunk: c.chunk_name,
                })
                .collect(),
        }))
    }

    async fn rollups(
        &self,
        _: Request<proto::RollupsRequest>,
    ) -> Result<Response<proto::RollupsResponse>, Status> {
        let client = self.client().await?;
        lakets_core::catalog::check_installed(&*client)
            .await
            .map_err(status_of)?;
        let rollups = lakets_core::rollup::list_rollups(&*client)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::RollupsResponse {
            rollups: rollups
                .into_iter()
                .map(|r| proto::Rollup {
                    source: match &r.source {
                        lakets_core::rollup::Source::Table { table, .. } => table.to_string(),
                        lakets_core::rollup::Source::Rollup { name, .. } => name.clone(),
                    },
                    bucket: r.bucket().to_string(),
                    watermark: r
                        .watermark
                        .map(lakets_core::rollup::format_micros)
                        .unwrap_or_default(),
                    pending_invalidations: r.pending_invalidations,
                    refresh_lag: r.refresh_lag.to_string(),
                    group_by: r.group_by,
                    aggregate: r.aggregate,
                    name: r.name,
                })
                .collect(),
        }))
    }

    async fn refresh_rollups(
        &self,
        request: Request<proto::RefreshRollupsRequest>,
    ) -> Result<Response<proto::RefreshRollupsResponse>, Status> {
        let r = request.into_inner();
        let mut client = self.client().await?;
        let reports = lakets_core::rollup::refresh::refresh(
            client.client_mut(),
            opt(&r.name),
            r.cascade,
            r.force,
        )
        .await
        .map_err(status_of)?;
        Ok(Response::new(proto::RefreshRollupsResponse {
            refreshes: reports
                .into_iter()
                .map(|r| proto::RollupRefresh {
                    rollup: r.rollup,
                    watermark_before: r.watermark_before.unwrap_or_default(),
                    watermark_after: r.watermark_after.unwrap_or_default(),
                    invalidations_consumed: r.invalidations_consumed as i64,
                    ranges_recomputed: r.ranges_recomputed as i64,
                    rows_written: r.rows_written as i64,
                    skipped: r.skipped.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn tier(
        &self,
        request: Request<proto::TierRequest>,
    ) -> Result<Response<proto::TierResponse>, Status> {
        let r = request.into_inner();
        // Tiering opens its own sessions; it takes a turn of the pool all the same.
        let _turn = self.state.admin_pool.turn().await.map_err(status_of)?;
        let report = lakets_core::lifecycle::tier(
            &self.state.db,
            opt(&r.table),
            opt(&r.chunk),
            self.state.gate,
            None,
        )
        .await
        .map_err(status_of)?;
        Ok(Response::new(proto::TierResponse {
            tiered: report.moved,
            deferred: report
                .deferred
                .into_iter()
                .map(|(chunk, reason)| proto::Deferred { chunk, reason })
                .collect(),
        }))
    }

    async fn get_ingest_profile(
        &self,
        _: Request<proto::GetIngestProfileRequest>,
    ) -> Result<Response<proto::IngestProfile>, Status> {
        let client = self.client().await?;
        let stored = lakets_core::catalog::ingest_profile::get_profile(&*client)
            .await
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found("no ingest has run against this database yet"))?;
        Ok(Response::new(proto::IngestProfile {
            symbols: stored.profile.symbols,
            rate: stored.profile.rate,
            burst: stored.profile.burst,
            achieved_rate: stored.achieved_rate,
            total_rows: stored.total_rows,
        }))
    }

    async fn set_ingest_profile(
        &self,
        request: Request<proto::IngestProfile>,
    ) -> Result<Response<proto::IngestProfile>, Status> {
        let r = request.into_inner();
        let client = self.client().await?;
        let profile = lakets_core::catalog::ingest_profile::IngestProfile {
            symbols: r.symbols,
            rate: r.rate,
            burst: r.burst,
        };
        lakets_core::catalog::ingest_profile::set_profile(&*client, profile)
            .await
            .map_err(status_of)?;
        Ok(Response::new(proto::IngestProfile {
            symbols: profile.symbols,
            rate: profile.rate,
            burst: profile.burst,
            achieved_rate: 0.0,
            total_rows: 0,
        }))
    }
}
