//! The job scheduler of `lakets run`: the partition manager, the rollup cascade refresh,
//! tiering and retention, each on its own interval, run by one leader among the service
//! instances sharing a database. (Delta maintenance runs in the Delta operator itself,
//! between its windows, on `maintenance` of the same schedule: see
//! [`crate::coldtier::sink`].) The leader holds a session advisory lock on a connection of its
//! own; the others stand by and take over when it goes (its session ends, the lock with
//! it). Every run is recorded in `lakets._job_runs`.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::job_runs;
use crate::catalog::migrations::ADVISORY_NAMESPACE;
use crate::error::{PgResultExt, Result};
use crate::lifecycle::{self, GateSettings};

/// Second key of the leader's advisory lock.
const LEADER_LOCK: i32 = 2;

/// How often each job runs (None: never).
#[derive(Debug, Clone)]
pub struct Schedule {
    pub partitions: Option<Duration>,
    pub rollups: Option<Duration>,
    pub tiering: Option<Duration>,
    pub retention: Option<Duration>,
    pub maintenance: Option<Duration>,
    pub gate: GateSettings,
    /// Files of a Delta table older than this and no longer referenced are vacuumed.
    pub vacuum_retention: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            partitions: Some(Duration::from_secs(60)),
            rollups: Some(Duration::from_secs(60)),
            tiering: Some(Duration::from_secs(60)),
            retention: Some(Duration::from_secs(300)),
            maintenance: Some(Duration::from_secs(600)),
            gate: GateSettings::default(),
            vacuum_retention: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Partitions,
    Rollups,
    Tiering,
    Retention,
}

impl Job {
    pub const ALL: [Job; 4] = [Job::Partitions, Job::Rollups, Job::Tiering, Job::Retention];

    pub fn name(self) -> &'static str {
        match self {
            Job::Partitions => "partitions",
            Job::Rollups => "rollup_refresh",
            Job::Tiering => "tiering",
            Job::Retention => "retention",
        }
    }

    fn every(self, s: &Schedule) -> Option<Duration> {
        match self {
            Job::Partitions => s.partitions,
            Job::Rollups => s.rollups,
            Job::Tiering => s.tiering,
            Job::Retention => s.retention,
        }
    }
}

/// The outcome of one job run.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    pub rows_affected: i64,
    pub deferred: bool,
    pub details: serde_json::Value,
}

/// Runs the schedule until `shutdown`, as leader or standing by.
pub async fn run_scheduler(
    db: crate::db::DbConfig,
    schedule: Schedule,
    instance: String,
    shutdown: CancellationToken,
) -> Result<()> {
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match lead(&db, &schedule, &instance, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                warn!(error = %e, "job scheduler lost its connection; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }
}

/// Becomes leader (or waits to), then runs due jobs until shutdown or a lost connection.
async fn lead(
    db: &crate::db::DbConfig,
    schedule: &Schedule,
    instance: &str,
    shutdown: &CancellationToken,
) -> Result<()> {
    let leader = crate::db::connect_with(db).await?;
    let mut announced_standby = false;
    loop {
        let got: bool = leader
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&ADVISORY_NAMESPACE, &LEADER_LOCK],
            )
            .await
            .pg_context(|| "contending for the job leader lock".into())?
            .get(0);
        if got {
            break;
        }
        if !announced_standby {
            info!(
                instance,
                "another lakets instance runs the jobs; standing by"
            );
            announced_standby = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    info!(instance, "running the scheduled jobs (leader)");
    let mut client = crate::db::connect_with(db).await?;
    let mut last_run: Vec<Option<Instant>> = vec![None; Job::ALL.len()];
    loop {
        for (i, job) in Job::ALL.into_iter().enumerate() {
            let Some(every) = job.every(schedule) else {
                continue;
            };
            if last_run[i].is_some_and(|t| t.elapsed() < every) {
                continue;
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // The lock lives with the leader's session: a dead session means no longer leader.
            if leader.is_closed() {
                return Err(crate::Error::Operator(
                    "the leader connection closed".into(),
                ));
            }
            last_run[i] = Some(Instant::now());
            run_recorded(db, &mut client, job, schedule, instance).await?;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Runs one job and records it in `lakets._job_runs`. A failing job is recorded and
/// logged; only a lost connection ends the leadership.
pub async fn run_recorded(
    db: &crate::db::DbConfig,
    client: &mut Client,
    job: Job,
    schedule: &Schedule,
    instance: &str,
) -> Result<()> {
    let id = job_runs::start_run(&*client, job.name(), instance).await?;
    let started = Instant::now();
    let outcome = run_job(db, client, job, schedule).await;
    metrics::histogram!("lakets_job_duration_seconds", "job_name" => job.name())
        .record(started.elapsed().as_secs_f64());
    let (status, error, rows, details) = match &outcome {
        Ok(o) => (
            if o.deferred { "deferred" } else { "ok" },
            None,
            Some(o.rows_affected),
            Some(o.details.clone()),
        ),
        Err(e) => ("failed", Some(e.to_string()), None, None),
    };
    metrics::counter!("lakets_job_runs_total", "job_name" => job.name(), "outcome" => status)
        .increment(1);
    if let Err(e) = &outcome {
        warn!(job = job.name(), error = %e, "job failed");
        if client.is_closed() {
            return Err(crate::Error::Operator(format!(
                "job {} lost its connection: {e}",
                job.name()
            )));
        }
    }
    job_runs::finish_run(
        &*client,
        id,
        status,
        error.as_deref(),
        rows,
        details.as_ref(),
    )
    .await
}

async fn run_job(
    db: &crate::db::DbConfig,
    client: &mut Client,
    job: Job,
    schedule: &Schedule,
) -> Result<RunOutcome> {
    match job {
        Job::Partitions => {
            let reports = crate::chronotable::ensure_partitions(client, None, None).await?;
            let created: usize = reports.iter().map(|r| r.created.len()).sum();
            Ok(RunOutcome {
                rows_affected: created as i64,
                deferred: false,
                details: serde_json::to_value(&reports).unwrap_or_default(),
            })
        }
        Job::Rollups => {
            let reports = crate::rollup::refresh::refresh(client, None, true, false).await?;
            Ok(RunOutcome {
                rows_affected: reports.iter().map(|r| r.rows_written as i64).sum(),
                deferred: false,
                details: serde_json::to_value(&reports).unwrap_or_default(),
            })
        }
        Job::Tiering => {
            let report = lifecycle::tier(db, None, None, schedule.gate, None).await?;
            Ok(move_outcome(report))
        }
        Job::Retention => {
            let report = lifecycle::retention(db, None, schedule.gate, None).await?;
            Ok(move_outcome(report))
        }
    }
}

fn move_outcome(report: lifecycle::MoveReport) -> RunOutcome {
    RunOutcome {
        rows_affected: report.moved.len() as i64,
        deferred: !report.deferred.is_empty(),
        details: serde_json::to_value(&report).unwrap_or_default(),
    }
}
