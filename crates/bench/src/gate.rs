//! `lakets bench gate`: insert latency into the current chunk, alone and while the
//! durability gate holds an old chunk of the same table locked (tiering it, waiting for a
//! consumer), measured in one run. The gate locks only the chunk it checks, so the two
//! should match.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::freshness::Latency;
use crate::error::{Error, PgResultExt, Result};
use lakets_core::lifecycle::{self, GateSettings};

#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub inserts_per_phase: usize,
    /// Inserts into the current chunk with nothing else running.
    pub alone: Latency,
    /// The same while the gate keeps an old chunk locked.
    pub while_gated: Latency,
    /// Chunk checks the gate ran during the second phase (each deferred, holding the lock
    /// for its whole wait).
    pub gate_checks: usize,
    pub p99_ratio: f64,
    pub machine: String,
}

pub async fn gate(inserts: usize) -> Result<GateReport> {
    let (pg, url, client) = super::stock_ticks_database(super::History::HourAgo(5)).await?;
    let old = lakets_core::catalog::registry::chunk_ended_an_hour_ago(&client).await?;
    let _lake = super::sync_stock_ticks(&crate::db::parse_config(&url)?).await?;
    lifecycle::policy::set_policy(
        &client,
        "stock_ticks",
        Some(crate::interval::Interval::hours(1)),
        None,
    )
    .await?;
    let old = match old {
        Some(c) => c,
        None => {
            return Err(Error::Operator(
                "no chunk older than an hour to gate (history was not written)".into(),
            ));
        }
    };

    let writer = crate::db::connect_as_application(&url).await?;
    let alone = insert_latencies(&writer, inserts).await?;

    // No consumer runs: each check holds the old chunk's lock for its whole wait, then
    // defers; checks follow one another for the whole phase.
    let stop = tokio_util::sync::CancellationToken::new();
    let gating = {
        let (url, stop, old) = (url.clone(), stop.clone(), old.clone());
        tokio::spawn(async move {
            let db = crate::db::parse_config(&url)?;
            let settings = GateSettings {
                lock_timeout: Duration::from_secs(2),
                wait: Duration::from_millis(500),
            };
            let mut checks = 0usize;
            while !stop.is_cancelled() {
                lifecycle::tier(&db, None, Some(&old), settings, None).await?;
                checks += 1;
            }
            Ok::<usize, Error>(checks)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let while_gated = insert_latencies(&writer, inserts).await?;
    stop.cancel();
    let gate_checks = gating
        .await
        .map_err(|e| Error::Operator(format!("gate task: {e}")))??;

    drop(writer);
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;
    let alone = super::freshness::stats(alone);
    let while_gated = super::freshness::stats(while_gated);
    Ok(GateReport {
        inserts_per_phase: inserts,
        p99_ratio: while_gated.p99_ms / alone.p99_ms.max(1e-9),
        alone,
        while_gated,
        gate_checks,
        machine: super::catchup::machine_description(),
    })
}

/// Latencies (ms) of single-row inserts into the current chunk.
async fn insert_latencies(client: &tokio_postgres::Client, n: usize) -> Result<Vec<f64>> {
    let statement = client
        .prepare("INSERT INTO stock_ticks VALUES (now(), 'MSFT', 1, 1)")
        .await
        .pg_context(|| "preparing the insert".into())?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        client
            .execute(&statement, &[])
            .await
            .pg_context(|| "inserting into the current chunk".into())?;
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

pub fn gate_table(r: &GateReport) -> String {
    format!(
        "single-row inserts into the current chunk, {} per phase, {}\n\n\
         {:<40} {:>10} {:>10} {:>10}\n\
         {:<40} {:>10.2} {:>10.2} {:>10.2}\n\
         {:<40} {:>10.2} {:>10.2} {:>10.2}\n\n\
         gate checks during the second phase: {} (each holding an old chunk's lock)\n\
         p99 while gated / alone: {:.2}x\n",
        r.inserts_per_phase,
        r.machine,
        "",
        "p50 ms",
        "p99 ms",
        "max ms",
        "alone",
        r.alone.p50_ms,
        r.alone.p99_ms,
        r.alone.max_ms,
        "while the gate holds an old chunk",
        r.while_gated.p50_ms,
        r.while_gated.p99_ms,
        r.while_gated.max_ms,
        r.gate_checks,
        r.p99_ratio
    )
}
