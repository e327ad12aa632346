//! `lakets bench`: end-to-end measurements on an embedded PostgreSQL, each figure measured
//! against a baseline or a target in the same run.

pub mod catchup;
pub mod freshness;
pub mod gate;
pub mod rollup;

pub use catchup::{CatchupOptions, CatchupReport, catchup, catchup_table};
pub use freshness::{FreshnessOptions, FreshnessReport, freshness, freshness_table};
pub use gate::{GateReport, gate, gate_table};
pub use rollup::{RollupBenchOptions, RollupBenchReport, rollup_bench, rollup_bench_table};

use crate::chronotable::{self, CreateOptions};
use crate::embedded::{EmbeddedOptions, EmbeddedPostgres};
use crate::error::{Error, PgResultExt, Result};
use crate::interval::Interval;

/// An embedded PostgreSQL with database `lakets_bench` holding `stock_ticks` as a
/// ChronoTable with one-hour chunks (with `history_hours_ago`, an hour of ticks that many
/// hours back, in chunks of their own), and a connection to it.
pub(crate) async fn stock_ticks_database(
    history_hours_ago: Option<i32>,
) -> Result<(EmbeddedPostgres, String, tokio_postgres::Client)> {
    let pg = tokio::task::spawn_blocking(|| EmbeddedPostgres::start(EmbeddedOptions::default()))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))??;
    let url = pg.create_database("lakets_bench").await?;
    let mut client = crate::db::connect(&url).await?;
    crate::catalog::migrate(&mut client).await?;
    client
        .batch_execute(
            "CREATE TABLE stock_ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                                       price double precision NOT NULL, volume bigint NOT NULL)",
        )
        .await
        .pg_context(|| "creating stock_ticks".into())?;
    if let Some(hours) = history_hours_ago {
        client
            .execute(
                "INSERT INTO stock_ticks
                 SELECT now() - make_interval(hours => $1) + g * interval '1 second', 'AAPL', 100, 1
                   FROM generate_series(1, 3600) g",
                &[&hours],
            )
            .await
            .pg_context(|| "writing history".into())?;
    }
    let mut create = CreateOptions::new("time");
    create.chunk_interval = Interval::hours(1);
    chronotable::create_chronotable(&mut client, "stock_ticks", &create).await?;
    Ok((pg, url, client))
}

/// Syncs `stock_ticks` to a Delta table in a temporary directory (kept while the returned
/// guard lives).
pub(crate) async fn sync_stock_ticks(db: &tokio_postgres::Config) -> Result<tempfile::TempDir> {
    let lake = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    crate::sync::enable_sync(
        db,
        "stock_ticks",
        &lake.path().join("stock_ticks").display().to_string(),
        crate::delta::schema::Partitioning::Day,
        |_| {},
    )
    .await?;
    Ok(lake)
}
