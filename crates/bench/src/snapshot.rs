//! `lakets bench snapshot`: the initial copy of a table into Delta (`lakets sync enable`)
//! against `COPY (SELECT ...) TO STDOUT` of the same rows into nothing, in one run: the
//! fastest way PostgreSQL hands a table's rows to a client, and so the baseline. The
//! table is a day of ticks in one-hour chunks, written before it converts.

use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;

use crate::error::{PgResultExt, Result};

#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Table sizes, one measurement each.
    pub rows: Vec<u64>,
    /// Reader counts of the copy, one run each per size.
    pub readers: Vec<usize>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            rows: vec![1_000_000, 10_000_000],
            readers: vec![1, 2, 4],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRun {
    pub readers: usize,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Against the COPY baseline of the same size.
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSize {
    pub rows: u64,
    pub chunks: i64,
    pub table_mib: f64,
    /// `COPY (SELECT <the copy's columns>) TO STDOUT`, drained and discarded: the better
    /// of a run before and a run after the copies.
    pub copy_rows_per_second: f64,
    pub runs: Vec<SnapshotRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    pub machine: String,
    pub sizes: Vec<SnapshotSize>,
    /// The best ratio of the largest size.
    pub best_ratio: f64,
}

pub async fn snapshot(options: &SnapshotOptions) -> Result<SnapshotReport> {
    let mut sizes = Vec::new();
    for &rows in &options.rows {
        sizes.push(one_size(rows, &options.readers).await?);
    }
    let best_ratio = sizes
        .last()
        .map_or(0.0, |s| s.runs.iter().map(|r| r.ratio).fold(0.0, f64::max));
    Ok(SnapshotReport {
        machine: super::catchup::machine_description(),
        sizes,
        best_ratio,
    })
}

async fn one_size(rows: u64, readers: &[usize]) -> Result<SnapshotSize> {
    let (pg, url, mut client) = super::stock_ticks_database(super::History::LastDay(rows)).await?;
    // Hint bits and visibility set once, so that no run pays them for the others.
    client
        .batch_execute("VACUUM (FREEZE, ANALYZE) stock_ticks")
        .await
        .pg_context(|| "vacuuming stock_ticks".into())?;
    let (chunks, table_bytes): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*), coalesce(sum(pg_relation_size(relid)), 0)::bigint
                   FROM pg_partition_tree('stock_ticks') WHERE isleaf",
                &[],
            )
            .await
            .pg_context(|| "measuring stock_ticks".into())?;
        (row.get(0), row.get(1))
    };

    let db = crate::db::parse_config(&url)?;
    let before = copy_to_nothing(&client, rows).await?;
    let lake = tempfile::tempdir()
        .map_err(|e| crate::error::Error::io("creating a temporary directory", e))?;
    let mut measured = Vec::new();
    for (i, &n) in readers.iter().enumerate() {
        let location = lake.path().join(format!("copy{i}"));
        let started = Instant::now();
        let config = lakets_core::coldtier::sync::enable_sync_with_readers(
            &db,
            "stock_ticks",
            &location.display().to_string(),
            crate::delta::schema::Partitioning::Day,
            None,
            Default::default(),
            n,
            |_| {},
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let copied = config.rows_copied as u64;
        if copied != rows {
            return Err(crate::error::Error::Operator(format!(
                "the copy with {n} readers wrote {copied} rows of {rows}"
            )));
        }
        measured.push((n, seconds));
        lakets_core::coldtier::sync::disable_sync(&mut client, "stock_ticks").await?;
        let _ = std::fs::remove_dir_all(&location);
    }
    let after = copy_to_nothing(&client, rows).await?;
    let copy_rows_per_second = before.max(after);
    let runs = measured
        .into_iter()
        .map(|(readers, seconds)| {
            let rows_per_second = rows as f64 / seconds;
            SnapshotRun {
                readers,
                seconds,
                rows_per_second,
                ratio: rows_per_second / copy_rows_per_second,
            }
        })
        .collect();
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| crate::error::Error::Embedded(e.to_string()))?;
    Ok(SnapshotSize {
        rows,
        chunks,
        table_mib: table_bytes as f64 / (1 << 20) as f64,
        copy_rows_per_second,
        runs,
    })
}

/// Rows/s of `COPY (SELECT ...) TO STDOUT` of the columns the copy reads (text, as the
/// copy reads them), received and thrown away.
async fn copy_to_nothing(client: &tokio_postgres::Client, rows: u64) -> Result<f64> {
    let started = Instant::now();
    let stream = client
        .copy_out("COPY (SELECT time, symbol, price, volume FROM stock_ticks) TO STDOUT")
        .await
        .pg_context(|| "starting the COPY baseline".into())?;
    futures_util::pin_mut!(stream);
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk
            .pg_context(|| "reading the COPY baseline".into())?
            .len();
    }
    std::hint::black_box(bytes);
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// The human-readable report.
pub fn snapshot_table(report: &SnapshotReport) -> String {
    let mut out = format!(
        "initial copy into Delta vs COPY (SELECT ...) TO STDOUT into nothing: {}\n",
        report.machine
    );
    out.push_str(&format!(
        "{:>11} {:>7} {:>9} {:>13} {:>8} {:>13} {:>7}\n",
        "rows", "chunks", "MiB", "COPY rows/s", "readers", "copy rows/s", "ratio"
    ));
    for size in &report.sizes {
        for run in &size.runs {
            out.push_str(&format!(
                "{:>11} {:>7} {:>9.0} {:>13.0} {:>8} {:>13.0} {:>6.2}x\n",
                size.rows,
                size.chunks,
                size.table_mib,
                size.copy_rows_per_second,
                run.readers,
                run.rows_per_second,
                run.ratio
            ));
        }
    }
    out
}
