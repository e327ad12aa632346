//! The service's picture of itself: slot, per-operator durable positions and lag, chunks,
//! rollups, jobs. Read from the database (so `lakets status` works with or without a
//! running service), overlaid with the live figures of a pipeline in this process.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::GenericClient;
use tokio_postgres::types::PgLsn;

use lakets_core::catalog::{job_runs, progress, registry, replication};

use crate::error::{PgResultExt, Result};
use crate::wal::PipelineStatus;
use crate::wal::lsn::Lsn;

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub slot: String,
    pub slot_exists: bool,
    pub slot_active: bool,
    pub wal_status: Option<String>,
    /// The server's current WAL insert position.
    pub wal_lsn: Lsn,
    pub confirmed_lsn: Option<Lsn>,
    /// WAL the server keeps for the slot.
    pub retained_wal_bytes: Option<i64>,
    pub operators: Vec<OperatorStatus>,
    /// Between the server's position and the slowest operator.
    pub lag_bytes: u64,
    /// Known from a live pipeline only.
    pub lag_seconds: Option<f64>,
    pub received_lsn: Option<Lsn>,
    pub streaming: Option<bool>,
    pub last_error: Option<String>,
    /// Gaps in the WAL stream: streaming and drops wait for `lakets resync`.
    pub stream_gaps: Vec<lakets_core::catalog::replication::StreamGap>,
    /// Streaming stopped for good (a definite error): why, and what to do.
    pub stopped: Option<StreamStop>,
    pub tables: Vec<TableStatus>,
    pub rollups: Vec<RollupStatus>,
    pub jobs: Vec<JobStatus>,
    /// The `lakets run` processes of this stream seen in the last 30 s: the active one
    /// (streams, runs the jobs) first, then those standing by.
    pub instances: Vec<lakets_core::catalog::instances::Instance>,
}

/// Instances whose heartbeat is older than this are not listed (gone).
const INSTANCE_SEEN_WITHIN_SECS: f64 = 30.0;

#[derive(Debug, Clone, Serialize)]
pub struct StreamStop {
    /// What kind of error (`unsupported`, `diverged`, `setup`, ...).
    pub kind: String,
    /// The error and what to do about it.
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperatorStatus {
    pub operator: String,
    pub durable_lsn: Lsn,
    pub lag_bytes: u64,
    pub stored_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub chunk_interval: String,
    /// Chunk count by status (active, tiered, dropped).
    pub chunks: BTreeMap<String, i64>,
    /// Chunks whose last tiering or drop was deferred, and the latest reason.
    pub deferred: i64,
    pub last_deferral: Option<String>,
    pub synced: bool,
    pub lvc: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollupStatus {
    pub name: String,
    pub watermark: Option<String>,
    pub watermark_age_seconds: Option<f64>,
    pub pending_invalidations: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub last_started_at: String,
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub failures_last_hour: i64,
    /// How long the last run took; `None` while it runs.
    pub duration_seconds: Option<f64>,
}

/// Reads the status of `slot` from the database; `live` adds what only the running
/// pipeline knows.
pub async fn collect(
    client: &impl GenericClient,
    slot: &str,
    live: Option<&PipelineStatus>,
) -> Result<ServiceStatus> {
    lakets_core::catalog::check_installed(client).await?;
    let wal_lsn: PgLsn = client
        .query_one("SELECT pg_current_wal_lsn()", &[])
        .await
        .pg_context(|| "reading the WAL position".into())?
        .get(0);
    let wal_lsn = Lsn::from(wal_lsn);
    let state = crate::wal::slot::slot_state(client, slot).await?;
    let operators: Vec<OperatorStatus> = progress::list_for_slot(client, slot)
        .await?
        .into_iter()
        .map(|p| OperatorStatus {
            operator: p.operator,
            durable_lsn: p.durable_lsn,
            lag_bytes: wal_lsn.0.saturating_sub(p.durable_lsn.0),
            stored_at: p.updated_at,
        })
        .collect();
    // A running pipeline knows every operator's durable position, including the ones
    // that keep it outside `_sink_progress` (the Delta log).
    let operators = match live {
        Some(l) if !l.operators.is_empty() => l
            .operators
            .iter()
            .map(|(name, durable)| OperatorStatus {
                operator: name.clone(),
                durable_lsn: *durable,
                lag_bytes: wal_lsn.0.saturating_sub(durable.0),
                stored_at: operators
                    .iter()
                    .find(|o| &o.operator == name)
                    .and_then(|o| o.stored_at.clone()),
            })
            .collect(),
        _ => operators,
    };
    let slowest = operators
        .iter()
        .map(|o| o.durable_lsn)
        .min()
        .or(state.as_ref().and_then(|s| s.confirmed_flush_lsn));
    let lag_bytes = slowest.map_or(0, |l| wal_lsn.0.saturating_sub(l.0));

    let tables = registry::table_summaries(client)
        .await?
        .into_iter()
        .map(|t| TableStatus {
            table: t.table,
            chunk_interval: t.chunk_interval,
            chunks: serde_json::from_value(t.chunks).unwrap_or_default(),
            deferred: t.deferred,
            last_deferral: t.last_deferral,
            synced: t.synced,
            lvc: t.lvc,
        })
        .collect();

    let now = chrono::Utc::now().timestamp_micros();
    let rollups = lakets_core::rollup::list_rollups(client)
        .await?
        .into_iter()
        .map(|r| RollupStatus {
            watermark: r.watermark.map(lakets_core::rollup::format_micros),
            watermark_age_seconds: r.watermark.map(|w| (now - w).max(0) as f64 / 1e6),
            pending_invalidations: r.pending_invalidations,
            name: r.name,
        })
        .collect();

    let jobs = job_runs::latest_runs(client)
        .await?
        .into_iter()
        .map(|r| JobStatus {
            job: r.job,
            last_started_at: r.started_at,
            last_outcome: r.outcome,
            last_error: r.error,
            failures_last_hour: r.failures_last_hour,
            duration_seconds: r.duration_micros.map(|us| us as f64 / 1e6),
        })
        .collect();

    Ok(ServiceStatus {
        slot: slot.to_string(),
        slot_exists: state.is_some(),
        slot_active: state.as_ref().is_some_and(|s| s.active),
        wal_status: state.as_ref().and_then(|s| s.wal_status.clone()),
        wal_lsn,
        confirmed_lsn: state.as_ref().and_then(|s| s.confirmed_flush_lsn),
        retained_wal_bytes: state.as_ref().and_then(|s| s.retained_bytes),
        operators,
        lag_bytes,
        lag_seconds: live.map(|l| l.lag_seconds),
        received_lsn: live.map(|l| l.received_lsn),
        streaming: live.map(|l| l.streaming),
        last_error: live.and_then(|l| l.last_error.clone()),
        stream_gaps: replication::list_gaps(client).await?,
        stopped: replication::recorded_stop(client, slot)
            .await?
            .map(|r| StreamStop {
                kind: r.kind.unwrap_or_default(),
                reason: r.reason,
                at: r.at,
            }),
        tables,
        rollups,
        jobs,
        instances: lakets_core::catalog::instances::list(client, slot, INSTANCE_SEEN_WITHIN_SECS)
            .await?,
    })
}

/// The human form of `lakets status`.
pub fn render(s: &ServiceStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let lsn = |l: Option<Lsn>| l.map_or("-".to_string(), |l| l.to_string());
    let _ = writeln!(
        out,
        "slot {}: {}{} (wal_status {}), confirmed {}, retains {}",
        s.slot,
        if !s.slot_exists {
            "missing"
        } else if s.slot_active {
            "active"
        } else {
            "inactive"
        },
        match s.streaming {
            Some(true) => ", streaming here",
            Some(false) => ", not streaming here",
            None => "",
        },
        s.wal_status.as_deref().unwrap_or("-"),
        lsn(s.confirmed_lsn),
        s.retained_wal_bytes
            .map(crate::report::human_bytes)
            .unwrap_or_else(|| "-".into())
    );
    let _ = writeln!(
        out,
        "WAL at {}; lag {}{}",
        s.wal_lsn,
        crate::report::human_bytes(s.lag_bytes as i64),
        s.lag_seconds
            .map(|l| format!(", {l:.1} s"))
            .unwrap_or_default()
    );
    if let Some(stop) = &s.stopped {
        let _ = writeln!(
            out,
            "STREAMING STOPPED ({}, at {}): {}",
            stop.kind, stop.at, stop.reason
        );
    } else if let Some(e) = &s.last_error {
        let _ = writeln!(out, "last pipeline error: {e}");
    }
    for g in &s.stream_gaps {
        let _ = writeln!(
            out,
            "STREAM GAP: slot {} was {} (since {}, detected {}); streaming and drops wait \
             for `lakets resync`",
            g.slot_name,
            g.reason,
            lsn(g.since_lsn),
            g.detected_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    for i in &s.instances {
        let _ = writeln!(
            out,
            "instance {}: {}{}, started {}, seen {:.1} s ago",
            i.instance,
            i.role,
            i.epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default(),
            i.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            i.heartbeat_age_seconds
        );
    }
    for o in &s.operators {
        let _ = writeln!(
            out,
            "  operator {:<14} durable {:<14} lag {:>10}  stored {}",
            o.operator,
            o.durable_lsn.to_string(),
            crate::report::human_bytes(o.lag_bytes as i64),
            o.stored_at.as_deref().unwrap_or("-")
        );
    }
    for t in &s.tables {
        let chunks: Vec<String> = t.chunks.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let _ = writeln!(
            out,
            "table {} ({} chunks): {}{}{}{}",
            t.table,
            t.chunk_interval,
            if chunks.is_empty() {
                "no chunks".into()
            } else {
                chunks.join(", ")
            },
            if t.synced { "; synced to Delta" } else { "" },
            if t.lvc { "; LVC" } else { "" },
            t.last_deferral
                .as_ref()
                .map(|d| format!("; {} deferred (latest {d})", t.deferred))
                .unwrap_or_default()
        );
    }
    for r in &s.rollups {
        let _ = writeln!(
            out,
            "rollup {}: watermark {}{}, {} pending invalidation(s)",
            r.name,
            r.watermark.as_deref().unwrap_or("(none)"),
            r.watermark_age_seconds
                .map(|a| format!(" ({a:.0} s ago)"))
                .unwrap_or_default(),
            r.pending_invalidations
        );
    }
    for j in &s.jobs {
        let _ = writeln!(
            out,
            "job {}: last run {} {}{}{}",
            j.job,
            j.last_started_at,
            j.last_outcome.as_deref().unwrap_or("running"),
            j.last_error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
            if j.failures_last_hour > 0 {
                format!("; {} failure(s) in the last hour", j.failures_last_hour)
            } else {
                String::new()
            }
        );
    }
    out
}
