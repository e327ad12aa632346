//! What the writers pay: insert rows/s with 2 and 4 writer connections (1,000-row
//! transactions) into the bare ChronoTable, into the same table while the service's
//! pipeline streams it with every operator, and into the table carrying the spec's trigger
//! design (benches/spec_triggers.sql). Scenarios are interleaved, in an order rotated per
//! repetition, and each is reported as a ratio to bare.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, PgResultExt, Result};

/// The spec's triggers, installed by the benchmark.
const SPEC_TRIGGERS_SQL: &str = include_str!("../../benches/spec_triggers.sql");

const SCENARIOS: [&str; 3] = ["bare", "lakets", "triggers"];
const SLOT: &str = "bench_write_path";

#[derive(Debug, Clone)]
pub struct WritePathOptions {
    pub writers: Vec<usize>,
    pub seconds: f64,
    pub repetitions: usize,
    /// The paced rate (rows/s, over 2 writers) of the commit-latency runs: one every
    /// scenario, the spec's triggers included, can hold.
    pub latency_rate: u64,
}

/// Commit latency of 1,000-row transactions at a fixed rate below every scenario's ceiling:
/// what a writer feels when the machine is not saturated.
#[derive(Debug, Clone, Serialize)]
pub struct WriteLatency {
    pub scenario: String,
    pub target_rows_per_second: u64,
    pub rows: u64,
    pub achieved_rows_per_second: f64,
    pub latency: super::freshness::Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteRun {
    pub scenario: String,
    pub writers: usize,
    pub repetition: usize,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteRatio {
    pub writers: usize,
    pub bare_rows_per_second: f64,
    pub lakets_rows_per_second: f64,
    pub triggers_rows_per_second: f64,
    /// With the service streaming / bare (target >= 0.95).
    pub lakets_ratio: f64,
    /// With the spec's triggers / bare.
    pub triggers_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WritePathReport {
    /// The server's version string.
    pub postgres: String,
    pub seconds_per_run: f64,
    pub runs: Vec<WriteRun>,
    pub ratios: Vec<WriteRatio>,
    pub latencies: Vec<WriteLatency>,
    /// Rows the spec's CDF-mirror trigger copied into its shadow table: equal to the rows
    /// written in the trigger runs (throughput and latency) when the triggers did their
    /// work.
    pub spec_shadow_rows: i64,
}

pub async fn write_path(options: &WritePathOptions) -> Result<WritePathReport> {
    let (pg, url, mut client) = super::stock_ticks_database(None).await?;
    let db = crate::db::parse_config(&url)?;
    let _lake = super::attach_operators(&mut client, &db).await?;
    super::create_slot(&client, SLOT).await?;
    for statement in SPEC_TRIGGERS_SQL.split("\n--;;\n") {
        client
            .batch_execute(statement)
            .await
            .pg_context(|| "installing benches/spec_triggers.sql".into())?;
    }

    let postgres: String = client
        .query_one("SELECT version()", &[])
        .await
        .pg_context(|| "reading the server version".into())?
        .get(0);
    let postgres = postgres.split(" on ").next().unwrap_or_default().to_owned();
    let mut runs = Vec::new();
    for rep in 0..options.repetitions {
        for &writers in &options.writers {
            let mut order = SCENARIOS;
            order.rotate_left(rep % SCENARIOS.len());
            for scenario in order {
                let (rows, seconds) = in_scenario(&client, &db, scenario, async {
                    insert_for(&db, writers, options.seconds).await
                })
                .await?;
                runs.push(WriteRun {
                    scenario: scenario.into(),
                    writers,
                    repetition: rep,
                    rows,
                    seconds,
                    rows_per_second: rows as f64 / seconds,
                });
            }
        }
    }
    let mut latencies = Vec::new();
    for scenario in SCENARIOS {
        let rate = options.latency_rate;
        let (rows, ms) = in_scenario(&client, &db, scenario, async {
            super::sustained::paced_insert(db.clone(), 2, rate, options.seconds).await
        })
        .await?;
        latencies.push(WriteLatency {
            scenario: scenario.into(),
            target_rows_per_second: rate,
            rows,
            achieved_rows_per_second: rows as f64 / options.seconds,
            latency: super::freshness::stats(ms),
        });
    }
    let spec_shadow_rows: i64 = client
        .query_one("SELECT count(*) FROM lakets_cdf.stock_ticks", &[])
        .await
        .pg_context(|| "counting the spec's shadow table".into())?
        .get(0);
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;

    let mean = |scenario: &str, writers: usize| {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|r| r.scenario == scenario && r.writers == writers)
            .map(|r| r.rows_per_second)
            .collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    };
    let ratios = options
        .writers
        .iter()
        .map(|&writers| {
            let bare = mean("bare", writers);
            let lakets = mean("lakets", writers);
            let triggers = mean("triggers", writers);
            WriteRatio {
                writers,
                bare_rows_per_second: bare,
                lakets_rows_per_second: lakets,
                triggers_rows_per_second: triggers,
                lakets_ratio: lakets / bare,
                triggers_ratio: triggers / bare,
            }
        })
        .collect();
    Ok(WritePathReport {
        postgres,
        seconds_per_run: options.seconds,
        runs,
        ratios,
        latencies,
        spec_shadow_rows,
    })
}

async fn set_triggers(client: &tokio_postgres::Client, attach: bool) -> Result<()> {
    client
        .execute("SELECT lakets_bench_spec_triggers($1)", &[&attach])
        .await
        .pg_context(|| "attaching or detaching the spec's triggers".into())?;
    Ok(())
}

/// Runs `write` in a scenario: on the bare table, with the spec's triggers attached, or
/// with the service's pipeline streaming the table. For the latter the slot is first moved
/// to the end of the WAL (the other scenarios' rows are not this run's work) and the
/// pipeline has caught up before the writers start.
async fn in_scenario<T>(
    client: &tokio_postgres::Client,
    db: &crate::db::DbConfig,
    scenario: &str,
    write: impl Future<Output = Result<T>>,
) -> Result<T> {
    match scenario {
        "bare" => write.await,
        "triggers" => {
            set_triggers(client, true).await?;
            let result = write.await;
            set_triggers(client, false).await?;
            result
        }
        _ => {
            client
                .execute(
                    "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
                    &[&SLOT],
                )
                .await
                .pg_context(|| format!("advancing slot {SLOT}"))?;
            let stop = CancellationToken::new();
            let (status, task) = super::spawn_service_pipeline(
                db,
                SLOT,
                false,
                Duration::from_secs(1),
                None,
                stop.clone(),
            );
            let result = match super::end_marker(client).await {
                Ok(end) => {
                    match super::wait_acknowledged(&status, &task, end, Duration::from_secs(120))
                        .await
                    {
                        Ok(()) => write.await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let pipeline_error = status.lock().unwrap().last_error.clone();
            super::stop_pipeline(&stop, task).await?;
            result.map_err(|e| match pipeline_error {
                Some(pipeline) => Error::Operator(format!("{e} (pipeline: {pipeline})")),
                None => e,
            })
        }
    }
}

/// `writers` connections insert 1,000-row transactions for `seconds`; returns the rows
/// written and the seconds it took.
pub(crate) async fn insert_for(
    db: &crate::db::DbConfig,
    writers: usize,
    seconds: f64,
) -> Result<(u64, f64)> {
    let mut clients = Vec::with_capacity(writers);
    for _ in 0..writers {
        clients.push(crate::db::connect_with(db).await?);
    }
    let rows = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for (w, client) in clients.into_iter().enumerate() {
        let rows = rows.clone();
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare(INSERT_1000)
                .await
                .pg_context(|| "preparing the insert".into())?;
            let mut i = w as i64 * 1_000_000_000;
            while Instant::now() < deadline {
                client
                    .execute(&insert, &[&i])
                    .await
                    .pg_context(|| "inserting ticks".into())?;
                rows.fetch_add(1000, Ordering::Relaxed);
                i += 1000;
            }
            Ok::<(), Error>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| Error::Operator(format!("writer task: {e}")))??;
    }
    Ok((
        rows.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

/// One 1,000-row transaction of ticks at the current time over 10 symbols.
pub(crate) const INSERT_1000: &str = "INSERT INTO stock_ticks
     SELECT now(),
            (ARRAY['AAPL','MSFT','NVDA','AMZN','GOOG','META','TSLA','JPM','V','XOM'])[1 + g % 10],
            100 + (($1::bigint + g) % 1000) * 0.01, 100 + g % 900
       FROM generate_series(1, 1000) g";
