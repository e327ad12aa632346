//! The metric series that the dashboard, `deploy/prometheus/alerts.yaml` and the Grafana
//! dashboard read, exported from the service's start: counters at 0, so that a healthy
//! service never reads "no data", and `increase()` sees the first event (a counter that
//! appears at 1 has no increase to show).

use lakets_core::jobs::Job;
use lakets_core::lifecycle::DEFERRAL_KINDS;
use lakets_core::operators::COMPONENTS;

/// The change kinds `lakets_wal_changes_total{kind}` counts.
const CHANGE_KINDS: &[&str] = &[
    "insert", "update", "delete", "truncate", "schema", "message",
];
/// The outcomes `lakets_job_runs_total{outcome}` counts.
const JOB_OUTCOMES: &[&str] = &["ok", "deferred", "failed"];

/// Registers every series whose labels are known before the first event. Per-table and
/// per-rollup series are registered by the collector as it finds them.
pub fn export_from_start() {
    for name in [
        "lakets_leader_takeovers_total",
        "lakets_leader_depositions_total",
        "lakets_wal_restarts_total",
        "lakets_wal_transactions_total",
        "lakets_chunks_tiered_total",
        "lakets_chunks_dropped_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for kind in CHANGE_KINDS {
        metrics::counter!("lakets_wal_changes_total", "kind" => *kind).increment(0);
    }
    for component in COMPONENTS {
        metrics::counter!("lakets_wal_backpressure_waits_total", "operator" => component.name())
            .increment(0);
        metrics::gauge!("lakets_operator_lag_seconds", "operator" => component.name())
            .increment(0.0);
        metrics::gauge!("lakets_operator_lag_bytes", "operator" => component.name()).increment(0.0);
    }
    for operation in lakets_core::delta::store::OPERATIONS {
        for outcome in lakets_core::delta::store::OUTCOMES {
            metrics::counter!(
                "lakets_object_store_requests_total",
                "operation" => *operation,
                "outcome" => *outcome
            )
            .increment(0);
        }
    }
    for kind in DEFERRAL_KINDS {
        metrics::counter!("lakets_chunk_deferrals_total", "reason" => *kind).increment(0);
    }
    let jobs = Job::ALL
        .iter()
        .map(|j| j.name())
        .chain([lakets_core::coldtier::sink::MAINTENANCE_JOB]);
    for job in jobs {
        for outcome in JOB_OUTCOMES {
            metrics::counter!("lakets_job_runs_total", "job_name" => job, "outcome" => *outcome)
                .increment(0);
        }
    }
    for name in [
        "lakets_replication_lag_seconds",
        "lakets_replication_lag_bytes",
        "lakets_slot_active",
        "lakets_leader",
        "lakets_slot_retained_wal_bytes",
        "lakets_wal_received_lsn",
        "lakets_wal_acknowledged_lsn",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
}

/// Registers the series of the tables, caches and rollups the catalog names.
pub fn export_for(status: &crate::status::ServiceStatus) {
    for t in &status.tables {
        let table = t.table.clone();
        for chunk_status in ["active", "tiered", "dropped"] {
            metrics::gauge!("lakets_chunks", "table" => table.clone(), "status" => chunk_status)
                .increment(0.0);
        }
        if t.synced {
            metrics::counter!("lakets_delta_commits_total", "table" => table.clone()).increment(0);
            metrics::counter!("lakets_delta_rows_written_total", "table" => table.clone())
                .increment(0);
        }
        if t.lvc {
            metrics::gauge!("lakets_lvc_keys", "table" => table.clone()).increment(0.0);
        }
    }
    for r in &status.rollups {
        metrics::counter!("lakets_rollup_refreshes_total", "rollup" => r.name.clone()).increment(0);
        metrics::gauge!("lakets_rollup_invalidation_backlog", "rollup" => r.name.clone())
            .increment(0.0);
    }
}
