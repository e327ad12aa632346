//! The writers the benchmarks load PostgreSQL with: 1,000-row transactions of ticks, at a
//! paced rate on a thread of their own (as separate applications would be).

use std::time::{Duration, Instant};

use crate::error::{Error, PgResultExt, Result};

/// One 1,000-row transaction of ticks at the current time over 10 symbols.
pub(crate) const INSERT_1000: &str = "INSERT INTO stock_ticks
     SELECT now(),
            (ARRAY['AAPL','MSFT','NVDA','AMZN','GOOG','META','TSLA','JPM','V','XOM'])[1 + g % 10],
            100 + (($1::bigint + g) % 1000) * 0.01, 100 + g % 900
       FROM generate_series(1, 1000) g";

/// `writers` connections share `rate` rows/s in 1,000-row transactions for `seconds`;
/// returns the rows written and each transaction's latency (ms).
pub(crate) async fn paced_insert(
    db: crate::db::DbConfig,
    writers: usize,
    rate: u64,
    seconds: f64,
) -> Result<(u64, Vec<f64>)> {
    super::on_writer_thread(None, paced_writers(db, writers, rate, seconds)).await
}

async fn paced_writers(
    db: crate::db::DbConfig,
    writers: usize,
    rate: u64,
    seconds: f64,
) -> Result<(u64, Vec<f64>)> {
    let writers = writers.max(1);
    let per_writer = rate as f64 / writers as f64;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = crate::db::connect_with(&db.as_application()).await?;
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare(INSERT_1000)
                .await
                .pg_context(|| "preparing the insert".into())?;
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1000.0 / per_writer));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let (mut rows, mut i) = (0u64, w as i64 * 1_000_000_000);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                ticker.tick().await;
                let sent = Instant::now();
                client
                    .execute(&insert, &[&i])
                    .await
                    .pg_context(|| "inserting ticks".into())?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                rows += 1000;
                i += 1000;
            }
            Ok::<_, Error>((rows, latencies))
        }));
    }
    let (mut rows, mut latencies) = (0, Vec::new());
    for task in tasks {
        let (r, l) = task
            .await
            .map_err(|e| Error::Operator(format!("writer task: {e}")))??;
        rows += r;
        latencies.extend(l);
    }
    Ok((rows, latencies))
}
