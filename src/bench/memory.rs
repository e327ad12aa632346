//! Peak memory of the service's pipeline over a backlog of N rows and of 10N rows: the
//! pipeline streams (it never loads a backlog, nor a transaction, whole), so the two
//! peaks should be about equal.
//!
//! The pipeline runs in this process. Before each drain the kernel's peak-RSS mark is
//! reset (`/proc/self/clear_refs`), so each peak belongs to its drain alone; the resident
//! size just before is reported as the baseline.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct MemoryRun {
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Resident size before the drain, MiB.
    pub baseline_rss_mib: f64,
    /// Peak resident size during the drain, MiB.
    pub peak_rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub runs: Vec<MemoryRun>,
    /// Peak over the 10N backlog / peak over the N backlog (1.0 = flat).
    pub peak_ratio: f64,
    /// A one-row delete mirrored into a compacted file.
    pub delete: DeleteMemory,
}

/// The mirror deleting one row of a large (compacted) file, against decoding that file
/// whole (what the rewrite did before it streamed), in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteMemory {
    pub file_rows: u64,
    pub file_mib: f64,
    /// Resident size before, MiB.
    pub baseline_rss_mib: f64,
    /// Peak growth over the baseline while the mirror rewrote the file without the row.
    pub delete_peak_growth_mib: f64,
    /// Peak growth while the same file is decoded whole, every column at once.
    pub whole_file_peak_growth_mib: f64,
    pub delete_seconds: f64,
}

/// Drains backlogs of `rows` and `10 * rows` through every operator.
pub async fn memory(rows: u64) -> Result<MemoryReport> {
    let (pg, url, mut client) = super::stock_ticks_database(None).await?;
    let db = crate::db::parse_config(&url)?;
    let _lake = super::attach_operators(&mut client, &db).await?;
    let mut runs = Vec::new();
    for (i, n) in [rows, rows * 10].into_iter().enumerate() {
        let slot = format!("bench_memory_{i}");
        super::create_slot(&client, &slot).await?;
        let end = super::catchup::write_backlog(&client, n).await?;
        super::settle_backlog(&client).await?;
        reset_peak_rss()?;
        let baseline = rss_kib("VmRSS")?;
        let started = Instant::now();
        let stop = CancellationToken::new();
        let (status, task) = super::spawn_service_pipeline(
            &db,
            &slot,
            false,
            Duration::from_millis(1000),
            None,
            stop.clone(),
        );
        let waited = super::wait_acknowledged(&status, &task, end, Duration::from_secs(3600)).await;
        let seconds = started.elapsed().as_secs_f64();
        let peak = rss_kib("VmHWM")?;
        super::stop_pipeline(&stop, task).await?;
        waited?;
        super::drop_slot(&client, &slot).await?;
        runs.push(MemoryRun {
            rows: n,
            seconds,
            rows_per_second: n as f64 / seconds,
            baseline_rss_mib: baseline as f64 / 1024.0,
            peak_rss_mib: peak as f64 / 1024.0,
        });
    }
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;
    let delete = delete_into_compacted(rows * 10).await?;
    Ok(MemoryReport {
        peak_ratio: runs[1].peak_rss_mib / runs[0].peak_rss_mib,
        runs,
        delete,
    })
}

/// Writes one file of `rows` stock ticks (as compaction leaves them), then mirrors the
/// delete of one row into it, and finally decodes the file whole, each with the peak-RSS
/// mark reset before.
pub async fn delete_into_compacted(rows: u64) -> Result<DeleteMemory> {
    use crate::delta::batch::{CellRow, build_batch};
    use crate::delta::schema::{Cell, Partitioning, TableShape};
    use crate::delta::table;
    use crate::wal::lsn::Lsn;
    use crate::wal::value::ColumnType;
    use deltalake::writer::DeltaWriter;

    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let url = table::parse_location(&dir.path().join("ticks").display().to_string())?;
    let shape = TableShape::new(
        &[
            ("time".into(), ColumnType::Timestamptz, -1),
            ("symbol".into(), ColumnType::Text, -1),
            ("price".into(), ColumnType::Float8, -1),
            ("volume".into(), ColumnType::Int8, -1),
        ],
        "time",
        Partitioning::None,
    )?;
    let mut delta = table::create(&url, &shape, "bench.ticks").await?;
    let mut writer = table::writer(&delta)?;
    let base = 1_767_225_600_000_000i64; // 2026-01-01
    let row = |i: u64| -> CellRow {
        vec![
            Cell::Int(base + i as i64 * 1000),
            Cell::Str(format!("S{}", i % 50)),
            Cell::Float((100.0 + (i % 997) as f64 / 7.0).to_bits()),
            Cell::Int(i as i64),
        ]
    };
    let mut i = 0u64;
    while i < rows {
        let chunk: Vec<CellRow> = (i..(i + 65_536).min(rows)).map(row).collect();
        let refs: Vec<&CellRow> = chunk.iter().collect();
        writer
            .write(build_batch(&shape, &refs)?)
            .await
            .map_err(|e| Error::Operator(format!("writing the file: {e}")))?;
        i += chunk.len() as u64;
    }
    let adds = writer
        .flush()
        .await
        .map_err(|e| Error::Operator(format!("writing the file: {e}")))?;
    let file_bytes: i64 = adds.iter().map(|a| a.size).sum();
    let actions = adds
        .into_iter()
        .map(deltalake::kernel::Action::Add)
        .collect();
    table::commit(
        &mut delta,
        actions,
        deltalake::protocol::DeltaOperation::Write {
            mode: deltalake::protocol::SaveMode::Append,
            partition_by: None,
            predicate: None,
        },
        None,
    )
    .await?;

    let baseline = rss_kib("VmRSS")?;
    reset_peak_rss()?;
    let started = Instant::now();
    let mut mirror =
        crate::delta::mirror::TableMirror::new(shape.clone(), delta, "bench".into(), Lsn::ZERO);
    let victim = row(rows / 2);
    let key = std::sync::Arc::new(vec![0, 1]);
    mirror
        .delete(&key, vec![victim[0].clone(), victim[1].clone()], Lsn(1))
        .await?;
    mirror.flush(Lsn(2)).await?;
    let delete_seconds = started.elapsed().as_secs_f64();
    let delete_peak = rss_kib("VmHWM")?;

    // The file the delete rewrote, decoded whole as the rewrite once did.
    let delta = mirror.table.clone();
    drop(mirror);
    let files = crate::delta::read::active_files(&delta).await?;
    let baseline_whole = rss_kib("VmRSS")?;
    reset_peak_rss()?;
    for file in files {
        let batches = table::read_file(&delta, file.object_store_path().as_ref()).await?;
        let rows: Vec<CellRow> = batches
            .iter()
            .map(|b| crate::delta::read::batch_rows(b, &shape))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        std::hint::black_box(&rows);
    }
    let whole_peak = rss_kib("VmHWM")?;
    Ok(DeleteMemory {
        file_rows: rows,
        file_mib: file_bytes as f64 / (1 << 20) as f64,
        baseline_rss_mib: baseline as f64 / 1024.0,
        delete_peak_growth_mib: delete_peak.saturating_sub(baseline) as f64 / 1024.0,
        whole_file_peak_growth_mib: whole_peak.saturating_sub(baseline_whole) as f64 / 1024.0,
        delete_seconds,
    })
}

/// Sets this process' peak resident size back to its current size (Linux >= 4.0).
fn reset_peak_rss() -> Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| Error::io("resetting the peak RSS (/proc/self/clear_refs)", e))
}

/// A `/proc/self/status` figure in KiB (VmRSS: now, VmHWM: peak).
pub(crate) fn rss_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("reading /proc/self/status", e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| Error::Operator(format!("no {field} in /proc/self/status")))
}
