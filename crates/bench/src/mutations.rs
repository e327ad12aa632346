//! `lakets bench mutations`: updates and deletes through the Delta mirror, copy-on-write
//! against deletion vectors, in one run. For each table size and mode: a fresh cluster
//! holding `stock_ticks` (N rows over the last day, primary key (symbol, time)) synced to a
//! Delta table (the copy writes target-size files, one or two day partitions), then two
//! backlogs drained by the service's pipeline until durable: insert-only (the baseline),
//! and a mix of 89 % inserts, 10 % updates and 1 % deletes of rows drawn at random over the
//! whole history (1,000-change transactions). Reported: changes/s until durable, bytes
//! the mirror wrote to the table's storage (data, vectors, log) per change and per updated
//! or deleted row, and peak RSS of the drain.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, PgResultExt, Result};

#[derive(Debug, Clone)]
pub struct MutationsOptions {
    /// Table sizes (rows of history), one set of runs each.
    pub rows: Vec<u64>,
    /// Changes per backlog.
    pub changes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MutationRun {
    /// `copy-on-write` or `deletion vectors`.
    pub mode: &'static str,
    pub table_rows: u64,
    /// Data files of the table before the backlog.
    pub files_before: usize,
    /// `insert-only` or `mixed`.
    pub backlog: &'static str,
    pub changes: u64,
    /// Of them, updates and deletes.
    pub updated_or_deleted: u64,
    pub seconds: f64,
    pub changes_per_second: f64,
    pub bytes_written: u64,
    pub bytes_per_change: f64,
    /// Bytes written over updated and deleted rows (mixed backlog only).
    pub bytes_per_changed_row: Option<f64>,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MutationsReport {
    pub changes: u64,
    pub runs: Vec<MutationRun>,
    /// Per table size and mode: mixed changes/s over insert-only changes/s.
    pub mixed_over_insert_only: Vec<(u64, &'static str, f64)>,
    /// Per table size: copy-on-write bytes per changed row over deletion vectors'.
    pub cow_bytes_over_dv: Vec<(u64, f64)>,
    pub machine: String,
}

const MODES: [(&str, bool); 2] = [("copy-on-write", false), ("deletion vectors", true)];

/// Changes per transaction of a backlog, and of a mixed one's: updates, deletes.
const PER_TXN: u64 = 1000;
const UPDATES_PER_TXN: u64 = 100;
const DELETES_PER_TXN: u64 = 10;

pub async fn mutations(options: &MutationsOptions) -> Result<MutationsReport> {
    let mut runs = Vec::new();
    for &rows in &options.rows {
        for (mode, vectors) in MODES {
            runs.extend(runs_of(rows, mode, vectors, options.changes).await?);
        }
    }
    let rate = |rows: u64, mode: &str, backlog: &str| {
        runs.iter()
            .find(|r| r.table_rows == rows && r.mode == mode && r.backlog == backlog)
            .map_or(0.0, |r| r.changes_per_second)
    };
    let bytes = |rows: u64, mode: &str| {
        runs.iter()
            .find(|r| r.table_rows == rows && r.mode == mode && r.backlog == "mixed")
            .and_then(|r| r.bytes_per_changed_row)
            .unwrap_or(0.0)
    };
    let mut mixed_over_insert_only = Vec::new();
    let mut cow_bytes_over_dv = Vec::new();
    for &rows in &options.rows {
        for (mode, _) in MODES {
            mixed_over_insert_only.push((
                rows,
                mode,
                rate(rows, mode, "mixed") / rate(rows, mode, "insert-only"),
            ));
        }
        cow_bytes_over_dv.push((
            rows,
            bytes(rows, "copy-on-write") / bytes(rows, "deletion vectors"),
        ));
    }
    Ok(MutationsReport {
        changes: options.changes,
        runs,
        mixed_over_insert_only,
        cow_bytes_over_dv,
        machine: super::catchup::machine_description(),
    })
}

/// The insert-only and the mixed run of one table size and mode, on a cluster of their own.
async fn runs_of(
    rows: u64,
    mode: &'static str,
    vectors: bool,
    changes: u64,
) -> Result<Vec<MutationRun>> {
    let (pg, url, client) = super::stock_ticks_database(super::History::LastDay(rows)).await?;
    client
        .batch_execute("ALTER TABLE stock_ticks ADD PRIMARY KEY (symbol, time)")
        .await
        .pg_context(|| "adding the primary key".into())?;
    let db = crate::db::parse_config(&url)?;
    let lake = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let location = lake.path().join("stock_ticks");
    lakets_core::coldtier::sync::enable_sync_with_readers(
        &db,
        "stock_ticks",
        &location.display().to_string(),
        crate::delta::schema::Partitioning::Day,
        None,
        lakets_core::coldtier::sync::Features {
            change_data_feed: false,
            deletion_vectors: vectors,
        },
        lakets_core::coldtier::sync::DEFAULT_READERS,
        |_| {},
    )
    .await?;
    lakets_core::catalog::replication::ensure_publication(&client, "lakets").await?;
    let url_of = crate::delta::table::parse_location(&location.display().to_string())?;
    let slot = crate::wal::slot::default_slot_name("lakets_bench");
    let mut out = Vec::new();
    for backlog in ["insert-only", "mixed"] {
        let delta = crate::delta::table::open(&url_of)
            .await?
            .ok_or_else(|| Error::Operator("the Delta table is gone".into()))?;
        let files_before = crate::delta::read::active_files(&delta).await?.len();
        let (end, changed) = write_backlog(&client, backlog == "mixed", changes, rows).await?;
        super::settle_backlog(&client).await?;
        let bytes_before = dir_bytes(&location);
        super::memory::reset_peak_rss()?;
        let baseline = super::memory::rss_kib("VmRSS")?;
        let started = Instant::now();
        let stop = tokio_util::sync::CancellationToken::new();
        let (status, task) = super::spawn_service_pipeline(
            &db,
            &slot,
            true,
            // As the catch-up benchmark drains: a flush every 200 ms, so that the time
            // until durable follows the mirror's work, not the first flush.
            std::time::Duration::from_millis(200),
            None,
            stop.clone(),
        );
        let waited =
            super::wait_acknowledged(&status, &task, end, std::time::Duration::from_secs(3600))
                .await;
        let seconds = started.elapsed().as_secs_f64();
        let peak = super::memory::rss_kib("VmHWM")?.max(baseline);
        super::stop_pipeline(&stop, task).await?;
        waited?;
        let bytes_written = dir_bytes(&location).saturating_sub(bytes_before);
        out.push(MutationRun {
            mode,
            table_rows: rows,
            files_before,
            backlog,
            changes,
            updated_or_deleted: changed,
            seconds,
            changes_per_second: changes as f64 / seconds,
            bytes_written,
            bytes_per_change: bytes_written as f64 / changes as f64,
            bytes_per_changed_row: (changed > 0).then(|| bytes_written as f64 / changed as f64),
            peak_rss_mib: peak as f64 / 1024.0,
        });
    }
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;
    drop(lake);
    Ok(out)
}

/// Writes `changes` changes in 1,000-change transactions (mixed: 890 inserts, 100 updates
/// and 10 deletes of rows drawn at random over the table); returns the end marker and the
/// rows updated or deleted.
async fn write_backlog(
    client: &tokio_postgres::Client,
    mixed: bool,
    changes: u64,
    rows: u64,
) -> Result<(crate::wal::lsn::Lsn, u64)> {
    // A Bernoulli sample of about twice the rows a transaction changes, over every chunk.
    let percent = (200.0 * UPDATES_PER_TXN as f64 / rows.max(1) as f64).min(100.0);
    let (mut written, mut changed) = (0u64, 0u64);
    while written < changes {
        let n = PER_TXN.min(changes - written);
        let (updates, deletes) = if mixed {
            (UPDATES_PER_TXN * n / PER_TXN, DELETES_PER_TXN * n / PER_TXN)
        } else {
            (0, 0)
        };
        let inserts = n - updates - deletes;
        let sql = format!(
            "BEGIN;
             INSERT INTO stock_ticks
               SELECT now() + ({written} + i) * interval '1 microsecond', 'N' || (i % 100),
                      100 + (i % 1000) / 7.0, i
                 FROM generate_series(1, {inserts}) i;
             UPDATE stock_ticks SET price = price + 1, volume = volume + 1
              WHERE (symbol, time) IN (SELECT symbol, time FROM stock_ticks
                                        TABLESAMPLE BERNOULLI ({percent}) LIMIT {updates});
             DELETE FROM stock_ticks
              WHERE (symbol, time) IN (SELECT symbol, time FROM stock_ticks
                                        TABLESAMPLE BERNOULLI ({percent}) LIMIT {deletes});
             COMMIT;"
        );
        client
            .batch_execute(&sql)
            .await
            .pg_context(|| "writing the backlog".into())?;
        written += n;
        changed += updates + deletes;
    }
    Ok((super::end_marker(client).await?, changed))
}

/// Bytes of every file under `dir` (nothing is vacuumed during a run, so growth is what was
/// written).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// A human-readable table of a mutations report.
pub fn mutations_table(report: &MutationsReport) -> String {
    let mut out = format!(
        "updates and deletes through the mirror: backlogs of {} changes (1,000-change \
         transactions; mixed: 89 % inserts, 10 % updates, 1 % deletes over the whole \
         history), drained until durable; {}\n\n",
        report.changes, report.machine
    );
    out.push_str(&format!(
        "{:<17} {:>10} {:>6} {:<12} {:>9} {:>10} {:>12} {:>14} {:>9}\n",
        "mode",
        "table rows",
        "files",
        "backlog",
        "seconds",
        "changes/s",
        "bytes/change",
        "bytes/changed",
        "peak MiB"
    ));
    for r in &report.runs {
        out.push_str(&format!(
            "{:<17} {:>10} {:>6} {:<12} {:>9.2} {:>10.0} {:>12.0} {:>14} {:>9.1}\n",
            r.mode,
            r.table_rows,
            r.files_before,
            r.backlog,
            r.seconds,
            r.changes_per_second,
            r.bytes_per_change,
            r.bytes_per_changed_row
                .map_or("-".to_owned(), |b| format!("{b:.0}")),
            r.peak_rss_mib
        ));
    }
    out.push('\n');
    for (rows, mode, ratio) in &report.mixed_over_insert_only {
        out.push_str(&format!(
            "{rows} rows, {mode}: mixed / insert-only throughput {ratio:.2}x (goal >= 0.5x)\n"
        ));
    }
    for (rows, ratio) in &report.cow_bytes_over_dv {
        out.push_str(&format!(
            "{rows} rows: copy-on-write writes {ratio:.1}x the bytes of deletion vectors per \
             changed row\n"
        ));
    }
    out
}
