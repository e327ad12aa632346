//! `lakets demo`: the spec's stock-tick demo with no setup.
//!
//! An embedded PostgreSQL (unless `--database-url` is given); `stock_ticks` as a ChronoTable
//! with one-hour chunks and a few hours of synthetic history; then the same service as
//! `lakets run`, configured in code: the Last Value Cache, the Delta mirror under the data
//! directory, the OHLCV rollup DAG (1 minute -> 1 hour -> 1 day), a tiered retention policy
//! with short intervals and every job on a demo-friendly schedule, so that chunks are
//! pre-created, tiered and dropped within the first minutes; and the ingest streaming ticks.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::Client;

use crate::error::{Error, PgResultExt, Result};
use crate::interval::Interval;
use lakets_core::catalog::{self, registry};
use lakets_core::chronotable::{self, CreateOptions};
use lakets_server::config::{Config, LvcSpec, PolicySpec, RollupSpec, SyncSpec, TableSpec};
use lakets_testkit::embedded::{EmbeddedOptions, EmbeddedPostgres};

pub const DEMO_TABLE: &str = "stock_ticks";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub duration: Option<Duration>,
    /// Hours of synthetic history written before the table is converted.
    pub history_hours: i32,
    /// Symbols ticked (from stock_assets).
    pub symbols: u32,
    /// Live ticks per second.
    pub rate: u64,
}

/// Runs the demo until `shutdown` resolves or the duration elapses.
pub async fn run(options: DemoOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&options.data_dir).map_err(|e| {
        Error::io(
            format!("creating the demo directory {}", options.data_dir.display()),
            e,
        )
    })?;
    let (embedded, url) = match &options.database_url {
        Some(url) => (None, url.clone()),
        None => {
            println!("Starting an embedded PostgreSQL (throwaway, removed on exit)...");
            let pg =
                tokio::task::spawn_blocking(|| EmbeddedPostgres::start(EmbeddedOptions::default()))
                    .await
                    .map_err(|e| Error::Embedded(format!("start-up task failed: {e}")))??;
            let url = pg.create_database("lakets_demo").await?;
            (Some(pg), url)
        }
    };

    let mut client = crate::db::connect(&url).await?;
    catalog::migrate(&mut client).await?;
    crate::ingest::load_assets(&client, options.symbols).await?;
    prepare_stock_ticks(&mut client, options.history_hours, options.symbols).await?;

    let db = crate::db::parse_config(&url)?;
    let data_dir = std::path::absolute(&options.data_dir)
        .map_err(|e| Error::io("resolving the data directory", e))?;
    let delta_dir = data_dir.join("delta").join(DEMO_TABLE);
    let table = crate::ident::TableName::new("public", DEMO_TABLE);
    let synced = lakets_core::coldtier::sync::find_sync(&client, &table)
        .await?
        .is_some_and(|s| s.state == lakets_core::coldtier::sync::SyncState::Active);
    // A throwaway cluster starts empty: a Delta table left by an earlier run belongs to a
    // database that no longer exists.
    if !synced && embedded.is_some() && delta_dir.exists() {
        println!(
            "Removing the Delta table of an earlier demo run at {}.",
            delta_dir.display()
        );
        std::fs::remove_dir_all(&delta_dir)
            .map_err(|e| Error::io(format!("removing {}", delta_dir.display()), e))?;
    }

    let config = stock_ticks_config(&url, &delta_dir, Interval::hours(1), TIER_AFTER, DROP_AFTER);
    println!("Applying the demo's configuration (LVC, Delta sync, policy, rollups)...");
    let report = lakets_server::config::reconcile::reconcile(&db, &config).await?;
    for c in &report.created {
        println!("  created {c}");
    }

    let cancel = tokio_util::sync::CancellationToken::new();
    let service = lakets_server::service::start(&config, db.clone(), cancel.clone()).await?;
    let state = service.state.clone();

    let chunks = chronotable::show_chunks(&mut client, DEMO_TABLE, false).await?;
    println!(
        "\n{DEMO_TABLE} is a ChronoTable with {} chunks:",
        chunks.len()
    );
    print!("{}", lakets_server::report::chunks_table(&chunks));
    match &embedded {
        // The URL carries the cluster's password: show where the password is instead.
        Some(pg) => println!(
            "\nConnect with:   PGPASSFILE={} psql '{}'\n                (for lakets: LAKETS_DATABASE_URL='{}' LAKETS_DATABASE_PASSWORD_FILE={})",
            pg.pgpass_file().display(),
            pg.display_url("lakets_demo"),
            pg.display_url("lakets_demo"),
            pg.password_file().display()
        ),
        None => println!(
            "\nConnect with:   psql '{}'",
            crate::db::describe_target(&db)
        ),
    }
    println!("Data directory: {}", data_dir.display());
    println!(
        "Delta table:    {} (read it with Spark, Databricks, DuckDB's delta_scan, ...)",
        delta_dir.display()
    );
    println!("Latest prices:  SELECT * FROM lakets.lvc_{DEMO_TABLE};");
    println!(
        "Candles:        SELECT * FROM ohlcv_1min_realtime ORDER BY bucket DESC LIMIT 10; \
         (also ohlcv_1hour, ohlcv_1day; `lakets rollup show`)"
    );
    if let Some(addr) = service.http_addr {
        println!(
            "Dashboard:      http://{addr}/ (live panels; the ingest's controls; JSON at /api/status)"
        );
        println!("Metrics:        http://{addr}/metrics (lakets_replication_lag_seconds, ...)");
    }
    if let Some(addr) = service.grpc_addr {
        println!("gRPC:           {addr} (grpcurl -plaintext {addr} list)");
    }
    println!(
        "Policy:         chunks tiered after {}, dropped after {}; `lakets status` shows them",
        TIER_AFTER, DROP_AFTER
    );
    println!(
        "Streaming ticks for {} symbols at {} rows/s; Ctrl-C to stop.\n",
        options.symbols, options.rate
    );

    let stop_ingest = tokio_util::sync::CancellationToken::new();
    let ingest = {
        let db = db.clone();
        let stop = stop_ingest.clone();
        let options = crate::ingest::IngestOptions {
            profile: crate::ingest::IngestProfile {
                symbols: options.symbols,
                rate: options.rate,
                burst: false,
            },
            duration: None,
            method: crate::ingest::Method::Insert,
            progress: false,
        };
        tokio::spawn(async move {
            crate::ingest::run(&db, options, async move { stop.cancelled().await }).await
        })
    };

    let sleep = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = report_progress(&client, &state) => result?,
        _ = shutdown => println!("\nStopping."),
        _ = sleep => println!("\nDuration reached; stopping."),
    }
    // Stop writing first, let the service receive everything written, then let it flush
    // and acknowledge what it holds: `lakets verify` right after the demo finds every copy
    // complete.
    stop_ingest.cancel();
    let ingested = match ingest.await {
        Ok(r) => r?,
        Err(e) => return Err(Error::Operator(format!("the demo ingest panicked: {e}"))),
    };
    let written: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .pg_context(|| "reading the WAL position".to_string())?
        .get(0);
    let written: crate::wal::Lsn = written
        .parse()
        .map_err(|e| Error::Operator(format!("the WAL position {written:?}: {e}")))?;
    if !received_past(&state, written, DRAIN_TIMEOUT).await {
        println!(
            "The service had not received the WAL up to {written} after {DRAIN_TIMEOUT:?}; \
             the next run streams the rest."
        );
    }
    cancel.cancel();
    service.wait().await?;
    println!(
        "Ingested {} live ticks ({:.0} rows/s).",
        ingested.rows, ingested.rows_per_second
    );
    drop(client);
    drop(embedded);
    Ok(())
}

/// How long stopping waits for the service to receive what the demo wrote.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits (bounded) until the pipeline has received the WAL up to `target`: what it has
/// received it stores when it stops.
async fn received_past(
    state: &lakets_server::service::ServiceState,
    target: crate::wal::Lsn,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = state.status.lock().unwrap().clone();
        if status.received_lsn >= target {
            return true;
        }
        if status.stopped.is_some() || tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const TIER_AFTER: Interval = Interval::hours(1);
const DROP_AFTER: Interval = Interval::hours(3);

/// The demo's service configuration: what `lakets.toml` would say, with short intervals.
/// The demo's service configuration for `stock_ticks` (also the soak benchmark's): LVC,
/// the Delta mirror at `delta_dir`, a tiered retention policy, the OHLCV DAG and short
/// job intervals, on free ports.
pub(crate) fn stock_ticks_config(
    url: &str,
    delta_dir: &std::path::Path,
    chunk_interval: Interval,
    tier_after: Interval,
    drop_after: Interval,
) -> Config {
    let mut config = Config::default();
    config.database.url = Some(url.to_string());
    // Free ports: the demo must not collide with a running service.
    config.http.listen = "127.0.0.1:0".into();
    config.grpc.listen = "127.0.0.1:0".into();
    config.http.ready_max_lag = Interval::from_secs(60);
    config.jobs.partitions_every = Interval::from_secs(30);
    config.jobs.rollups_every = Interval::from_secs(5);
    config.jobs.tiering_every = Interval::from_secs(10);
    config.jobs.retention_every = Interval::from_secs(15);
    config.jobs.maintenance_every = Interval::from_secs(300);
    config.jobs.gate_wait = Interval::from_secs(5);
    config.tables.push(TableSpec {
        name: DEMO_TABLE.into(),
        time_column: "time".into(),
        chunk_interval,
        premake: lakets_core::chronotable::DEFAULT_PREMAKE,
        lvc: Some(LvcSpec {
            key: vec!["symbol".into()],
            columns: vec!["price".into(), "volume".into()],
        }),
        sync: Some(SyncSpec {
            to: delta_dir.display().to_string(),
            partition_by: "day".into(),
            source: None,
            change_data_feed: false,
            deletion_vectors: false,
        }),
        policy: Some(PolicySpec {
            tier_after: Some(tier_after),
            drop_after: Some(drop_after),
        }),
    });
    for (name, source, bucket) in [
        ("ohlcv_1min", DEMO_TABLE, Interval::from_secs(60)),
        ("ohlcv_1hour", "ohlcv_1min", Interval::hours(1)),
        ("ohlcv_1day", "ohlcv_1hour", Interval::days(1)),
    ] {
        config.rollups.push(RollupSpec {
            name: name.into(),
            source: source.into(),
            bucket,
            group_by: vec!["symbol".into()],
            aggregate: "ohlcv(price, volume)".into(),
            refresh_lag: Interval::ZERO,
        });
    }
    config
}

/// Every ten seconds: rows, lag, chunks by status, rollup watermarks.
async fn report_progress(
    client: &Client,
    state: &lakets_server::service::ServiceState,
) -> Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        let live = state.status.lock().unwrap().clone();
        let s = lakets_server::status::collect(client, &state.slot, Some(&live)).await?;
        let chunks = s
            .tables
            .iter()
            .find(|t| t.table == format!("public.{DEMO_TABLE}"))
            .map(|t| {
                t.chunks
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let rollups = s
            .rollups
            .iter()
            .map(|r| format!("{} at {}", r.name, r.watermark.as_deref().unwrap_or("-")))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{} changes streamed; lag {:.1} s; chunks: {chunks}; LVC keys: {}; rollups: {rollups}",
            live.changes,
            live.lag_seconds,
            state
                .lvc
                .all(&crate::ident::TableName::new("public", DEMO_TABLE))
                .len()
        );
    }
}

async fn prepare_stock_ticks(client: &mut Client, history_hours: i32, symbols: u32) -> Result<()> {
    let table = crate::ident::TableName::new("public", DEMO_TABLE);
    if registry::get_chronotable(&*client, &table).await?.is_some() {
        println!("{DEMO_TABLE} already exists as a ChronoTable; reusing it.");
        return Ok(());
    }
    client
        .batch_execute(crate::ingest::TICKS_DDL)
        .await
        .pg_context(|| "creating stock_ticks".into())?;
    // A sinusoidal intraday path per symbol plus noise, one tick per symbol per second.
    let rows = client
        .execute(
            "INSERT INTO public.stock_ticks (time, symbol, price, volume)
             SELECT t, s.symbol,
                    round((s.base_price * (1 + 0.02 * sin(2 * pi() * extract(epoch FROM t) / 86400 + s.phase))
                           + random() - 0.5)::numeric, 2)::float8,
                    (100 + random() * 900)::bigint
               FROM generate_series(now() - make_interval(hours => $1), now(), interval '1 second') t,
                    (SELECT symbol, base_price, phase FROM public.stock_assets ORDER BY symbol LIMIT $2) s",
            &[&history_hours, &(symbols as i64)],
        )
        .await
        .pg_context(|| "writing synthetic history".into())?;
    println!("Wrote {rows} ticks of synthetic history ({history_hours} h).");
    let mut options = CreateOptions::new("time");
    options.chunk_interval = Interval::hours(1);
    let report = chronotable::create_chronotable(client, DEMO_TABLE, &options).await?;
    println!(
        "Converted {DEMO_TABLE} into a ChronoTable: {} rows in {} chunks of {}.",
        report.rows_copied,
        report.chunks.len(),
        report.chunk_interval
    );
    Ok(())
}
