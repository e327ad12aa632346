//! The sustained rate: the highest ingest rate at which the service's lag stays bounded for
//! a whole window (60 s by default).
//!
//! Each step writes at a fixed rate (1,000-row transactions over several paced writer
//! connections) while the service's pipeline streams with every operator, and samples the
//! lag every second: WAL written minus the oldest position every operator made durable. A
//! step passes when the writers held the rate (95 %) and the lag did not grow over the
//! window by more than two seconds of WAL. Rates double from the start rate until a step
//! fails, then one bisection step narrows the bound.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, PgResultExt, Result};
use crate::wal::lsn::Lsn;

#[derive(Debug, Clone)]
pub struct SustainedOptions {
    pub start_rate: u64,
    pub seconds: u64,
    pub max_steps: usize,
    pub writers: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SustainedStep {
    pub target_rows_per_second: u64,
    pub achieved_rows_per_second: f64,
    pub wal_bytes_per_second: f64,
    /// Lag (bytes) per second of the window.
    pub lag_bytes: Vec<u64>,
    pub max_lag_seconds: f64,
    /// Lag growth from the first third of the window to its last ten seconds, in seconds
    /// of WAL.
    pub lag_growth_seconds: f64,
    pub bounded: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SustainedReport {
    pub seconds_per_step: u64,
    pub writers: usize,
    pub steps: Vec<SustainedStep>,
    /// The highest rate that passed (0 if none did).
    pub sustained_rows_per_second: u64,
}

pub async fn sustained(options: &SustainedOptions) -> Result<SustainedReport> {
    let (pg, url, mut client) = super::stock_ticks_database(super::History::None).await?;
    let db = crate::db::parse_config(&url)?;
    let _lake = super::attach_operators(&mut client, &db).await?;
    let mut steps: Vec<SustainedStep> = Vec::new();
    let mut rate = options.start_rate.max(1000);
    let (mut best_pass, mut first_fail): (Option<u64>, Option<u64>) = (None, None);
    for i in 0..options.max_steps {
        let step = run_step(&client, &db, &format!("bench_sustained_{i}"), rate, options).await?;
        tracing::info!(
            rate,
            achieved = step.achieved_rows_per_second,
            max_lag_seconds = step.max_lag_seconds,
            bounded = step.bounded,
            "sustained-rate step"
        );
        if step.bounded {
            best_pass = Some(best_pass.map_or(rate, |b| b.max(rate)));
        } else {
            first_fail = Some(first_fail.map_or(rate, |f| f.min(rate)));
        }
        steps.push(step);
        rate = match (best_pass, first_fail) {
            (Some(pass), None) => pass * 2,
            (Some(pass), Some(fail)) if fail > pass + fail / 10 => (pass + fail) / 2 / 1000 * 1000,
            (None, Some(fail)) if fail > 2000 => fail / 2,
            _ => break,
        };
    }
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;
    Ok(SustainedReport {
        seconds_per_step: options.seconds,
        writers: options.writers,
        steps,
        sustained_rows_per_second: best_pass.unwrap_or(0),
    })
}

async fn run_step(
    client: &tokio_postgres::Client,
    db: &crate::db::DbConfig,
    slot: &str,
    rate: u64,
    options: &SustainedOptions,
) -> Result<SustainedStep> {
    for statement in ["TRUNCATE stock_ticks", "CHECKPOINT"] {
        client
            .batch_execute(statement)
            .await
            .pg_context(|| format!("emptying stock_ticks ({statement})"))?;
    }
    super::create_slot(client, slot).await?;
    let stop = CancellationToken::new();
    let (status, task) =
        super::spawn_service_pipeline(db, slot, false, Duration::from_secs(1), None, stop.clone());
    let end = super::end_marker(client).await?;
    if let Err(e) = super::wait_acknowledged(&status, &task, end, Duration::from_secs(60)).await {
        super::stop_pipeline(&stop, task).await?;
        return Err(e);
    }

    let wal_start = current_wal(client).await?;
    let writing = tokio::spawn(super::writers::paced_insert(
        db.clone(),
        options.writers,
        rate,
        options.seconds as f64,
    ));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut lag_bytes = Vec::new();
    while !writing.is_finished() {
        ticker.tick().await;
        let wal = current_wal(client).await?;
        let durable = super::min_durable(&status.lock().unwrap());
        lag_bytes.push(wal.0.saturating_sub(durable.0));
    }
    let (rows, _) = writing
        .await
        .map_err(|e| Error::Operator(format!("writer task: {e}")))??;
    let seconds = started.elapsed().as_secs_f64();
    let wal_end = current_wal(client).await?;
    super::stop_pipeline(&stop, task).await?;
    super::drop_slot(client, slot).await?;

    // Writers stop at the deadline: rows over the window is the rate they held.
    let achieved = rows as f64 / options.seconds as f64;
    let wal_rate = (wal_end.0 - wal_start.0) as f64 / seconds;
    let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64;
    let n = lag_bytes.len();
    let third = &lag_bytes[..(n / 3).max(1).min(n)];
    let last = &lag_bytes[n.saturating_sub(10)..];
    let growth = (mean(last) - mean(third)) / wal_rate.max(1.0);
    let max_lag = lag_bytes.iter().copied().max().unwrap_or(0) as f64 / wal_rate.max(1.0);
    Ok(SustainedStep {
        target_rows_per_second: rate,
        achieved_rows_per_second: achieved,
        wal_bytes_per_second: wal_rate,
        lag_bytes,
        max_lag_seconds: max_lag,
        lag_growth_seconds: growth,
        bounded: achieved >= 0.95 * rate as f64 && growth < 2.0,
    })
}

async fn current_wal(client: &tokio_postgres::Client) -> Result<Lsn> {
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .pg_context(|| "reading the WAL position".into())?
        .get(0);
    lsn.parse()
}
