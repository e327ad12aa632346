//! `lakets bench rollup`: what the rollup engine and its operators cost, in one run.
//!
//! - Refresh cost vs table size: two ChronoTables of stock ticks, one 10x longer than the
//!   other, each with the three-level OHLCV DAG. Each repetition writes the same late
//!   ticks (same offsets from now) into both, lets the invalidation operator log them,
//!   and times the cascade refresh of each DAG (alternating which goes first). The ratio
//!   10x / 1x should stay near 1: refresh cost follows the invalidated buckets.
//! - Operator apply rates: a backlog of ticks drained by the pipeline with the chunk
//!   tracker alone, with the Last Value Cache, and with the invalidation operator, each
//!   from its own slot created at the same WAL position (changes/s until stored).

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, PgResultExt, Result};
use crate::interval::Interval;
use crate::wal::lsn::Lsn;
use crate::wal::{PipelineConfig, SourceSettings};
use lakets_core::chronotable::tracker;
use lakets_core::operators::{Attach, COMPONENTS, Component};
use lakets_core::rollup::invalidations::Invalidations;
use lakets_core::rollup::{self, CreateRollup};
use lakets_testkit::embedded::{EmbeddedOptions, EmbeddedPostgres};

#[derive(Debug, Clone)]
pub struct RollupBenchOptions {
    /// Hours of history of the small table (the large one has 10x).
    pub hours: i32,
    pub symbols: i32,
    /// Late ticks written per repetition.
    pub late_ticks: i32,
    pub repetitions: usize,
    /// Rows of the backlog for the operator apply rates.
    pub backlog_rows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefreshMeasurement {
    pub table: String,
    pub rows: i64,
    pub repetition: usize,
    pub invalidations_consumed: u64,
    pub ranges_recomputed: u64,
    pub milliseconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyMeasurement {
    pub operators: String,
    pub changes: u64,
    pub seconds: f64,
    pub changes_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollupBenchReport {
    pub small_rows: i64,
    pub large_rows: i64,
    pub initial_materialization_ms: [f64; 2],
    pub refreshes: Vec<RefreshMeasurement>,
    pub median_refresh_ms_small: f64,
    pub median_refresh_ms_large: f64,
    /// Median refresh time on the 10x table over the 1x table (target: near 1).
    pub refresh_ratio: f64,
    pub apply: Vec<ApplyMeasurement>,
    pub machine: String,
}

const TABLES: [&str; 2] = ["ticks_1x", "ticks_10x"];

pub async fn rollup_bench(options: &RollupBenchOptions) -> Result<RollupBenchReport> {
    let pg = tokio::task::spawn_blocking(|| EmbeddedPostgres::start(EmbeddedOptions::default()))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))??;
    let url = pg.create_database("lakets_bench").await?;
    let db = crate::db::parse_config(&url)?;
    let mut client = crate::db::connect_as_application(&url).await?;
    lakets_core::catalog::migrate(&mut client).await?;
    let mut rows = [0i64; 2];
    for (i, table) in TABLES.iter().enumerate() {
        let hours = options.hours * if i == 0 { 1 } else { 10 };
        eprintln!(
            "writing {table}: {hours} h x {} symbols, 1 tick/s each",
            options.symbols
        );
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (time timestamptz NOT NULL, symbol text NOT NULL,
                                       price double precision NOT NULL, volume bigint NOT NULL)"
            ))
            .await
            .pg_context(|| format!("creating {table}"))?;
        client
            .execute(
                &format!(
                    "INSERT INTO {table}
                     SELECT t, 'S' || s, 100 + 10 * sin(extract(epoch FROM t) / 3600 + s), 1 + s
                       FROM generate_series(date_trunc('minute', now()) - make_interval(hours => $1),
                                            now(), interval '1 second') t,
                            generate_series(1, $2) s"
                ),
                &[&hours, &options.symbols],
            )
            .await
            .pg_context(|| format!("filling {table}"))?;
        let mut create = lakets_core::chronotable::CreateOptions::new("time");
        create.chunk_interval = Interval::hours(1);
        lakets_core::chronotable::create_chronotable(&mut client, table, &create).await?;
        client
            .batch_execute(&format!("CREATE INDEX ON {table} (time); ANALYZE {table};"))
            .await
            .pg_context(|| format!("indexing {table}"))?;
        rows[i] = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .pg_context(|| "counting".into())?
            .get(0);
        for (level, source, bucket) in [
            ("1min", table.to_string(), Interval::from_secs(60)),
            ("1hour", format!("{table}_1min"), Interval::hours(1)),
            ("1day", format!("{table}_1hour"), Interval::days(1)),
        ] {
            rollup::create_rollup(
                &mut client,
                &CreateRollup {
                    name: format!("{table}_{level}"),
                    source,
                    bucket,
                    group_by: vec!["symbol".into()],
                    aggregate: "ohlcv(price, volume)".into(),
                    refresh_lag: Interval::ZERO,
                },
            )
            .await?;
        }
    }
    let mut initial = [0f64; 2];
    for (i, table) in TABLES.iter().enumerate() {
        let started = Instant::now();
        rollup::refresh::refresh(&mut client, Some(&format!("{table}_1min")), true, true).await?;
        initial[i] = started.elapsed().as_secs_f64() * 1e3;
    }

    // The invalidation operator, on the default slot, for the whole refresh part.
    let slot = crate::wal::slot::default_slot_name("lakets_bench");
    let mut config = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
    config.flush_interval = Duration::from_millis(100);
    config.ack_interval = Duration::from_millis(50);
    let op = Invalidations::new(crate::db::connect_with(&db).await?, slot.clone()).await?;
    let pipeline = lakets_core::operators::pipeline(db.clone(), config).operator(op);
    let status = pipeline.status();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));

    let mut refreshes = Vec::new();
    for rep in 0..options.repetitions {
        // The same late ticks, at the same offsets from now, in both tables: spread over
        // the small table's history.
        for table in TABLES {
            client
                .execute(
                    &format!(
                        "INSERT INTO {table}
                         SELECT now() - ((k * 7919) % ($1 * 3600 - 120) + 60) * interval '1 second',
                                'S' || (1 + k % $2), 1000 + k, 1
                           FROM generate_series(1, $3) k"
                    ),
                    &[&options.hours, &options.symbols, &options.late_ticks],
                )
                .await
                .pg_context(|| format!("writing late ticks into {table}"))?;
        }
        let end = wal_insert_lsn(&client).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while status.lock().unwrap().acknowledged_lsn < end {
            if run.is_finished() || Instant::now() > deadline {
                return Err(Error::Operator(
                    "the invalidation operator did not catch up".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let order: Vec<usize> = if rep % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let started = Instant::now();
            let reports = rollup::refresh::refresh(
                &mut client,
                Some(&format!("{}_1min", TABLES[i])),
                true,
                true,
            )
            .await?;
            refreshes.push(RefreshMeasurement {
                table: TABLES[i].into(),
                rows: rows[i],
                repetition: rep,
                invalidations_consumed: reports.iter().map(|r| r.invalidations_consumed).sum(),
                ranges_recomputed: reports.iter().map(|r| r.ranges_recomputed).sum(),
                milliseconds: started.elapsed().as_secs_f64() * 1e3,
            });
        }
    }
    stop.cancel();
    run.await
        .map_err(|e| Error::Operator(format!("pipeline task: {e}")))??;
    let median = |table: &str| {
        let mut ms: Vec<f64> = refreshes
            .iter()
            .filter(|m| m.table == table)
            .map(|m| m.milliseconds)
            .collect();
        ms.sort_by(f64::total_cmp);
        ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (small, large) = (median(TABLES[0]), median(TABLES[1]));

    let apply = apply_rates(&url, &mut client, options.backlog_rows).await?;
    drop(client);
    drop(pg);
    Ok(RollupBenchReport {
        small_rows: rows[0],
        large_rows: rows[1],
        initial_materialization_ms: initial,
        refreshes,
        median_refresh_ms_small: small,
        median_refresh_ms_large: large,
        refresh_ratio: large / small,
        apply,
        machine: super::catchup::machine_description(),
    })
}

const APPLY_SETS: [&str; 3] = ["tracker", "tracker+lvc", "tracker+invalidations"];

/// The operators of a set, from the one list ("tracker" is the chunk tracker).
fn components_of(set: &str) -> Vec<&'static dyn Component> {
    let names: Vec<&str> = set
        .split('+')
        .map(|n| if n == "tracker" { tracker::NAME } else { n })
        .collect();
    COMPONENTS
        .iter()
        .copied()
        .filter(|c| names.contains(&c.name()))
        .collect()
}

/// A backlog in `ticks_1x` drained from one slot per operator set.
async fn apply_rates(
    url: &str,
    client: &mut tokio_postgres::Client,
    rows: u64,
) -> Result<Vec<ApplyMeasurement>> {
    let db = crate::db::parse_config(url)?;
    lakets_core::lvc::enable_lvc(
        client,
        "ticks_1x",
        &["symbol".into()],
        &["price".into(), "volume".into()],
    )
    .await?;
    for set in APPLY_SETS {
        crate::wal::slot::ensure_slot(&*client, &slot_name(set)).await?;
    }
    eprintln!("writing a backlog of {rows} ticks");
    let batches = rows.div_ceil(1000);
    for b in 0..batches {
        client
            .execute(
                "INSERT INTO ticks_1x
                 SELECT now() - interval '30 minutes' + ($1::bigint * 1000 + g) * interval '1 ms',
                        'S' || (g % 10), 100 + g % 7, 1
                   FROM generate_series(1, 1000) g",
                &[&(b as i64)],
            )
            .await
            .pg_context(|| "writing the backlog".into())?;
    }
    let end = wal_insert_lsn(client).await?;
    let mut out = Vec::new();
    for set in APPLY_SETS {
        let slot = slot_name(set);
        let mut config = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
        config.flush_interval = Duration::from_millis(200);
        config.ack_interval = Duration::from_millis(50);
        config.heartbeat_interval = None;
        let ctx = Attach {
            db: &db,
            slot: &slot,
            view: None,
            maintenance: None,
        };
        let mut pipeline = lakets_core::operators::pipeline(db.clone(), config);
        for component in components_of(set) {
            pipeline = component.attach(pipeline, &ctx).await?;
        }
        let status = pipeline.status();
        let stop = CancellationToken::new();
        let started = Instant::now();
        let run = tokio::spawn(pipeline.run(stop.clone()));
        while status.lock().unwrap().acknowledged_lsn < end && !run.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        stop.cancel();
        run.await
            .map_err(|e| Error::Operator(format!("pipeline task: {e}")))??;
        let changes = status.lock().unwrap().changes;
        out.push(ApplyMeasurement {
            operators: set.into(),
            changes,
            seconds,
            changes_per_second: changes as f64 / seconds,
        });
        // The cluster is throwaway; dropping the drained slot just frees its WAL early.
        client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                  WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await
            .pg_context(|| format!("dropping slot {slot}"))?;
    }
    Ok(out)
}

async fn wal_insert_lsn(client: &tokio_postgres::Client) -> Result<Lsn> {
    client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .pg_context(|| "reading the WAL position".into())?
        .get::<_, String>(0)
        .parse()
}

fn slot_name(set: &str) -> String {
    format!("bench_{}", set.replace('+', "_"))
}

pub fn rollup_bench_table(r: &RollupBenchReport) -> String {
    let mut out = format!(
        "Rollup refresh, same late ticks into a 1x ({} rows) and a 10x ({} rows) table, \
         three-level OHLCV DAG:\n",
        r.small_rows, r.large_rows
    );
    out += &format!(
        "  initial materialization: 1x {:.0} ms, 10x {:.0} ms\n",
        r.initial_materialization_ms[0], r.initial_materialization_ms[1]
    );
    for m in &r.refreshes {
        out += &format!(
            "  rep {} {:<10} {:>5} invalidations, {:>5} ranges re-aggregated: {:>8.1} ms\n",
            m.repetition, m.table, m.invalidations_consumed, m.ranges_recomputed, m.milliseconds
        );
    }
    out += &format!(
        "  median refresh: 1x {:.1} ms, 10x {:.1} ms -> ratio {:.2} (target: near 1)\n\n",
        r.median_refresh_ms_small, r.median_refresh_ms_large, r.refresh_ratio
    );
    out += "Operator apply rates (catch-up over one backlog, each from its own slot):\n";
    for a in &r.apply {
        out += &format!(
            "  {:<24} {:>9} changes in {:>6.2} s = {:>9.0} changes/s\n",
            a.operators, a.changes, a.seconds, a.changes_per_second
        );
    }
    out += &format!("Machine: {}\n", r.machine);
    out
}
