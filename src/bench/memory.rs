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
    Ok(MemoryReport {
        peak_ratio: runs[1].peak_rss_mib / runs[0].peak_rss_mib,
        runs,
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
