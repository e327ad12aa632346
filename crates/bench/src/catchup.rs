//! `lakets bench catchup`: a backlog of N stock ticks (1,000-row transactions) waits in
//! several slots created at the same WAL position. Then, one after the other, each consumer
//! drains its own slot: `pg_recvlogical --endpos` to /dev/null (PostgreSQL's own client, the
//! walsender's ceiling) and the service's pipeline with all its operators (chunk tracker,
//! Last Value Cache, rollup invalidations, Delta mirror) until every operator has stored
//! the whole backlog (Delta: committed to the table). Each over TCP on loopback and over
//! the server's Unix socket, text and binary protocol, repeated and interleaved.
//!
//! Each run also records CPU per row: the consumer's (this process for lakets, the child
//! for `pg_recvlogical`) and its walsender's, so that what lakets costs is set against what
//! decoding costs the server in the same run.
//!
//! It also answers whether several slots lift the walsender's ceiling: two
//! `pg_recvlogical` drain two publications that split the table by a row filter, at once.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
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
    /// `tcp` (loopback) or `unix` (the server's socket).
    pub transport: String,
    pub protocol: String,
    pub repetition: usize,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Changes the lakets pipeline received (a check that it saw the whole backlog).
    pub changes_seen: Option<u64>,
    /// The consumer's CPU (user + system) per row, microseconds: this process for lakets,
    /// the `pg_recvlogical` processes for theirs.
    pub consumer_cpu_us_per_row: f64,
    /// The walsender's CPU per row, microseconds (None for the split pair).
    pub walsender_cpu_us_per_row: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CatchupReport {
    pub rows: u64,
    pub repetitions: usize,
    pub measurements: Vec<Measurement>,
    /// Best lakets rate (all operators) over best pg_recvlogical rate, both over the Unix
    /// socket, per protocol: the target (>= 0.9x) is against the best consumer.
    pub ratio_unix_text: f64,
    pub ratio_unix_binary: f64,
    /// The same over TCP on loopback, where the walsender's per-segment work caps both.
    pub ratio_text: f64,
    pub ratio_binary: f64,
    /// Best lakets rate over either transport / best pg_recvlogical rate over either: each
    /// consumer on the transport that suits it (pg_recvlogical is fastest over the Unix
    /// socket, lakets over TCP, which merges the walsender's small messages on arrival).
    pub ratio_best_text: f64,
    pub ratio_best_binary: f64,
    /// Best binary lakets rate over best text lakets rate (Unix socket).
    pub binary_over_text: f64,
    /// Two slots on row-filtered halves, drained at once, over one slot (pg_recvlogical,
    /// text, TCP): above 1 when several slots lift the ceiling.
    pub split_over_single: f64,
    /// pg_recvlogical over the Unix socket / over TCP (text, best of each).
    pub recv_unix_over_tcp: f64,
    /// lakets' CPU per row over its walsender's, in lakets' fastest binary run over the
    /// Unix socket (target <= 0.5x: a consumer that leaves the cores to the writers).
    pub lakets_cpu_over_walsender: f64,
    pub machine: String,
}

/// Who drains a slot, and how it reaches the server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Consumer {
    Recv,
    RecvUnix,
    Lakets,
    LaketsUnix,
    /// Two pg_recvlogical on the split publications at once (TCP, text only).
    Split,
}

impl Consumer {
    const ALL: [Consumer; 5] = [
        Consumer::Recv,
        Consumer::Lakets,
        Consumer::Split,
        Consumer::RecvUnix,
        Consumer::LaketsUnix,
    ];

    /// The name in the report.
    fn name(self) -> &'static str {
        match self {
            Consumer::Recv | Consumer::RecvUnix => RECV,
            Consumer::Lakets | Consumer::LaketsUnix => LAKETS,
            Consumer::Split => SPLIT,
        }
    }

    fn over_unix(self) -> bool {
        matches!(self, Consumer::RecvUnix | Consumer::LaketsUnix)
    }

    fn transport(self) -> &'static str {
        if self.over_unix() { "unix" } else { "tcp" }
    }

    /// The service's pipeline, in this process (else pg_recvlogical, a child).
    fn is_lakets(self) -> bool {
        matches!(self, Consumer::Lakets | Consumer::LaketsUnix)
    }

    fn runs_with(self, binary: bool) -> bool {
        self != Consumer::Split || !binary
    }

    fn slots(self, protocol: &str, rep: usize) -> Vec<String> {
        match self {
            Consumer::Split => vec![
                format!("bench_split_a_{rep}"),
                format!("bench_split_b_{rep}"),
            ],
            _ => vec![format!("bench_{self:?}_{protocol}_{rep}").to_lowercase()],
        }
    }
}

const PROTOCOLS: [(&str, bool); 2] = [("text", false), ("binary", true)];
/// The consumers' names in the report.
const RECV: &str = "pg_recvlogical";
const SPLIT: &str = "pg_recvlogical x2 split";
const LAKETS: &str = "lakets (all operators)";
const SPLIT_PUBLICATIONS: [(&str, &str); 2] = [
    ("lakets_bench_split_a", "symbol < 'JPM'"),
    ("lakets_bench_split_b", "symbol >= 'JPM'"),
];

pub async fn catchup(options: &CatchupOptions) -> Result<CatchupReport> {
    let (pg, url, mut client) = super::stock_ticks_database(super::History::None).await?;
    let db_config = crate::db::parse_config(&url)?;
    let unix_config = crate::db::parse_config(&pg.socket_url("lakets_bench"))?;
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
        // Interleave: every consumer and protocol, in an order rotated per repetition.
        let mut runs: Vec<(Consumer, &str, bool)> = Vec::new();
        for (name, binary) in PROTOCOLS {
            for who in Consumer::ALL {
                if who.runs_with(binary) {
                    runs.push((who, name, binary));
                }
            }
        }
        let slots: Vec<String> = runs
            .iter()
            .flat_map(|(who, name, _)| who.slots(name, rep))
            .collect();
        for slot in &slots {
            super::create_slot(&client, slot).await?;
        }
        let marker = write_backlog(&client, options.rows).await?;
        super::settle_backlog(&client).await?;
        let rotation = rep % runs.len();
        runs.rotate_left(rotation);
        for (who, name, binary) in runs {
            let slot = who.slots(name, rep).remove(0);
            let (done, done_rx) = watch::channel(false);
            let cpu_before = (super::cpu::process(), super::cpu::children());
            let started = Instant::now();
            let host = match who.over_unix() {
                false => pg.host().to_owned(),
                true => pg.socket_dir().display().to_string(),
            };
            let drain = async {
                let outcome = match who {
                    Consumer::Recv | Consumer::RecvUnix => {
                        run_pg_recvlogical(&pg, &host, &slot, "lakets", binary, marker)
                            .await
                            .map(|()| None)
                    }
                    Consumer::Split => {
                        let runs = who.slots(name, rep).into_iter().zip(SPLIT_PUBLICATIONS);
                        futures_util::future::try_join_all(runs.map(|(slot, (publication, _))| {
                            let (pg, host) = (&pg, &host);
                            async move {
                                run_pg_recvlogical(pg, host, &slot, publication, binary, marker)
                                    .await
                            }
                        }))
                        .await
                        .map(|_| None)
                    }
                    Consumer::Lakets | Consumer::LaketsUnix => {
                        let config = if who.over_unix() {
                            &unix_config
                        } else {
                            &db_config
                        };
                        run_lakets(config, &slot, binary, marker, Some(&done))
                            .await
                            .map(Some)
                    }
                };
                let _ = done.send(true);
                outcome
            };
            // Two walsenders serve the split pair: its CPU is not attributed to one.
            let walsender = async {
                match who {
                    Consumer::Split => None,
                    _ => Some(super::cpu::walsender(&client, &slot, done_rx).await),
                }
            };
            let (outcome, walsender_cpu) = tokio::join!(drain, walsender);
            let changes_seen = outcome?;
            let seconds = started.elapsed().as_secs_f64();
            if let Some(seen) = changes_seen
                && seen < options.rows
            {
                return Err(Error::Operator(format!(
                    "lakets saw {seen} changes of a {}-row backlog",
                    options.rows
                )));
            }
            let consumer_cpu = match who.is_lakets() {
                true => super::cpu::process() - cpu_before.0,
                false => super::cpu::children() - cpu_before.1,
            };
            let per_row = |cpu: Duration| cpu.as_secs_f64() * 1e6 / options.rows as f64;
            measurements.push(Measurement {
                consumer: who.name().into(),
                transport: who.transport().into(),
                protocol: name.into(),
                repetition: rep,
                rows: options.rows,
                seconds,
                rows_per_second: options.rows as f64 / seconds,
                changes_seen,
                consumer_cpu_us_per_row: per_row(consumer_cpu),
                walsender_cpu_us_per_row: walsender_cpu.map(per_row),
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
    let fastest = |consumer: &str, transport: &str, protocol: &str| {
        measurements
            .iter()
            .filter(|m| {
                m.consumer == consumer && m.transport == transport && m.protocol == protocol
            })
            .max_by(|a, b| a.rows_per_second.total_cmp(&b.rows_per_second))
    };
    let best = |consumer: &str, transport: &str, protocol: &str| {
        fastest(consumer, transport, protocol).map_or(0.0, |m| m.rows_per_second)
    };
    let best_of_both = |consumer: &str, protocol: &str| {
        best(consumer, "unix", protocol).max(best(consumer, "tcp", protocol))
    };
    let lakets_cpu_over_walsender = fastest(LAKETS, "unix", "binary")
        .and_then(|m| {
            m.walsender_cpu_us_per_row
                .map(|w| (m.consumer_cpu_us_per_row, w))
        })
        // A walsender's CPU is counted in clock ticks: a tiny backlog may show none.
        .map_or(0.0, |(own, walsender)| {
            if walsender > 0.0 {
                own / walsender
            } else {
                0.0
            }
        });
    let report = CatchupReport {
        rows: options.rows,
        repetitions: options.repetitions,
        ratio_unix_text: best(LAKETS, "unix", "text") / best(RECV, "unix", "text"),
        ratio_unix_binary: best(LAKETS, "unix", "binary") / best(RECV, "unix", "binary"),
        ratio_text: best(LAKETS, "tcp", "text") / best(RECV, "tcp", "text"),
        ratio_binary: best(LAKETS, "tcp", "binary") / best(RECV, "tcp", "binary"),
        ratio_best_text: best_of_both(LAKETS, "text") / best_of_both(RECV, "text"),
        ratio_best_binary: best_of_both(LAKETS, "binary") / best_of_both(RECV, "binary"),
        binary_over_text: best(LAKETS, "unix", "binary") / best(LAKETS, "unix", "text"),
        split_over_single: best(SPLIT, "tcp", "text") / best(RECV, "tcp", "text"),
        recv_unix_over_tcp: best(RECV, "unix", "text") / best(RECV, "tcp", "text"),
        lakets_cpu_over_walsender,
        machine: machine_description(),
        measurements,
    };
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;
    Ok(report)
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
    let mut cmd = super::recvlogical::command(pg, host, slot, publication, binary);
    cmd.arg(format!("--endpos={end}"));
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
/// returns the changes it received. `drained` is told as soon as it has, before the
/// pipeline stops (its walsender's CPU is read while it still runs).
pub(crate) async fn run_lakets(
    db: &crate::db::DbConfig,
    slot: &str,
    binary: bool,
    end: Lsn,
    drained: Option<&watch::Sender<bool>>,
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
    if let Some(drained) = drained {
        let _ = drained.send(true);
        // Lets the sampler beside us take its last reading while the walsender runs.
        tokio::task::yield_now().await;
    }
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
        "{:<24} {:<5} {:<8} {:>4} {:>8} {:>10} {:>14} {:>15}\n",
        "consumer",
        "via",
        "protocol",
        "rep",
        "seconds",
        "rows/s",
        "own CPU us/row",
        "walsender us/row"
    ));
    for m in &report.measurements {
        let walsender = m
            .walsender_cpu_us_per_row
            .map_or_else(|| "-".to_owned(), |w| format!("{w:.2}"));
        out.push_str(&format!(
            "{:<24} {:<5} {:<8} {:>4} {:>8.2} {:>10.0} {:>14.2} {:>15}\n",
            m.consumer,
            m.transport,
            m.protocol,
            m.repetition,
            m.seconds,
            m.rows_per_second,
            m.consumer_cpu_us_per_row,
            walsender
        ));
    }
    out.push_str(&format!(
        "\nlakets (all operators) / pg_recvlogical, best of each, over the Unix socket: text \
         {:.2}x, binary {:.2}x (target >= 0.9x); over TCP: text {:.2}x, binary {:.2}x\n\
         each on its fastest transport: text {:.2}x, binary {:.2}x\n\
         lakets CPU per row / its walsender's (fastest binary run, Unix socket): {:.2}x \
         (target <= 0.5x)\n\
         lakets binary / text (Unix socket): {:.2}x\n\
         two slots on row-filtered halves at once / one slot (pg_recvlogical, text): {:.2}x\n\
         pg_recvlogical over the Unix socket / over TCP (text): {:.2}x\n",
        report.ratio_unix_text,
        report.ratio_unix_binary,
        report.ratio_text,
        report.ratio_binary,
        report.ratio_best_text,
        report.ratio_best_binary,
        report.lakets_cpu_over_walsender,
        report.binary_over_text,
        report.split_over_single,
        report.recv_unix_over_tcp
    ));
    out
}
