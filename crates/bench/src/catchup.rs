//! `lakets bench catchup`: a backlog of N stock ticks (1,000-row transactions) waits in
//! several slots created at the same WAL position. Then, one after the other,
//! `pg_recvlogical --endpos` drains one slot to /dev/null (PostgreSQL's own client: the
//! walsender's ceiling) and the service's pipeline with all its operators (chunk tracker,
//! Last Value Cache, rollup invalidations, Delta mirror) drains another, until every
//! operator has stored the whole backlog (Delta: committed to the table). Text and binary
//! protocol both, repeated and interleaved.
//!
//! It also answers whether several slots lift the walsender's ceiling: two
//! `pg_recvlogical` drain two publications that split the table by a row filter, at once;
//! and what the transport costs the walsender: `pg_recvlogical` over the server's Unix
//! socket instead of TCP on loopback.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, PgResultExt, Result};
use crate::wal::lsn::Lsn;
use lakets_testkit::embedded::EmbeddedPostgres;

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
    /// Best lakets rate (all operators) over best pg_recvlogical rate, per protocol.
    pub ratio_text: f64,
    pub ratio_binary: f64,
    /// Best binary lakets rate over best text lakets rate.
    pub binary_over_text: f64,
    /// Two slots on row-filtered halves, drained at once, over one slot (pg_recvlogical,
    /// text): above 1 when several slots lift the ceiling.
    pub split_over_single: f64,
    /// pg_recvlogical over the Unix socket / over TCP (text, best of each).
    pub recv_unix_over_tcp: f64,
    pub machine: String,
}

const PROTOCOLS: [(&str, bool); 2] = [("text", false), ("binary", true)];
/// pg_recvlogical, the service's pipeline, two pg_recvlogical on split publications, and
/// pg_recvlogical over the Unix socket.
const CONSUMERS: [&str; 4] = ["recv", "lakets", "split", "recv_unix"];
/// The consumers' names in the report.
const RECV: &str = "pg_recvlogical";
const SPLIT: &str = "pg_recvlogical x2 split";
const LAKETS: &str = "lakets (all operators)";
const RECV_UNIX: &str = "pg_recvlogical, unix socket";
const SPLIT_PUBLICATIONS: [(&str, &str); 2] = [
    ("lakets_bench_split_a", "symbol < 'JPM'"),
    ("lakets_bench_split_b", "symbol >= 'JPM'"),
];

pub async fn catchup(options: &CatchupOptions) -> Result<CatchupReport> {
    let (pg, url, mut client) = super::stock_ticks_database(super::History::None).await?;
    let db_config = crate::db::parse_config(&url)?;
    let _lake = super::attach_operators(&mut client, &db_config).await?;
    for (publication, filter) in SPLIT_PUBLICATIONS {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {publication} FOR TABLE stock_ticks WHERE ({filter})
                   WITH (publish_via_partition_root = true)"
            ))
            .await
            .pg_context(|| format!("creating publication {publication}"))?;
    }

    let mut measurements = Vec::new();
    for rep in 0..options.repetitions {
        let mut slots = Vec::new();
        for who in CONSUMERS {
            for (name, _) in PROTOCOLS {
                if who == "split" {
                    if name == "text" {
                        slots.push(format!("bench_split_a_{rep}"));
                        slots.push(format!("bench_split_b_{rep}"));
                    }
                } else {
                    slots.push(format!("bench_{who}_{name}_{rep}"));
                }
            }
        }
        for slot in &slots {
            super::create_slot(&client, slot).await?;
        }
        let marker = write_backlog(&client, options.rows).await?;
        super::settle_backlog(&client).await?;
        // Interleave: every consumer, in an order rotated per repetition.
        let mut runs: Vec<(&str, &str, bool)> = Vec::new();
        for (name, binary) in PROTOCOLS {
            for who in CONSUMERS {
                if who != "split" || !binary {
                    runs.push((who, name, binary));
                }
            }
        }
        let rotation = rep % runs.len();
        runs.rotate_left(rotation);
        for (who, name, binary) in runs {
            let started = Instant::now();
            let changes_seen = match who {
                "recv" | "recv_unix" => {
                    let slot = format!("bench_{who}_{name}_{rep}");
                    let host = match who {
                        "recv" => pg.host().to_owned(),
                        _ => pg.socket_dir().display().to_string(),
                    };
                    run_pg_recvlogical(&pg, &host, &slot, "lakets", binary, marker).await?;
                    None
                }
                "split" => {
                    let a = format!("bench_split_a_{rep}");
                    let b = format!("bench_split_b_{rep}");
                    let publications = SPLIT_PUBLICATIONS.map(|(p, _)| p);
                    let (ra, rb) = tokio::join!(
                        run_pg_recvlogical(&pg, pg.host(), &a, publications[0], binary, marker),
                        run_pg_recvlogical(&pg, pg.host(), &b, publications[1], binary, marker)
                    );
                    ra?;
                    rb?;
                    None
                }
                _ => {
                    let slot = format!("bench_{who}_{name}_{rep}");
                    let seen = run_lakets(&db_config, &slot, binary, marker).await?;
                    if seen < options.rows {
                        return Err(Error::Operator(format!(
                            "lakets saw {seen} changes of a {}-row backlog",
                            options.rows
                        )));
                    }
                    Some(seen)
                }
            };
            let seconds = started.elapsed().as_secs_f64();
            measurements.push(Measurement {
                consumer: match who {
                    "recv" => RECV,
                    "split" => SPLIT,
                    "recv_unix" => RECV_UNIX,
                    _ => LAKETS,
                }
                .into(),
                protocol: name.into(),
                repetition: rep,
                rows: options.rows,
                seconds,
                rows_per_second: options.rows as f64 / seconds,
                changes_seen,
            });
        }
        for slot in &slots {
            super::drop_slot(&client, slot).await?;
        }
        // The lakets slots' operators mirrored the backlog; a TRUNCATE would reach the
        // Delta table only through a slot, and none streams now.
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
    let ratio_text = best(LAKETS, "text") / best(RECV, "text");
    let ratio_binary = best(LAKETS, "binary") / best(RECV, "binary");
    let binary_over_text = best(LAKETS, "binary") / best(LAKETS, "text");
    let split_over_single = best(SPLIT, "text") / best(RECV, "text");
    let recv_unix_over_tcp = best(RECV_UNIX, "text") / best(RECV, "text");
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
        binary_over_text,
        split_over_single,
        recv_unix_over_tcp,
        machine: machine_description(),
    })
}

/// Writes `rows` ticks in 1,000-row transactions; returns the LSN of a marker message
/// written after them (both consumers stop there).
pub(crate) async fn write_backlog(client: &tokio_postgres::Client, rows: u64) -> Result<Lsn> {
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
    super::end_marker(client).await
}

/// Drains `slot` to `end` with pg_recvlogical, connected to `host` (an address, or the
/// directory of the Unix socket).
async fn run_pg_recvlogical(
    pg: &EmbeddedPostgres,
    host: &str,
    slot: &str,
    publication: &str,
    binary: bool,
    end: Lsn,
) -> Result<()> {
    let conninfo = format!(
        "host={host} port={} dbname=lakets_bench user={}",
        pg.port(),
        lakets_testkit::embedded::SUPERUSER
    );
    let mut cmd = tokio::process::Command::new(pg.bindir().join("pg_recvlogical"));
    // The password from the cluster's pgpass file: never on the command line.
    cmd.env("PGPASSFILE", pg.pgpass_file());
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
        &format!("publication_names={publication}"),
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

/// Drains `slot` with the service's pipeline until every operator stored the backlog;
/// returns the changes it received.
pub(crate) async fn run_lakets(
    db: &crate::db::DbConfig,
    slot: &str,
    binary: bool,
    end: Lsn,
) -> Result<u64> {
    let stop = CancellationToken::new();
    let (status, task) = super::spawn_service_pipeline(
        db,
        slot,
        binary,
        Duration::from_millis(200),
        None,
        stop.clone(),
    );
    let waited = super::wait_acknowledged(&status, &task, end, Duration::from_secs(3600)).await;
    super::stop_pipeline(&stop, task).await?;
    waited?;
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
        "{:<28} {:<8} {:>4} {:>10} {:>12}\n",
        "consumer", "protocol", "rep", "seconds", "rows/s"
    ));
    for m in &report.measurements {
        out.push_str(&format!(
            "{:<28} {:<8} {:>4} {:>10.2} {:>12.0}\n",
            m.consumer, m.protocol, m.repetition, m.seconds, m.rows_per_second
        ));
    }
    out.push_str(&format!(
        "\nlakets (all operators) / pg_recvlogical (best of each): text {:.2}x, binary {:.2}x \
         (target >= 0.9x)\nlakets binary / text: {:.2}x\n\
         two slots on row-filtered halves at once / one slot (pg_recvlogical, text): {:.2}x\n",
        report.ratio_text, report.ratio_binary, report.binary_over_text, report.split_over_single
    ));
    out.push_str(&format!(
        "pg_recvlogical over the Unix socket / over TCP (text): {:.2}x\n",
        report.recv_unix_over_tcp
    ));
    out
}
