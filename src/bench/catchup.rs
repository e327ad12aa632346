//! `lakets bench catchup`: a backlog of N stock ticks (1,000-row transactions) waits in
//! several slots created at the same WAL position. Then, one after the other,
//! `pg_recvlogical --endpos` drains one slot to /dev/null (PostgreSQL's own client: the
//! walsender's ceiling), the lakets pipeline with the chunk tracker drains another, and the
//! pipeline with the chunk tracker and the Delta mirror a third, until every operator has
//! stored the whole backlog (for Delta: committed to the table). Text and binary protocol
//! both, repeated and interleaved.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::embedded::EmbeddedPostgres;
use crate::error::{Error, PgResultExt, Result};
use crate::operators::chunk_tracker::ChunkTracker;
use crate::operators::delta_sink::DeltaSink;
use crate::wal::lsn::Lsn;
use crate::wal::{Pipeline, PipelineConfig, SourceSettings};

#[derive(Debug, Clone)]
pub struct CatchupOptions {
    pub rows: u64,
    pub repetitions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub consumer: String,
    pub protocol: String,
    pub repetition: usize,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Changes the lakets pipeline received (a check that it saw the whole backlog).
    pub changes_seen: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CatchupReport {
    pub rows: u64,
    pub repetitions: usize,
    pub measurements: Vec<Measurement>,
    /// Best lakets rate over best pg_recvlogical rate, per protocol.
    pub ratio_text: f64,
    pub ratio_binary: f64,
    /// The same with the Delta mirror attached.
    pub ratio_delta_text: f64,
    pub ratio_delta_binary: f64,
    pub machine: String,
}

const PROTOCOLS: [(&str, bool); 2] = [("text", false), ("binary", true)];
/// pg_recvlogical, lakets with the chunk tracker, lakets with the tracker and Delta.
const CONSUMERS: [&str; 3] = ["recv", "lakets", "delta"];

pub async fn catchup(options: &CatchupOptions) -> Result<CatchupReport> {
    let (pg, url, client) = super::stock_ticks_database(None).await?;
    crate::wal::setup::ensure_publication(&client, "lakets").await?;
    let db_config = crate::db::parse_config(&url)?;
    let _lake = super::sync_stock_ticks(&db_config).await?;
    // enable_sync made the service's default slot; the bench drains its own slots.
    let default_slot = crate::wal::setup::default_slot_name("lakets_bench");
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&default_slot])
        .await
        .pg_context(|| format!("dropping slot {default_slot}"))?;

    let mut measurements = Vec::new();
    for rep in 0..options.repetitions {
        let slots: Vec<(String, &str, bool)> = CONSUMERS
            .iter()
            .flat_map(|who| {
                PROTOCOLS
                    .iter()
                    .map(move |(name, binary)| (format!("bench_{who}_{name}_{rep}"), *who, *binary))
            })
            .collect();
        for (slot, _, _) in &slots {
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[slot],
                )
                .await
                .pg_context(|| format!("creating slot {slot}"))?;
        }
        let marker = write_backlog(&client, options.rows).await?;
        // Interleave: for each protocol, every consumer, in an order rotated per
        // repetition (the first drain after the backlog competes with autovacuum).
        for (name, binary) in PROTOCOLS {
            let mut order = CONSUMERS;
            order.rotate_left(rep % CONSUMERS.len());
            for who in order {
                let slot = format!("bench_{who}_{name}_{rep}");
                let started = Instant::now();
                let changes_seen = if who == "recv" {
                    run_pg_recvlogical(&pg, &slot, binary, marker).await?;
                    None
                } else {
                    let seen =
                        run_lakets(&db_config, &slot, binary, marker, who == "delta").await?;
                    if seen < options.rows {
                        return Err(Error::Operator(format!(
                            "the {who} consumer saw {seen} changes of a {}-row backlog",
                            options.rows
                        )));
                    }
                    Some(seen)
                };
                let seconds = started.elapsed().as_secs_f64();
                measurements.push(Measurement {
                    consumer: match who {
                        "recv" => "pg_recvlogical".into(),
                        "lakets" => "lakets".into(),
                        _ => "lakets+delta".into(),
                    },
                    protocol: name.into(),
                    repetition: rep,
                    rows: options.rows,
                    seconds,
                    rows_per_second: options.rows as f64 / seconds,
                    changes_seen,
                });
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .pg_context(|| format!("dropping slot {slot}"))?;
            }
        }
        client
            .batch_execute("TRUNCATE stock_ticks")
            .await
            .pg_context(|| "truncating the backlog".into())?;
    }
    let best = |consumer: &str, protocol: &str| {
        measurements
            .iter()
            .filter(|m| m.consumer == consumer && m.protocol == protocol)
            .map(|m| m.rows_per_second)
            .fold(0.0, f64::max)
    };
    let ratio_text = best("lakets", "text") / best("pg_recvlogical", "text");
    let ratio_binary = best("lakets", "binary") / best("pg_recvlogical", "binary");
    let ratio_delta_text = best("lakets+delta", "text") / best("pg_recvlogical", "text");
    let ratio_delta_binary = best("lakets+delta", "binary") / best("pg_recvlogical", "binary");
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;
    Ok(CatchupReport {
        rows: options.rows,
        repetitions: options.repetitions,
        measurements,
        ratio_text,
        ratio_binary,
        ratio_delta_text,
        ratio_delta_binary,
        machine: machine_description(),
    })
}

/// Writes `rows` ticks in 1,000-row transactions; returns the LSN of a marker message
/// written after them (both consumers stop there).
async fn write_backlog(client: &tokio_postgres::Client, rows: u64) -> Result<Lsn> {
    let per_txn = 1000u64;
    let mut written = 0u64;
    while written < rows {
        let n = per_txn.min(rows - written) as i64;
        client
            .execute(
                "INSERT INTO stock_ticks
                 SELECT now() - (i % 3000) * interval '1 second',
                        (ARRAY['AAPL','MSFT','NVDA','AMZN','GOOG','META','TSLA','JPM','V','XOM'])[1 + i % 10],
                        100 + (i % 1000) * 0.01, 100 + i % 900
                   FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) i",
                &[&(written as i64), &n],
            )
            .await
            .pg_context(|| "writing the backlog".into())?;
        written += n as u64;
    }
    let lsn: String = client
        .query_one(
            "SELECT pg_logical_emit_message(false, 'lakets_bench_end', '')::text",
            &[],
        )
        .await
        .pg_context(|| "writing the end marker".into())?
        .get(0);
    lsn.parse()
}

async fn run_pg_recvlogical(
    pg: &EmbeddedPostgres,
    slot: &str,
    binary: bool,
    end: Lsn,
) -> Result<()> {
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=lakets_bench user={}",
        pg.port(),
        crate::embedded::SUPERUSER
    );
    let mut cmd = tokio::process::Command::new(pg.bindir().join("pg_recvlogical"));
    cmd.args([
        "-d",
        &conninfo,
        "--slot",
        slot,
        "--start",
        "--no-loop",
        "-f",
        "/dev/null",
    ])
    .arg(format!("--endpos={end}"))
    .args([
        "-o",
        "proto_version=1",
        "-o",
        "publication_names=lakets",
        "-o",
        "messages=true",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if binary {
        cmd.args(["-o", "binary=true"]);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| Error::io("running pg_recvlogical", e))?;
    if !out.status.success() {
        return Err(Error::Embedded(format!(
            "pg_recvlogical failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

async fn run_lakets(
    db: &tokio_postgres::Config,
    slot: &str,
    binary: bool,
    end: Lsn,
    with_delta: bool,
) -> Result<u64> {
    let mut source = SourceSettings::new(slot, "lakets");
    source.binary = binary;
    let mut config = PipelineConfig::new(source);
    config.flush_interval = Duration::from_millis(200);
    config.ack_interval = Duration::from_millis(50);
    config.heartbeat_interval = None;
    let tracker = ChunkTracker::new(crate::db::connect_with(db).await?, slot).await?;
    let mut pipeline = Pipeline::new(db.clone(), config).operator(tracker);
    if with_delta {
        pipeline =
            pipeline.operator(DeltaSink::new(crate::db::connect_with(db).await?, slot).await?);
    }
    let status = pipeline.status();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    loop {
        if status.lock().unwrap().acknowledged_lsn >= end {
            break;
        }
        if run.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    run.await
        .map_err(|e| Error::Embedded(format!("pipeline task: {e}")))??;
    let seen = status.lock().unwrap().changes;
    Ok(seen)
}

pub(crate) fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

/// A human-readable table of a catch-up report.
pub fn catchup_table(report: &CatchupReport) -> String {
    let mut out = format!(
        "catch-up over a backlog of {} rows (1,000-row transactions), {} repetition(s), {}\n\n",
        report.rows, report.repetitions, report.machine
    );
    out.push_str(&format!(
        "{:<16} {:<8} {:>4} {:>10} {:>12}\n",
        "consumer", "protocol", "rep", "seconds", "rows/s"
    ));
    for m in &report.measurements {
        out.push_str(&format!(
            "{:<16} {:<8} {:>4} {:>10.2} {:>12.0}\n",
            m.consumer, m.protocol, m.repetition, m.seconds, m.rows_per_second
        ));
    }
    out.push_str(&format!(
        "\nlakets / pg_recvlogical (best of each): text {:.2}x, binary {:.2}x (target >= 0.9x)\n",
        report.ratio_text, report.ratio_binary
    ));
    out.push_str(&format!(
        "lakets with the Delta mirror / pg_recvlogical: text {:.2}x, binary {:.2}x\n",
        report.ratio_delta_text, report.ratio_delta_binary
    ));
    out
}
