//! `lakets._job_runs`: every run of a scheduled job (and of the Delta operator's
//! maintenance), its outcome and what it did.

use tokio_postgres::GenericClient;

use crate::error::{PgResultExt, Result};

/// Records that `job` started on `instance`; the run's id.
pub async fn start_run(client: &impl GenericClient, job: &str, instance: &str) -> Result<i64> {
    Ok(client
        .query_one(
            "INSERT INTO lakets._job_runs (job, instance) VALUES ($1, $2) RETURNING id",
            &[&job, &instance],
        )
        .await
        .pg_context(|| "recording a job run".into())?
        .get(0))
}

/// Records how run `id` ended: its outcome (`ok`, `deferred`, `failed`), error, rows
/// affected and details.
pub async fn finish_run(
    client: &impl GenericClient,
    id: i64,
    outcome: &str,
    error: Option<&str>,
    rows_affected: Option<i64>,
    details: Option<&serde_json::Value>,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._job_runs SET finished_at = now(), outcome = $2, error = $3,
                    rows_affected = $4, details = $5
              WHERE id = $1",
            &[&id, &outcome, &error, &rows_affected, &details],
        )
        .await
        .pg_context(|| "recording a job's outcome".into())?;
    Ok(())
}

/// A job's latest run, as `lakets status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestRun {
    pub job: String,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_at: String,
    pub outcome: Option<String>,
    pub error: Option<String>,
    /// The job's failed runs started in the last hour.
    pub failures_last_hour: i64,
    /// How long the run took; `None` while it runs.
    pub duration_micros: Option<i64>,
}

/// The latest run of every job that ever ran, by job.
pub async fn latest_runs(client: &impl GenericClient) -> Result<Vec<LatestRun>> {
    Ok(client
        .query(
            "SELECT DISTINCT ON (job) job,
                    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    outcome, error,
                    (SELECT count(*) FROM lakets._job_runs f
                      WHERE f.job = j.job AND f.outcome = 'failed'
                        AND f.started_at > now() - interval '1 hour'),
                    (extract(epoch FROM finished_at - started_at) * 1000000)::bigint
               FROM lakets._job_runs j ORDER BY job, started_at DESC",
            &[],
        )
        .await
        .pg_context(|| "reading the job runs".into())?
        .iter()
        .map(|r| LatestRun {
            job: r.get(0),
            started_at: r.get(1),
            outcome: r.get(2),
            error: r.get(3),
            failures_last_hour: r.get(4),
            duration_micros: r.get(5),
        })
        .collect())
}
