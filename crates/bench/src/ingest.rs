//! `lakets ingest` (the spec's stream_ticks): synthetic stock ticks written into
//! `stock_ticks` at a steady rate.
//!
//! Symbols come from `stock_assets` (created and filled if absent). Each symbol follows a
//! sinusoidal intraday path around its base price plus a small random walk; volumes are
//! random. Rows go in batches ten times a second, by a multi-row INSERT of bound arrays
//! (`INSERT ... SELECT unnest($1, ...)`, the default: 1.7x faster than text COPY with
//! 1,000-row batches and 1.3x with 10,000-row batches here, see `lakets bench ingest`) or
//! by COPY. The profile
//! (symbols, rate, burst) lives in `lakets._ingest_profile`: the gRPC API changes it and a
//! running ingest picks the change up within a second. Burst mode runs the first two
//! seconds of every ten at five times the rate.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{PgResultExt, Result};
pub use lakets_core::catalog::ingest_profile::{
    IngestProfile, StoredProfile, get_profile, report_and_poll, set_profile,
};

pub const TICKS_TABLE: &str = "stock_ticks";
/// The spec's tick table.
pub const TICKS_DDL: &str = "CREATE TABLE IF NOT EXISTS public.stock_ticks (
    time   timestamptz      NOT NULL,
    symbol text             NOT NULL,
    price  double precision NOT NULL,
    volume bigint           NOT NULL
)";
const BATCHES_PER_SECOND: u64 = 10;
const BURST_FACTOR: u64 = 5;

const WELL_KNOWN: &[&str] = &[
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "JPM", "V", "XOM", "UNH", "JNJ", "WMT",
    "MA", "PG", "HD", "CVX", "MRK", "ABBV", "KO", "PEP", "AVGO", "COST", "ADBE", "CRM", "NFLX",
    "AMD", "INTC", "ORCL", "CSCO", "BAC", "WFC", "DIS", "MCD", "NKE", "T", "VZ", "IBM", "QCOM",
    "TXN",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Method {
    Copy,
    Insert,
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub profile: IngestProfile,
    pub duration: Option<Duration>,
    pub method: Method,
    /// Print a one-line live display (on a terminal) or a log line every 10 s.
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub method: Method,
}

/// One symbol's price path.
#[derive(Debug, Clone)]
pub struct Asset {
    symbol: String,
    base: f64,
    phase: f64,
    walk: f64,
}

/// Creates `stock_assets` with `n` symbols if needed; returns the first `n`.
pub async fn load_assets(client: &Client, n: u32) -> Result<Vec<Asset>> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.stock_assets (
                 symbol     text PRIMARY KEY,
                 name       text NOT NULL,
                 base_price double precision NOT NULL CHECK (base_price > 0),
                 phase      double precision NOT NULL DEFAULT 0
             )",
        )
        .await
        .pg_context(|| "creating stock_assets".into())?;
    let have: i64 = client
        .query_one("SELECT count(*) FROM public.stock_assets", &[])
        .await
        .pg_context(|| "counting stock_assets".into())?
        .get(0);
    if (have as u64) < n as u64 {
        let symbols: Vec<String> = (0..n as usize)
            .map(|i| {
                WELL_KNOWN
                    .get(i)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| format!("SYM{i:05}"))
            })
            .collect();
        client
            .execute(
                "INSERT INTO public.stock_assets (symbol, name, base_price, phase)
                 SELECT s, s || ' Inc.', 20 + (o * 37 % 480), (o % 24) * pi() / 12
                   FROM unnest($1::text[]) WITH ORDINALITY u(s, o)
                 ON CONFLICT (symbol) DO NOTHING",
                &[&symbols],
            )
            .await
            .pg_context(|| "filling stock_assets".into())?;
    }
    let rows = client
        .query(
            "SELECT symbol, base_price, phase FROM public.stock_assets ORDER BY symbol LIMIT $1",
            &[&(n as i64)],
        )
        .await
        .pg_context(|| "reading stock_assets".into())?;
    Ok(rows
        .iter()
        .map(|r| Asset {
            symbol: r.get(0),
            base: r.get(1),
            phase: r.get(2),
            walk: 0.0,
        })
        .collect())
}

/// Creates `stock_ticks` as a ChronoTable with one-hour chunks when it does not exist.
pub async fn ensure_ticks_table(client: &mut Client) -> Result<bool> {
    lakets_core::catalog::migrate(client).await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('public.stock_ticks') IS NOT NULL", &[])
        .await
        .pg_context(|| "looking for stock_ticks".into())?
        .get(0);
    if exists {
        return Ok(false);
    }
    client
        .batch_execute(TICKS_DDL)
        .await
        .pg_context(|| "creating stock_ticks".into())?;
    let mut options = lakets_core::chronotable::CreateOptions::new("time");
    options.chunk_interval = crate::interval::Interval::hours(1);
    lakets_core::chronotable::create_chronotable(client, TICKS_TABLE, &options).await?;
    Ok(true)
}

/// A small, fast pseudo-random generator (xorshift64*); ticks need no cryptography.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One batch of ticks, column-wise.
#[derive(Default)]
struct Batch {
    times: Vec<chrono::DateTime<chrono::Utc>>,
    symbols: Vec<String>,
    prices: Vec<f64>,
    volumes: Vec<i64>,
}

fn synthesize(assets: &mut [Asset], rows: usize, start: usize, rng: &mut Rng) -> Batch {
    let now = chrono::Utc::now();
    let day_fraction = (now.timestamp() % 86_400) as f64 / 86_400.0;
    let mut batch = Batch::default();
    for i in 0..rows {
        let n = assets.len();
        let asset = &mut assets[(start + i) % n];
        asset.walk = (asset.walk + (rng.unit() - 0.5) * 0.002).clamp(-0.05, 0.05);
        let wave = (std::f64::consts::TAU * day_fraction + asset.phase).sin();
        let price = asset.base * (1.0 + 0.02 * wave + asset.walk);
        batch
            .times
            .push(now + chrono::Duration::microseconds(i as i64));
        batch.symbols.push(asset.symbol.clone());
        batch.prices.push((price * 100.0).round() / 100.0);
        batch.volumes.push(100 + (rng.next() % 900) as i64);
    }
    batch
}

async fn write_batch(client: &Client, batch: &Batch, method: Method) -> Result<u64> {
    match method {
        Method::Insert => client
            .execute(
                "INSERT INTO public.stock_ticks (time, symbol, price, volume)
                 SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::float8[], $4::int8[])",
                &[&batch.times, &batch.symbols, &batch.prices, &batch.volumes],
            )
            .await
            .pg_context(|| "inserting ticks".into()),
        Method::Copy => {
            let mut text = String::with_capacity(batch.times.len() * 48);
            for i in 0..batch.times.len() {
                use std::fmt::Write as _;
                let _ = writeln!(
                    text,
                    "{}\t{}\t{}\t{}",
                    batch.times[i].format("%Y-%m-%d %H:%M:%S%.6f+00"),
                    batch.symbols[i],
                    batch.prices[i],
                    batch.volumes[i]
                );
            }
            let sink = client
                .copy_in("COPY public.stock_ticks (time, symbol, price, volume) FROM STDIN")
                .await
                .pg_context(|| "starting COPY into stock_ticks".into())?;
            futures_util::pin_mut!(sink);
            sink.send(Bytes::from(text))
                .await
                .pg_context(|| "copying ticks".into())?;
            sink.finish().await.pg_context(|| "finishing COPY".into())
        }
    }
}

/// Streams ticks until `shutdown`, the duration, or an error.
pub async fn run(
    db: &crate::db::DbConfig,
    options: IngestOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<IngestReport> {
    options.profile.validate()?;
    let mut client = crate::db::connect_with(db).await?;
    if ensure_ticks_table(&mut client).await? {
        tracing::info!("created stock_ticks as a ChronoTable with one-hour chunks");
    }
    set_profile(&client, options.profile).await?;
    let control = crate::db::connect_with(db).await?;
    let mut profile = options.profile;
    let mut assets = load_assets(&client, profile.symbols).await?;
    let mut rng = Rng::new();
    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / BATCHES_PER_SECOND));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let terminal = options.progress && std::io::stderr().is_terminal();
    let (mut total, mut second_rows, mut cursor) = (0u64, 0u64, 0usize);
    let mut second_start = Instant::now();
    let mut owed = 0.0f64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => break,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let elapsed = started.elapsed().as_secs();
        let factor = if profile.burst && elapsed % 10 < 2 {
            BURST_FACTOR
        } else {
            1
        };
        owed += (profile.rate * factor) as f64 / BATCHES_PER_SECOND as f64;
        let rows = owed.floor() as usize;
        owed -= rows as f64;
        if rows > 0 {
            let batch = synthesize(&mut assets, rows, cursor, &mut rng);
            cursor = (cursor + rows) % assets.len();
            total += write_batch(&client, &batch, options.method).await?;
            second_rows += rows as u64;
        }
        if second_start.elapsed() >= Duration::from_secs(1) {
            let achieved = second_rows as f64 / second_start.elapsed().as_secs_f64();
            second_rows = 0;
            second_start = Instant::now();
            if let Some(stored) = report_and_poll(&control, achieved, total).await?
                && stored != profile
            {
                tracing::info!(?stored, "ingest profile changed");
                if stored.symbols != profile.symbols {
                    assets = load_assets(&client, stored.symbols).await?;
                    cursor = 0;
                }
                profile = stored;
            }
            if terminal {
                eprint!(
                    "\r\x1b[2K{achieved:>9.0} rows/s (target {}{}), {total} rows, {} symbols",
                    profile.rate,
                    if profile.burst { ", burst" } else { "" },
                    profile.symbols
                );
                let _ = std::io::stderr().flush();
            } else if options.progress && elapsed.is_multiple_of(10) {
                tracing::info!(rows_per_second = achieved as u64, total, "ingest");
            }
        }
    }
    if terminal {
        eprintln!();
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = report_and_poll(&control, 0.0, total).await;
    Ok(IngestReport {
        rows: total,
        seconds,
        rows_per_second: total as f64 / seconds.max(1e-9),
        method: options.method,
    })
}

/// Rows per second of COPY and of a multi-row INSERT, batches of `batch` rows, for
/// `seconds` each, interleaved (`lakets bench ingest`).
#[derive(Debug, Clone, Serialize)]
pub struct MethodComparison {
    pub batch_rows: usize,
    pub copy_rows_per_second: f64,
    pub insert_rows_per_second: f64,
    pub copy_over_insert: f64,
}

pub async fn compare_methods(
    db: &crate::db::DbConfig,
    batch_rows: usize,
    seconds: f64,
) -> Result<MethodComparison> {
    let mut client = crate::db::connect_with(db).await?;
    ensure_ticks_table(&mut client).await?;
    let mut assets = load_assets(&client, 40).await?;
    let mut rng = Rng::new();
    let mut totals = [(0u64, 0f64); 2];
    // Four alternating rounds, so drift (autovacuum, chunk growth) hits both alike.
    for round in 0..4 {
        let order = if round % 2 == 0 {
            [Method::Copy, Method::Insert]
        } else {
            [Method::Insert, Method::Copy]
        };
        for method in order {
            let slot = usize::from(method == Method::Insert);
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < seconds / 4.0 {
                let batch = synthesize(&mut assets, batch_rows, 0, &mut rng);
                totals[slot].0 += write_batch(&client, &batch, method).await?;
            }
            totals[slot].1 += start.elapsed().as_secs_f64();
        }
    }
    let copy = totals[0].0 as f64 / totals[0].1;
    let insert = totals[1].0 as f64 / totals[1].1;
    Ok(MethodComparison {
        batch_rows,
        copy_rows_per_second: copy,
        insert_rows_per_second: insert,
        copy_over_insert: copy / insert,
    })
}
