//! `lakets demo`: the spec's stock-tick demo with no setup.
//!
//! Today it covers what exists: an embedded PostgreSQL (unless `--database-url` is given),
//! the `lakets` schema, `stock_ticks` as a ChronoTable with one-hour chunks and a few hours
//! of synthetic history, its Last Value Cache, the OHLCV rollup DAG (1 minute -> 1 hour ->
//! 1 day) refreshed every few seconds, its Delta Lake mirror under the data directory, the
//! WAL pipeline feeding them, a live trickle of ticks and the partition manager keeping
//! chunks ahead of the clock. Tiering policies join it with the config of `lakets run`.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::Client;

use crate::catalog::{self, registry};
use crate::chronotable::{self, CreateOptions};
use crate::embedded::{EmbeddedOptions, EmbeddedPostgres};
use crate::error::{Error, PgResultExt, Result};
use crate::interval::Interval;

pub const DEMO_TABLE: &str = "stock_ticks";
const SYMBOLS: &[&str] = &[
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "JPM", "V", "XOM",
];

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub duration: Option<Duration>,
    /// Hours of synthetic history written before the table is converted.
    pub history_hours: i32,
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
    prepare_stock_ticks(&mut client, options.history_hours).await?;

    let db = crate::db::parse_config(&url)?;
    let table = crate::ident::TableName::new("public", DEMO_TABLE);
    if !crate::lvc::list_lvc(&client)
        .await?
        .iter()
        .any(|c| c.table == table)
    {
        crate::lvc::enable_lvc(
            &mut client,
            DEMO_TABLE,
            &["symbol".to_string()],
            &["price".to_string(), "volume".to_string()],
        )
        .await?;
        println!("Last Value Cache: lakets.lvc_{DEMO_TABLE} (latest price per symbol).");
    }
    create_demo_rollups(&mut client).await?;
    let data_dir = std::path::absolute(&options.data_dir)
        .map_err(|e| Error::io("resolving the data directory", e))?;
    let delta_dir = data_dir.join("delta").join(DEMO_TABLE);
    let sync = match crate::sync::find_sync(&client, &table).await? {
        Some(s) if s.state == crate::sync::SyncState::Active => s,
        _ => {
            // A throwaway cluster starts empty: a Delta table left by an earlier run belongs
            // to a database that no longer exists.
            if embedded.is_some() && delta_dir.exists() {
                println!(
                    "Removing the Delta table of an earlier demo run at {}.",
                    delta_dir.display()
                );
                std::fs::remove_dir_all(&delta_dir)
                    .map_err(|e| Error::io(format!("removing {}", delta_dir.display()), e))?;
            }
            println!(
                "Copying {DEMO_TABLE} into the Delta table at {}...",
                delta_dir.display()
            );
            crate::sync::enable_sync(
                &db,
                DEMO_TABLE,
                &delta_dir.display().to_string(),
                crate::delta::schema::Partitioning::Day,
                |p| println!("  copied {} rows", p.rows),
            )
            .await?
        }
    };

    // The WAL pipeline: chunk tracker, Last Value Cache and Delta mirror.
    let slot = crate::wal::setup::default_slot_name(db.get_dbname().unwrap_or("postgres"));
    let config = crate::wal::PipelineConfig::new(crate::wal::SourceSettings::new(
        &slot,
        crate::wal::setup::DEFAULT_PUBLICATION,
    ));
    let status = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let stop_pipeline = tokio_util::sync::CancellationToken::new();
    let pipeline = {
        let (db, status, stop) = (db.clone(), status.clone(), stop_pipeline.clone());
        tokio::spawn(async move {
            crate::wal::run_with_restarts(
                || crate::service::standard_pipeline(&db, config.clone(), status.clone()),
                stop,
            )
            .await
        })
    };

    // Prometheus metrics on a free local port.
    let (metrics_addr, metrics_task) = crate::http::serve(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        stop_pipeline.clone(),
    )
    .await?;

    let chunks = chronotable::show_chunks(&mut client, DEMO_TABLE, false).await?;
    println!(
        "\n{DEMO_TABLE} is a ChronoTable with {} chunks:",
        chunks.len()
    );
    print!("{}", crate::report::chunks_table(&chunks));
    println!("\nConnect with:   psql '{url}'");
    println!("Data directory: {}", data_dir.display());
    println!(
        "Delta table:    {} (read it with Spark, Databricks, DuckDB's delta_scan, ...)",
        crate::delta::table::display_location(&sync.location)
    );
    println!("Latest prices:  SELECT * FROM lakets.lvc_{DEMO_TABLE};");
    println!(
        "Candles:        SELECT * FROM ohlcv_1min_realtime ORDER BY bucket DESC LIMIT 10; \
         (also ohlcv_1hour, ohlcv_1day; `lakets rollup show`)"
    );
    println!("Metrics:        http://{metrics_addr}/metrics (lakets_replication_lag_seconds, ...)");
    println!(
        "Streaming ticks for {} symbols; Ctrl-C to stop.\n",
        SYMBOLS.len()
    );

    let sleep = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = live_ticks(&mut client, &status) => result?,
        _ = shutdown => println!("\nStopping."),
        _ = sleep => println!("\nDuration reached; stopping."),
    }
    // Flush and acknowledge what the operators hold, then stop.
    stop_pipeline.cancel();
    match pipeline.await {
        Ok(result) => result?,
        Err(e) => return Err(Error::Operator(format!("the demo pipeline panicked: {e}"))),
    }
    if let Ok(Err(e)) = metrics_task.await {
        tracing::warn!(error = %e, "the metrics endpoint failed");
    }
    drop(client);
    drop(embedded);
    Ok(())
}

/// The spec's three candle levels, each read from the one below it.
async fn create_demo_rollups(client: &mut Client) -> Result<()> {
    let existing: Vec<String> = crate::rollup::list_rollups(&*client)
        .await?
        .into_iter()
        .map(|r| r.name)
        .collect();
    for (name, source, bucket) in [
        ("ohlcv_1min", DEMO_TABLE, Interval::from_secs(60)),
        ("ohlcv_1hour", "ohlcv_1min", Interval::hours(1)),
        ("ohlcv_1day", "ohlcv_1hour", Interval::days(1)),
    ] {
        if existing.iter().any(|e| e == name) {
            continue;
        }
        crate::rollup::create_rollup(
            client,
            &crate::rollup::CreateRollup {
                name: name.into(),
                source: source.into(),
                bucket,
                group_by: vec!["symbol".into()],
                aggregate: "ohlcv(price, volume)".into(),
                refresh_lag: Interval::ZERO,
            },
        )
        .await?;
        println!("Rollup {name} <- {source} ({bucket} candles per symbol).");
    }
    Ok(())
}

async fn prepare_stock_ticks(client: &mut Client, history_hours: i32) -> Result<()> {
    let table = crate::ident::TableName::new("public", DEMO_TABLE);
    if registry::get_chronotable(&*client, &table).await?.is_some() {
        println!("{DEMO_TABLE} already exists as a ChronoTable; reusing it.");
        return Ok(());
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS stock_ticks (
                 time   timestamptz      NOT NULL,
                 symbol text             NOT NULL,
                 price  double precision NOT NULL,
                 volume bigint           NOT NULL
             )",
        )
        .await
        .pg_context(|| "creating stock_ticks".into())?;
    // A sinusoidal intraday path per symbol plus noise, one tick per symbol per second.
    let rows = client
        .execute(
            "INSERT INTO stock_ticks (time, symbol, price, volume)
             SELECT t, s.symbol,
                    round((s.base * (1 + 0.02 * sin(extract(epoch FROM t) / 3600.0 + s.phase))
                           + random() - 0.5)::numeric, 2)::float8,
                    (100 + random() * 900)::bigint
               FROM generate_series(now() - make_interval(hours => $1), now(), interval '1 second') t,
                    (SELECT sym AS symbol, 50 + 20 * ord AS base, ord AS phase
                       FROM unnest($2::text[]) WITH ORDINALITY u(sym, ord)) s",
            &[&history_hours, &SYMBOLS],
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

/// One tick per symbol per second, the rollup cascade every 5 seconds and the partition
/// manager every 30 seconds.
async fn live_ticks(
    client: &mut Client,
    status: &std::sync::Mutex<crate::wal::PipelineStatus>,
) -> Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut total: u64 = 0;
    for second in 0u64.. {
        tick.tick().await;
        total += client
            .execute(
                "INSERT INTO stock_ticks (time, symbol, price, volume)
                 SELECT now(), sym, round((60 + 20 * ord + random())::numeric, 2)::float8,
                        (100 + random() * 900)::bigint
                   FROM unnest($1::text[]) WITH ORDINALITY u(sym, ord)",
                &[&SYMBOLS],
            )
            .await
            .pg_context(|| "inserting live ticks".into())?;
        if second % 30 == 0 {
            for report in chronotable::ensure_partitions(client, Some(DEMO_TABLE), None).await? {
                if !report.created.is_empty() {
                    println!("partition manager: created {}", report.created.join(", "));
                }
            }
        }
        if second % 5 == 0 {
            let reports = crate::rollup::refresh::refresh(client, None, true, false).await?;
            if second % 10 == 0 {
                println!(
                    "rollup cascade: {}",
                    reports
                        .iter()
                        .map(|r| format!(
                            "{} up to {} ({} invalidations re-aggregated)",
                            r.rollup,
                            r.watermark_after.as_deref().unwrap_or("-"),
                            r.invalidations_consumed
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
        }
        if second % 10 == 0 {
            let st = status.lock().unwrap().clone();
            println!(
                "{total} live ticks inserted; replication lag {:.1} s ({}); operators durable at {}",
                st.lag_seconds,
                crate::report::human_bytes(st.lag_bytes as i64),
                st.operators
                    .iter()
                    .map(|(name, lsn)| format!("{name} {lsn}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}
