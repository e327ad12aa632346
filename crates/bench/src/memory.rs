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
/// whole (what the rewrite did before it streamed), each in a fresh process.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteMemory {
    pub file_rows: u64,
    pub file_mib: f64,
    /// The mirror rewriting the file without the row.
    pub streamed: DeleteProbe,
    /// The same file decoded whole, every row at once.
    pub whole_file: DeleteProbe,
}

/// One measurement of `lakets bench delete-probe`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeleteProbe {
    /// Resident size after opening the table, MiB.
    pub baseline_rss_mib: f64,
    /// Peak growth over the baseline, MiB.
    pub peak_growth_mib: f64,
    pub seconds: f64,
}

/// What `lakets bench delete-probe` does to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    /// Mirror the delete of one row (TableMirror's streaming rewrite).
    Delete,
    /// Decode the file whole.
    Whole,
}

/// Drains backlogs of `rows` and `10 * rows` through every operator, then deletes one row
/// of a file of `delete_file_rows`.
pub async fn memory(rows: u64, delete_file_rows: u64) -> Result<MemoryReport> {
    let (pg, url, mut client) = super::stock_ticks_database(super::History::None).await?;
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
        let peak = drain_peak(baseline)?;
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
    let delete = delete_into_compacted(delete_file_rows).await?;
    Ok(MemoryReport {
        peak_ratio: runs[1].peak_rss_mib / runs[0].peak_rss_mib,
        runs,
        delete,
    })
}

/// Writes one file of `rows` stock ticks (as compaction leaves them), then measures, each
/// in a fresh process (an allocator keeps what it freed, so a second measurement in the
/// same process would reuse the first one's heap): decoding the file whole, then the
/// mirror deleting one row of it.
pub async fn delete_into_compacted(rows: u64) -> Result<DeleteMemory> {
    use crate::delta::table;
    use deltalake::writer::DeltaWriter;

    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let location = dir.path().join("ticks").display().to_string();
    let url = table::parse_location(&location)?;
    let shape = probe_shape()?;
    let mut delta = table::create(&url, &shape, "bench.ticks", Default::default()).await?;
    let mut writer = table::writer(&delta)?;
    let mut i = 0u64;
    while i < rows {
        let chunk: Vec<_> = (i..(i + 65_536).min(rows)).map(probe_row).collect();
        let refs: Vec<_> = chunk.iter().collect();
        writer
            .write(crate::delta::batch::build_batch(&shape, &refs)?)
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
    drop(delta);
    let whole_file = run_probe_process(&location, rows, "whole")?;
    let streamed = run_probe_process(&location, rows, "delete")?;
    Ok(DeleteMemory {
        file_rows: rows,
        file_mib: file_bytes as f64 / (1 << 20) as f64,
        streamed,
        whole_file,
    })
}

/// The delete measurement as the report prints it.
pub fn delete_table(d: &DeleteMemory) -> String {
    format!(
        "-- memory: a 1-row delete mirrored into one compacted file of {} rows ({:.0} MiB), \
         each in a fresh process\n\
         {:<30} peak +{:>6.0} MiB over {:>4.0} MiB ({:.1} s)\n\
         {:<30} peak +{:>6.0} MiB over {:>4.0} MiB ({:.1} s)\n",
        d.file_rows,
        d.file_mib,
        "rewrite, streamed:",
        d.streamed.peak_growth_mib,
        d.streamed.baseline_rss_mib,
        d.streamed.seconds,
        "the same file decoded whole:",
        d.whole_file.peak_growth_mib,
        d.whole_file.baseline_rss_mib,
        d.whole_file.seconds,
    )
}

fn run_probe_process(location: &str, rows: u64, mode: &str) -> Result<DeleteProbe> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the lakets binary", e))?;
    let out = std::process::Command::new(exe)
        .args([
            "bench",
            "delete-probe",
            "--location",
            location,
            "--mode",
            mode,
        ])
        .arg("--rows")
        .arg(rows.to_string())
        .env("LAKETS_LOG", "warn")
        .output()
        .map_err(|e| Error::io("running lakets bench delete-probe", e))?;
    if !out.status.success() {
        return Err(Error::Operator(format!(
            "lakets bench delete-probe --mode {mode} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Operator(format!(
            "lakets bench delete-probe printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })
}

/// `lakets bench delete-probe`: in this (fresh) process, opens the table
/// `delete_into_compacted` wrote and either mirrors the delete of its middle row or
/// decodes its files whole, with the peak-RSS mark reset after opening.
pub async fn delete_probe(location: &str, rows: u64, mode: ProbeMode) -> Result<DeleteProbe> {
    use crate::delta::table;
    use crate::wal::lsn::Lsn;

    let shape = probe_shape()?;
    let delta = table::open(&table::parse_location(location)?)
        .await?
        .ok_or_else(|| Error::invalid(format!("no Delta table at {location}")))?;
    let files = crate::delta::read::active_files(&delta).await?;
    let baseline = rss_kib("VmRSS")?;
    reset_peak_rss()?;
    let started = Instant::now();
    match mode {
        ProbeMode::Delete => {
            let mut mirror =
                crate::delta::mirror::TableMirror::new(shape, delta, "bench".into(), Lsn::ZERO);
            let victim = probe_row(rows / 2);
            let key = std::sync::Arc::new(vec![0, 1]);
            mirror
                .delete(&key, vec![victim[0].clone(), victim[1].clone()], Lsn(1))
                .await?;
            mirror.flush(Lsn(2)).await?;
        }
        ProbeMode::Whole => {
            for file in files {
                let batches = table::read_file(&delta, file.object_store_path().as_ref()).await?;
                let rows: Vec<crate::delta::batch::CellRow> = batches
                    .iter()
                    .map(|b| crate::delta::read::batch_rows(b, &shape))
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .flatten()
                    .collect();
                std::hint::black_box(&rows);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = drain_peak(baseline)?;
    Ok(DeleteProbe {
        baseline_rss_mib: baseline as f64 / 1024.0,
        peak_growth_mib: peak.saturating_sub(baseline) as f64 / 1024.0,
        seconds,
    })
}

fn probe_shape() -> Result<crate::delta::schema::TableShape> {
    use crate::wal::value::ColumnType;
    crate::delta::schema::TableShape::new(
        &[
            ("time".into(), ColumnType::Timestamptz, -1),
            ("symbol".into(), ColumnType::Text, -1),
            ("price".into(), ColumnType::Float8, -1),
            ("volume".into(), ColumnType::Int8, -1),
        ],
        "time",
        crate::delta::schema::Partitioning::None,
    )
}

/// Row `i` of the probe's file: ticks a millisecond apart with prices and volumes that
/// vary as a market's do (not a repeating pattern a codec would fold away).
fn probe_row(i: u64) -> crate::delta::batch::CellRow {
    use crate::delta::schema::Cell;
    // splitmix64
    let mut h = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    let base = 1_767_225_600_000_000i64; // 2026-01-01
    vec![
        Cell::Int(base + i as i64 * 1000),
        Cell::Str(format!("S{}", i % 50)),
        Cell::Float((100.0 + (h % 1_000_000) as f64 / 10_000.0).to_bits()),
        Cell::Int(((h >> 32) % 100_000) as i64),
    ]
}

/// Sets this process' peak resident size back to its current size (Linux >= 4.0).
pub(crate) fn reset_peak_rss() -> Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| Error::io("resetting the peak RSS (/proc/self/clear_refs)", e))
}

/// The peak RSS since the last reset, in KiB, and at least `baseline` (resident when the
/// measured work began): the kernel syncs its per-thread RSS counters lazily, so its
/// high-water mark can read a few pages below an earlier VmRSS.
fn drain_peak(baseline: u64) -> Result<u64> {
    Ok(rss_kib("VmHWM")?.max(baseline))
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
