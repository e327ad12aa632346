//! `lakets bench soak`: the whole service (as `lakets run` starts it: the WAL pipeline with
//! every operator, the jobs, HTTP and gRPC) for a long stretch at a moderate ingest rate,
//! sampling lag and resident memory. Chunks are short and the policy tiers and drops them
//! during the run, so partition pre-creation, rollup refreshes, tiering and the durability
//! gate all work under load. At the end the service catches up and `lakets verify` must
//! pass (every chunk equals Delta, the LVC, every rollup).

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, PgResultExt, Result};
use crate::interval::Interval;

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    /// Rows per second.
    pub rate: u64,
    pub symbols: u32,
    pub sample_every: Duration,
    /// Chunk width; chunks are tiered after two widths and dropped after three.
    pub chunk_interval: Interval,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    pub elapsed_s: f64,
    /// Changes the pipeline has received since the start.
    pub changes: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub rss_mib: f64,
    pub chunks_tiered: i64,
    pub chunks_dropped: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub target_rows_per_second: u64,
    pub rows_written: u64,
    pub achieved_rows_per_second: f64,
    pub samples: Vec<SoakSample>,
    pub max_lag_seconds: f64,
    pub mean_lag_seconds: f64,
    /// Resident size at the first sample, at the last one, and the most seen.
    pub rss_first_mib: f64,
    pub rss_last_mib: f64,
    pub rss_max_mib: f64,
    /// `lakets verify stock_ticks` after the final catch-up.
    pub verify_ok: bool,
    pub verify_differences: Vec<String>,
    pub machine: String,
}

pub async fn soak(options: &SoakOptions) -> Result<SoakReport> {
    let pg = tokio::task::spawn_blocking(|| {
        lakets_testkit::embedded::EmbeddedPostgres::start(
            lakets_testkit::embedded::EmbeddedOptions::default(),
        )
    })
    .await
    .map_err(|e| Error::Embedded(e.to_string()))??;
    let url = pg.create_database("lakets_soak").await?;
    let db = crate::db::parse_config(&url)?;
    let mut client = crate::db::connect_as_application(&url).await?;
    lakets_core::catalog::migrate(&mut client).await?;
    crate::ingest::load_assets(&client, options.symbols).await?;
    client
        .batch_execute(crate::ingest::TICKS_DDL)
        .await
        .pg_context(|| "creating stock_ticks".into())?;
    let lake = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let width = options.chunk_interval;
    let config = crate::demo::stock_ticks_config(
        &url,
        &lake.path().join("stock_ticks"),
        width,
        Interval::from_secs(width.as_std().as_secs() as i64 * 2),
        Interval::from_secs(width.as_std().as_secs() as i64 * 3),
    );
    lakets_server::config::reconcile::reconcile(&db, &config).await?;

    let cancel = CancellationToken::new();
    let service = lakets_server::service::start(&config, db.clone(), cancel.clone()).await?;
    let state = service.state.clone();
    let stop_ingest = CancellationToken::new();
    let ingest = {
        let (db, stop) = (db.clone(), stop_ingest.clone());
        let options = crate::ingest::IngestOptions {
            profile: crate::ingest::IngestProfile {
                symbols: options.symbols,
                rate: options.rate,
                burst: false,
            },
            duration: Some(options.duration),
            method: crate::ingest::Method::Insert,
            progress: false,
        };
        tokio::spawn(async move {
            crate::ingest::run(&db, options, async move { stop.cancelled().await }).await
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(options.sample_every);
    ticker.tick().await;
    while !ingest.is_finished() {
        ticker.tick().await;
        let st = state.status.lock().unwrap().clone();
        let chunks = lakets_core::catalog::registry::count_chunks(&client).await?;
        let sample = SoakSample {
            elapsed_s: started.elapsed().as_secs_f64(),
            changes: st.changes,
            lag_bytes: st.lag_bytes,
            lag_seconds: st.lag_seconds,
            rss_mib: super::memory::rss_kib("VmRSS")? as f64 / 1024.0,
            chunks_tiered: chunks.tiered,
            chunks_dropped: chunks.dropped,
        };
        tracing::info!(
            elapsed_s = sample.elapsed_s as u64,
            lag_seconds = sample.lag_seconds,
            rss_mib = sample.rss_mib as u64,
            tiered = sample.chunks_tiered,
            dropped = sample.chunks_dropped,
            "soak"
        );
        samples.push(sample);
    }
    let written = ingest
        .await
        .map_err(|e| Error::Operator(format!("ingest task: {e}")))??;
    let seconds = started.elapsed().as_secs_f64();

    // Catch up, stop, and check everything against the table.
    let end = super::end_marker(&client).await?;
    let caught_up = Instant::now();
    while state.status.lock().unwrap().acknowledged_lsn < end {
        if caught_up.elapsed() > Duration::from_secs(300) {
            return Err(Error::Operator(
                "the service did not catch up within 5 minutes of the end".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    service.wait().await?;
    let verify = lakets_core::coldtier::verify::verify(&client, "stock_ticks").await?;
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;

    let lags: Vec<f64> = samples.iter().map(|s| s.lag_seconds).collect();
    let rss: Vec<f64> = samples.iter().map(|s| s.rss_mib).collect();
    Ok(SoakReport {
        seconds,
        target_rows_per_second: options.rate,
        rows_written: written.rows,
        achieved_rows_per_second: written.rows_per_second,
        max_lag_seconds: lags.iter().copied().fold(0.0, f64::max),
        mean_lag_seconds: lags.iter().sum::<f64>() / lags.len().max(1) as f64,
        rss_first_mib: rss.first().copied().unwrap_or(0.0),
        rss_last_mib: rss.last().copied().unwrap_or(0.0),
        rss_max_mib: rss.iter().copied().fold(0.0, f64::max),
        samples,
        verify_ok: verify.ok,
        verify_differences: verify.differences,
        machine: super::catchup::machine_description(),
    })
}

/// The human-readable report: one line per sample, then the summary.
pub fn soak_table(report: &SoakReport) -> String {
    let mut out = format!(
        "soak: {:.0} s at {} rows/s target ({:.0} achieved, {} rows), the whole service, {}\n\n",
        report.seconds,
        report.target_rows_per_second,
        report.achieved_rows_per_second,
        report.rows_written,
        report.machine
    );
    out.push_str(&format!(
        "{:>8} {:>12} {:>10} {:>12} {:>9} {:>7} {:>8}\n",
        "elapsed", "changes", "lag s", "lag bytes", "RSS MiB", "tiered", "dropped"
    ));
    for s in &report.samples {
        out.push_str(&format!(
            "{:>8.0} {:>12} {:>10.2} {:>12} {:>9.0} {:>7} {:>8}\n",
            s.elapsed_s,
            s.changes,
            s.lag_seconds,
            s.lag_bytes,
            s.rss_mib,
            s.chunks_tiered,
            s.chunks_dropped
        ));
    }
    out.push_str(&format!(
        "\nlag: max {:.2} s, mean {:.2} s; RSS: first {:.0} MiB, last {:.0} MiB, max {:.0} MiB\n\
         verify after the final catch-up: {}\n",
        report.max_lag_seconds,
        report.mean_lag_seconds,
        report.rss_first_mib,
        report.rss_last_mib,
        report.rss_max_mib,
        if report.verify_ok {
            "ok".to_owned()
        } else {
            format!("FAILED: {}", report.verify_differences.join("; "))
        }
    ));
    out
}
