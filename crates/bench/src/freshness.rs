//! `lakets bench freshness`: how long after a commit its rows are in lakets, at a fixed
//! ingest rate.
//!
//! A writer inserts stock ticks in transactions of a fixed size (1,000 rows by default) at
//! the target rate into a
//! ChronoTable with a Last Value Cache, a rollup and a Delta mirror, while the service's
//! pipeline (chunk tracker, LVC, invalidations, Delta) streams the WAL. For each transaction it notes the WAL
//! position inside it and the instant its COMMIT returned; a monitor notes when the
//! pipeline received that position, when the LVC served it (the in-memory view gRPC reads),
//! when the LVC stored it (`lakets.lvc_*` holds it) and
//! when the Delta operator committed it to the table. Percentiles over all transactions.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, PgResultExt, Result};
use crate::wal::PipelineStatus;
use crate::wal::lsn::Lsn;
use lakets_core::lvc::view::LvcView;

#[derive(Debug, Clone)]
pub struct FreshnessOptions {
    /// Target ingest rate, rows per second.
    pub rate: u64,
    pub seconds: u64,
    /// The operators' flush interval.
    pub flush_interval: Duration,
    /// Rows per transaction. pgoutput sends a transaction once its commit is decoded, and
    /// the walsender then decodes all its rows: the latency grows with the size.
    pub txn_rows: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FreshnessReport {
    pub target_rows_per_second: u64,
    pub achieved_rows_per_second: f64,
    pub seconds: u64,
    pub flush_interval_ms: u64,
    pub rows_per_transaction: u64,
    /// Commit -> the pipeline has received the transaction.
    pub received: Latency,
    /// Commit -> the Last Value Cache serves it (gRPC Get and Subscribe read this view).
    pub lvc_visible: Latency,
    /// Commit -> the Last Value Cache table holds it (durable).
    pub lvc_durable: Latency,
    /// Commit -> committed to the Delta table.
    pub delta_durable: Latency,
    pub machine: String,
}

pub async fn freshness(options: &FreshnessOptions) -> Result<FreshnessReport> {
    let (pg, url, mut client) = super::stock_ticks_database(super::History::None).await?;
    let db = crate::db::parse_config(&url)?;
    let _lake = super::attach_operators(&mut client, &db).await?;
    let slot = "bench_freshness";
    super::create_slot(&client, slot).await?;
    let view = LvcView::new();
    let stop = CancellationToken::new();
    let (status, pipeline) = super::spawn_service_pipeline(
        &db,
        slot,
        false,
        options.flush_interval,
        Some(view.clone()),
        stop.clone(),
    );
    // Wait until the pipeline streams.
    let started = Instant::now();
    while !status.lock().unwrap().streaming {
        if started.elapsed() > Duration::from_secs(30) || pipeline.is_finished() {
            return Err(Error::Operator("the pipeline did not start".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Commit -> visible in the served view, resolved as the view publishes (every
    // transaction updates every symbol, so one published position resolves it).
    let visible_pending: Arc<Mutex<VecDeque<(Lsn, Instant)>>> = Arc::default();
    let visible_resolved = Arc::new(AtomicUsize::new(0));
    let visible_watch = {
        let mut updates = view.subscribe();
        let (pending, resolved, stop) = (
            visible_pending.clone(),
            visible_resolved.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut newest = Lsn::ZERO;
            loop {
                // The view may publish a transaction before its writer has queued it (the
                // commit returns after the WAL is sent): look again shortly even when no
                // update comes, or the last one would never resolve.
                let update = tokio::select! {
                    _ = stop.cancelled() => break,
                    u = updates.recv() => Some(u),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => None,
                };
                match update {
                    Some(Ok(value)) => newest = newest.max(value.lsn),
                    Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) | None => {}
                    Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
                }
                let now = Instant::now();
                let mut pending = pending.lock().unwrap();
                while pending.front().is_some_and(|(lsn, _)| *lsn <= newest) {
                    let (_, committed) = pending.pop_front().unwrap();
                    latencies.push(now.duration_since(committed).as_secs_f64() * 1000.0);
                }
                resolved.store(latencies.len(), Ordering::SeqCst);
            }
            latencies
        })
    };

    // (position inside the transaction, commit returned)
    let pending: Arc<Mutex<VecDeque<(Lsn, Instant)>>> = Arc::default();
    let resolved = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (status, pending, resolved, stop) = (
            status.clone(),
            pending.clone(),
            resolved.clone(),
            stop.clone(),
        );
        tokio::spawn(async move { monitor(status, pending, resolved, stop).await })
    };

    // The writer runs on a thread of its own, like an application: on the pipeline's
    // runtime its commit instants would wait behind the pipeline's work.
    let txn_rows = options.txn_rows.max(1);
    let (rate, seconds) = (options.rate.max(1), options.seconds);
    let (writer_pending, writer_visible) = (pending.clone(), visible_pending.clone());
    let writer_url = url.clone();
    let (i, achieved) = super::on_writer_thread(None, async move {
        let (pending, visible_pending, url) = (writer_pending, writer_visible, writer_url);
        let writer = crate::db::connect_as_application(&url).await?;
        let interval = Duration::from_secs_f64(txn_rows as f64 / rate as f64);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let run_started = Instant::now();
        let mut rows = 0u64;
        let mut i = 0i64;
        while run_started.elapsed() < Duration::from_secs(seconds) {
            ticker.tick().await;
            let tx_rows = writer
                .simple_query(&format!(
                    "BEGIN;
                     INSERT INTO stock_ticks
                     SELECT now(), (ARRAY['AAPL','MSFT','NVDA','AMZN','GOOG','META','TSLA','JPM','V','XOM'])[1 + (g % 10)],
                            100 + ((g + {i}) % 1000) * 0.01, 100 + g % 900
                       FROM generate_series(1, {txn_rows}) g;
                     SELECT pg_current_wal_insert_lsn()::text;
                     COMMIT;"
                ))
                .await
                .pg_context(|| "writing ticks".into())?;
            let committed = Instant::now();
            let lsn = tx_rows
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .ok_or_else(|| Error::Operator("no WAL position returned".into()))?
                .parse()?;
            pending.lock().unwrap().push_back((lsn, committed));
            visible_pending.lock().unwrap().push_back((lsn, committed));
            rows += txn_rows;
            i += 1;
        }
        Ok((i, rows as f64 / run_started.elapsed().as_secs_f64()))
    })
    .await?;
    // Let the last transactions arrive everywhere.
    let drain = Instant::now();
    while (resolved.load(Ordering::SeqCst) < i as usize
        || visible_resolved.load(Ordering::SeqCst) < i as usize)
        && drain.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let (received, lvc, delta) = monitor
        .await
        .map_err(|e| Error::Operator(format!("monitor task: {e}")))?;
    let visible = visible_watch
        .await
        .map_err(|e| Error::Operator(format!("view watch task: {e}")))?;
    pipeline
        .await
        .map_err(|e| Error::Operator(format!("pipeline task: {e}")))??;
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;
    Ok(FreshnessReport {
        target_rows_per_second: options.rate,
        achieved_rows_per_second: achieved,
        seconds: options.seconds,
        flush_interval_ms: options.flush_interval.as_millis() as u64,
        rows_per_transaction: txn_rows,
        received: stats(received),
        lvc_visible: stats(visible),
        lvc_durable: stats(lvc),
        delta_durable: stats(delta),
        machine: super::catchup::machine_description(),
    })
}

/// Resolves pending transactions as the pipeline's positions pass them; returns the
/// latencies (ms) of: received, LVC durable, Delta durable.
async fn monitor(
    status: Arc<Mutex<PipelineStatus>>,
    pending: Arc<Mutex<VecDeque<(Lsn, Instant)>>>,
    resolved: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    // Transactions seen so far, and how far each measure has resolved them.
    let mut seen: Vec<(Lsn, Instant)> = Vec::new();
    let (mut r, mut l, mut d) = (0usize, 0usize, 0usize);
    while !stop.is_cancelled() {
        seen.extend(pending.lock().unwrap().drain(..));
        let st = status.lock().unwrap().clone();
        let durable = |name: &str| {
            st.operators
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, lsn)| *lsn)
                .unwrap_or(Lsn::ZERO)
        };
        let now = Instant::now();
        for (cursor, reached, sink) in [
            (&mut r, st.received_lsn, &mut out.0),
            (
                &mut l,
                durable(lakets_core::lvc::operator::NAME),
                &mut out.1,
            ),
            (
                &mut d,
                durable(lakets_core::coldtier::sink::NAME),
                &mut out.2,
            ),
        ] {
            while *cursor < seen.len() && seen[*cursor].0 <= reached {
                sink.push(now.duration_since(seen[*cursor].1).as_secs_f64() * 1000.0);
                *cursor += 1;
            }
        }
        // Transactions resolved by every measure (the writer's drain loop waits on it).
        resolved.store(r.min(l).min(d), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

pub(crate) fn stats(mut ms: Vec<f64>) -> Latency {
    if ms.is_empty() {
        return Latency::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Latency {
        samples: ms.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: *ms.last().unwrap(),
    }
}

pub fn freshness_table(report: &FreshnessReport) -> String {
    let mut out = format!(
        "freshness at {} rows/s target ({:.0} achieved) for {} s, {}-row transactions, \
         flush interval {} ms, {}\n\n",
        report.target_rows_per_second,
        report.achieved_rows_per_second,
        report.seconds,
        report.rows_per_transaction,
        report.flush_interval_ms,
        report.machine
    );
    out.push_str(&format!(
        "{:<34} {:>8} {:>10} {:>10} {:>10}\n",
        "commit ->", "samples", "p50 ms", "p99 ms", "max ms"
    ));
    for (name, l) in [
        ("received (seen at an acknowledgement)", &report.received),
        ("visible in the LVC (gRPC)", &report.lvc_visible),
        ("stored in the LVC table", &report.lvc_durable),
        ("committed to Delta", &report.delta_durable),
    ] {
        out.push_str(&format!(
            "{:<34} {:>8} {:>10.1} {:>10.1} {:>10.1}\n",
            name, l.samples, l.p50_ms, l.p99_ms, l.max_ms
        ));
    }
    out.push_str(&format!(
        "\ntargets: LVC visible p99 < 10 ms; Delta p99 < flush interval + 1 s = {} ms\n",
        report.flush_interval_ms + 1000
    ));
    out
}
