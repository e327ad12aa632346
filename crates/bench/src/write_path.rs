//! What the writers pay: insert rows/s with 2 and 4 writer connections (1,000-row
//! transactions) into the bare ChronoTable, into the same table while the service's
//! pipeline streams it with every operator, and into the table carrying the spec's trigger
//! design (crates/bench/sql/spec_triggers.sql), and into the table while `pg_recvlogical`
//! drains the same slot to /dev/null: what logical decoding itself costs the writers, which
//! no consumer can avoid, so the service's figure is set against it too. Scenarios are
//! interleaved, in an order rotated per repetition, and each is reported as a ratio to bare.
//!
//! On 2 cores the walsender and lakets take a core and a half from saturated writers, so
//! the runs are repeated with the cores split: the writers' backends pinned to one core,
//! the walsender and this process to another. That ratio shows what the writers pay when
//! decoding has a core of its own, as the design presumes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use lakets_testkit::embedded::EmbeddedPostgres;

use super::affinity::CpuSet;
use crate::error::{Error, PgResultExt, Result};

/// The spec's triggers, installed by the benchmark.
const SPEC_TRIGGERS_SQL: &str = include_str!("../sql/spec_triggers.sql");

const SCENARIOS: [&str; 4] = ["bare", "lakets", "triggers", RECV];
/// `pg_recvlogical` draining the slot the service streams from in its runs.
const RECV: &str = "pg_recvlogical";
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
    /// With pg_recvlogical draining the same slot (the same transport and protocol).
    pub recvlogical_rows_per_second: f64,
    /// With the service streaming / bare (target >= 0.95).
    pub lakets_ratio: f64,
    /// With the spec's triggers / bare.
    pub triggers_ratio: f64,
    /// pg_recvlogical draining / bare: the cost of decoding alone.
    pub recvlogical_ratio: f64,
    /// With the service streaming / with pg_recvlogical draining (target >= 0.95).
    pub lakets_over_recvlogical: f64,
}

/// 2 writers on one core, bare and with the service's decoding on another core.
#[derive(Debug, Clone, Serialize)]
pub struct SplitCores {
    pub writer_cpu: usize,
    pub decoder_cpu: usize,
    pub bare_rows_per_second: f64,
    pub lakets_rows_per_second: f64,
    /// Target >= 0.95.
    pub lakets_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WritePathReport {
    /// The server's version string.
    pub postgres: String,
    pub seconds_per_run: f64,
    pub runs: Vec<WriteRun>,
    pub ratios: Vec<WriteRatio>,
    pub latencies: Vec<WriteLatency>,
    /// The split-core runs; None when this machine cannot run them (see `split_skipped`).
    pub split: Option<SplitCores>,
    pub split_skipped: Option<String>,
    /// Rows the spec's CDF-mirror trigger copied into its shadow table: equal to the rows
    /// written in the trigger runs (throughput and latency) when the triggers did their
    /// work.
    pub spec_shadow_rows: i64,
}

pub async fn write_path(options: &WritePathOptions) -> Result<WritePathReport> {
    let (pg, url, mut client) = super::stock_ticks_database(super::History::None).await?;
    let db = crate::db::parse_config(&url)?;
    let _lake = super::attach_operators(&mut client, &db).await?;
    super::create_slot(&client, SLOT).await?;
    for statement in SPEC_TRIGGERS_SQL.split("\n--;;\n") {
        client
            .batch_execute(statement)
            .await
            .pg_context(|| "installing crates/bench/sql/spec_triggers.sql".into())?;
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
                let (rows, seconds) = in_scenario(&pg, &client, &db, scenario, None, async {
                    insert_for(&db, writers, options.seconds, None).await
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
        let (rows, ms) = in_scenario(&pg, &client, &db, scenario, None, async {
            super::writers::paced_insert(db.clone(), 2, rate, options.seconds).await
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
    let (split, split_skipped) = match split_cores(&pg, &client, &db, options).await? {
        Ok(split) => (Some(split), None),
        Err(why) => (None, Some(why)),
    };
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
            let recvlogical = mean(RECV, writers);
            WriteRatio {
                writers,
                bare_rows_per_second: bare,
                lakets_rows_per_second: lakets,
                triggers_rows_per_second: triggers,
                recvlogical_rows_per_second: recvlogical,
                lakets_ratio: lakets / bare,
                triggers_ratio: triggers / bare,
                recvlogical_ratio: recvlogical / bare,
                lakets_over_recvlogical: lakets / recvlogical,
            }
        })
        .collect();
    Ok(WritePathReport {
        postgres,
        seconds_per_run: options.seconds,
        runs,
        ratios,
        latencies,
        split,
        split_skipped,
        spec_shadow_rows,
    })
}

/// Bare and with the service, 2 writers pinned to the first CPU; this process (the
/// pipeline) and the walsender pinned to the second. Err(why) when it cannot be run here.
async fn split_cores(
    pg: &EmbeddedPostgres,
    client: &tokio_postgres::Client,
    db: &crate::db::DbConfig,
    options: &WritePathOptions,
) -> Result<std::result::Result<SplitCores, String>> {
    let all = match CpuSet::current() {
        Ok(all) => all,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let (Some(writer_cpu), Some(decoder_cpu)) = (all.nth(0), all.nth(1)) else {
        return Ok(Err("fewer than 2 CPUs".into()));
    };
    let cpus = Cpus {
        writers: CpuSet::of(&[writer_cpu]),
        decoder: CpuSet::of(&[decoder_cpu]),
        all,
    };
    let mut rates: [Vec<f64>; 2] = Default::default();
    for rep in 0..options.repetitions {
        let mut order = [("bare", 0), ("lakets", 1)];
        order.rotate_left(rep % 2);
        for (scenario, i) in order {
            let run = in_scenario(pg, client, db, scenario, Some(&cpus), async {
                insert_for(db, 2, options.seconds, Some(&cpus.writers)).await
            })
            .await;
            // Whatever happened, this process gets every CPU back.
            cpus.all.pin_this_process()?;
            let (rows, seconds) = run?;
            rates[i].push(rows as f64 / seconds);
        }
    }
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len().max(1) as f64;
    let (bare, lakets) = (mean(&rates[0]), mean(&rates[1]));
    Ok(Ok(SplitCores {
        writer_cpu,
        decoder_cpu,
        bare_rows_per_second: bare,
        lakets_rows_per_second: lakets,
        lakets_ratio: lakets / bare,
    }))
}

/// Where the split-core runs put whom.
struct Cpus {
    writers: CpuSet,
    decoder: CpuSet,
    all: CpuSet,
}

async fn set_triggers(client: &tokio_postgres::Client, attach: bool) -> Result<()> {
    client
        .execute("SELECT lakets_bench_spec_triggers($1)", &[&attach])
        .await
        .pg_context(|| "attaching or detaching the spec's triggers".into())?;
    Ok(())
}

/// Runs `write` in a scenario: on the bare table, with the spec's triggers attached, with
/// the service's pipeline streaming the table, or with pg_recvlogical draining its slot.
/// For the last two the slot is first moved to the end of the WAL (the other scenarios'
/// rows are not this run's work), and the service's pipeline has caught up before the
/// writers start. With `split`, this process and the walsender move to the decoder's CPU
/// before the writers start.
async fn in_scenario<T>(
    pg: &EmbeddedPostgres,
    client: &tokio_postgres::Client,
    db: &crate::db::DbConfig,
    scenario: &str,
    split: Option<&Cpus>,
    write: impl Future<Output = Result<T>>,
) -> Result<T> {
    match scenario {
        "bare" => {
            if let Some(cpus) = split {
                cpus.decoder.pin_this_process()?;
            }
            write.await
        }
        "triggers" => {
            set_triggers(client, true).await?;
            let result = write.await;
            set_triggers(client, false).await?;
            result
        }
        RECV => {
            advance_slot(client).await?;
            // The service's pipeline streams text over TCP here: so does the baseline.
            let mut recv = super::recvlogical::command(pg, pg.host(), SLOT, "lakets", false)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Error::io("starting pg_recvlogical", e))?;
            let result = match slot_streamed(client, &mut recv).await {
                Ok(()) => write.await,
                Err(e) => Err(e),
            };
            let _ = recv.start_kill();
            let _ = recv.wait().await;
            // The service's next run takes the slot over: its walsender must be gone.
            wait_slot_released(client).await?;
            result
        }
        _ => {
            advance_slot(client).await?;
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
                        Ok(()) => match pin_decoding(client, split).await {
                            Ok(()) => write.await,
                            Err(e) => Err(e),
                        },
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

/// Moves the slot to the end of the WAL.
async fn advance_slot(client: &tokio_postgres::Client) -> Result<()> {
    client
        .execute(
            "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
            &[&SLOT],
        )
        .await
        .pg_context(|| format!("advancing slot {SLOT}"))?;
    Ok(())
}

/// Waits until `recv` streams from the slot (a walsender holds it), or says why not.
async fn slot_streamed(
    client: &tokio_postgres::Client,
    recv: &mut tokio::process::Child,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if super::slot_walsender(client, SLOT).await?.is_some() {
            return Ok(());
        }
        if let Some(status) = recv
            .try_wait()
            .map_err(|e| Error::io("waiting for pg_recvlogical", e))?
        {
            let mut stderr = String::new();
            if let Some(mut pipe) = recv.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            return Err(Error::Embedded(format!(
                "pg_recvlogical exited ({status}) before streaming: {stderr}"
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Embedded(format!(
                "pg_recvlogical did not take slot {SLOT} within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_slot_released(client: &tokio_postgres::Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while super::slot_walsender(client, SLOT).await?.is_some() {
        if Instant::now() > deadline {
            return Err(Error::Embedded(format!(
                "slot {SLOT} still held 30 s after pg_recvlogical was stopped"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Moves this process, the slot's walsender and every other session open now (the
/// pipeline's operators write through theirs) to the decoder's CPU; the writers connect
/// afterwards.
async fn pin_decoding(client: &tokio_postgres::Client, split: Option<&Cpus>) -> Result<()> {
    let Some(cpus) = split else { return Ok(()) };
    if super::slot_walsender(client, SLOT).await?.is_none() {
        return Err(Error::Operator(format!("slot {SLOT} has no walsender")));
    }
    let sessions = client
        .query(
            "SELECT pid FROM pg_stat_activity
              WHERE backend_type IN ('client backend', 'walsender')",
            &[],
        )
        .await
        .pg_context(|| "listing the sessions".into())?;
    for row in sessions {
        cpus.decoder.pin(row.get(0))?;
    }
    cpus.decoder.pin_this_process()
}

/// `writers` connections insert 1,000-row transactions for `seconds`, from a thread of
/// their own (it and their backends pinned to `pin`, when given); returns the rows
/// written and the seconds it took.
pub(crate) async fn insert_for(
    db: &crate::db::DbConfig,
    writers: usize,
    seconds: f64,
    pin: Option<&CpuSet>,
) -> Result<(u64, f64)> {
    let (db, pin) = (db.clone(), pin.cloned());
    super::on_writer_thread(pin.clone(), async move {
        let mut clients = Vec::with_capacity(writers);
        for _ in 0..writers {
            let client = crate::db::connect_with(&db.as_application()).await?;
            if let Some(cpus) = &pin {
                let backend: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .pg_context(|| "reading a writer's backend".into())?
                    .get(0);
                cpus.pin(backend)?;
            }
            clients.push(client);
        }
        let rows = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for (w, client) in clients.into_iter().enumerate() {
            let rows = rows.clone();
            tasks.push(tokio::spawn(async move {
                let insert = client
                    .prepare(super::writers::INSERT_1000)
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
    })
    .await
}

/// The human-readable report.
pub fn write_path_table(report: &WritePathReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "write path: rows/s, 1,000-row transactions, {} s per run, interleaved\n",
        report.seconds_per_run
    ));
    out.push_str(&format!(
        "{:<8} {:>12} {:>16} {:>8} {:>16} {:>8} {:>16} {:>8} {:>14}\n",
        "writers",
        "bare",
        "service on",
        "ratio",
        "spec triggers",
        "ratio",
        "pg_recvlogical",
        "ratio",
        "service/recv"
    ));
    for r in &report.ratios {
        out.push_str(&format!(
            "{:<8} {:>12.0} {:>16.0} {:>7.2}x {:>16.0} {:>7.2}x {:>16.0} {:>7.2}x {:>13.2}x\n",
            r.writers,
            r.bare_rows_per_second,
            r.lakets_rows_per_second,
            r.lakets_ratio,
            r.triggers_rows_per_second,
            r.triggers_ratio,
            r.recvlogical_rows_per_second,
            r.recvlogical_ratio,
            r.lakets_over_recvlogical
        ));
    }
    match (&report.split, &report.split_skipped) {
        (Some(s), _) => out.push_str(&format!(
            "\ncores split: 2 writers' backends on CPU {}, the walsender and lakets on CPU {}:\n\
             bare {:.0} rows/s, service streaming {:.0} rows/s, ratio {:.2}x\n",
            s.writer_cpu,
            s.decoder_cpu,
            s.bare_rows_per_second,
            s.lakets_rows_per_second,
            s.lakets_ratio
        )),
        (None, Some(why)) => out.push_str(&format!("\ncores split: skipped ({why})\n")),
        (None, None) => {}
    }
    out.push_str(&format!(
        "\ncommit latency of a 1,000-row transaction at a fixed rate (2 writers):\n{:<14} {:>10} {:>10} {:>10} {:>10}\n",
        "scenario", "rows/s", "p50 ms", "p99 ms", "max ms"
    ));
    for l in &report.latencies {
        out.push_str(&format!(
            "{:<14} {:>10.0} {:>10.2} {:>10.2} {:>10.2}\n",
            l.scenario,
            l.achieved_rows_per_second,
            l.latency.p50_ms,
            l.latency.p99_ms,
            l.latency.max_ms
        ));
    }

    out
}
