//! The tools outside the production service: `lakets bench` (end-to-end measurements on an
//! embedded PostgreSQL, each figure measured against a baseline or a target in the same
//! run), `lakets demo` ([`demo`]) and `lakets ingest` ([`ingest`]).

mod affinity;
pub mod catchup;
mod cpu;
pub mod demo;
pub mod fanin;
pub mod freshness;
pub mod gate;
pub mod ingest;
pub mod memory;
pub mod mutations;
mod recvlogical;
pub mod rollup;
pub mod snapshot;
pub mod soak;
pub mod suite;
pub mod sustained;
pub mod write_path;
mod writers;

pub use catchup::{CatchupOptions, CatchupReport, catchup, catchup_table};
pub use fanin::{FaninOptions, FaninReport, fanin, fanin_table};
pub use freshness::{FreshnessOptions, FreshnessReport, freshness, freshness_table};
pub use gate::{GateReport, gate, gate_table};
pub use mutations::{MutationsOptions, MutationsReport, mutations, mutations_table};
pub use rollup::{RollupBenchOptions, RollupBenchReport, rollup_bench, rollup_bench_table};
pub use snapshot::{SnapshotOptions, SnapshotReport, snapshot, snapshot_table};
pub use soak::{SoakOptions, SoakReport, soak, soak_table};
pub use suite::{SuiteOptions, SuiteReport, suite, suite_table};
pub use write_path::{WritePathOptions, WritePathReport, write_path, write_path_table};

use crate::error::{Error, PgResultExt, Result};
use lakets_core::chronotable::{self, CreateOptions};
use lakets_testkit::embedded::{EmbeddedOptions, EmbeddedPostgres};

// The layers below, under the names this crate's modules use.
use crate::interval::Interval;
use lakets_core::{db, delta, error, ident, interval, wal};

/// Runs a benchmark's writers on a thread and runtime of their own (pinned to `pin`, when
/// given), as separate applications would be. On the pipeline's runtime a writer woken by
/// its commit waits behind the pipeline's work: measured, that halved the writers' rate
/// with the service on, a cost of the benchmark, not of the design.
pub(crate) async fn on_writer_thread<T, F>(pin: Option<affinity::CpuSet>, writers: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-writers".into())
        .spawn(move || {
            let run = || {
                if let Some(cpus) = &pin {
                    cpus.pin(0)?; // this thread
                }
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Operator(format!("starting the writers' runtime: {e}")))?
                    .block_on(writers)
            };
            let _ = done.send(run());
        })
        .map_err(|e| Error::Operator(format!("starting the writers' thread: {e}")))?;
    result
        .await
        .map_err(|_| Error::Operator("the writers' thread panicked".into()))?
}

/// Rows `stock_ticks` holds before it converts to a ChronoTable (they land in chunks of
/// their own, as a table a user brings would).
#[derive(Debug, Clone, Copy)]
pub(crate) enum History {
    None,
    /// An hour of ticks, one a second, this many hours back.
    HourAgo(i32),
    /// This many ticks spread over the day before now, over 100 symbols.
    LastDay(u64),
}

/// An embedded PostgreSQL with database `lakets_bench` holding `stock_ticks` as a
/// ChronoTable with one-hour chunks (after `history` was written), and a connection to it.
pub(crate) async fn stock_ticks_database(
    history: History,
) -> Result<(EmbeddedPostgres, String, tokio_postgres::Client)> {
    let pg = tokio::task::spawn_blocking(|| EmbeddedPostgres::start(EmbeddedOptions::default()))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))??;
    let url = pg.create_database("lakets_bench").await?;
    let mut client = crate::db::connect_as_application(&url).await?;
    lakets_core::catalog::migrate(&mut client).await?;
    client
        .batch_execute(
            "CREATE TABLE stock_ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                                       price double precision NOT NULL, volume bigint NOT NULL)",
        )
        .await
        .pg_context(|| "creating stock_ticks".into())?;
    match history {
        History::None => {}
        History::HourAgo(hours) => {
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
        History::LastDay(rows) => {
            client
                .execute(
                    "INSERT INTO stock_ticks
                     SELECT now() - (g * 86400.0 / $1::bigint) * interval '1 second',
                            'S' || (g % 100), 100 + (g % 1000) / 7.0, g
                       FROM generate_series(1, $1::bigint) g",
                    &[&(rows as i64)],
                )
                .await
                .pg_context(|| "writing history".into())?;
        }
    }
    let mut create = CreateOptions::new("time");
    create.chunk_interval = Interval::hours(1);
    chronotable::create_chronotable(&mut client, "stock_ticks", &create).await?;
    Ok((pg, url, client))
}

/// Syncs `stock_ticks` to a Delta table in a temporary directory (kept while the returned
/// guard lives).
pub(crate) async fn sync_stock_ticks(db: &crate::db::DbConfig) -> Result<tempfile::TempDir> {
    let lake = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    lakets_core::coldtier::sync::enable_sync(
        db,
        "stock_ticks",
        &lake.path().join("stock_ticks").display().to_string(),
        crate::delta::schema::Partitioning::Day,
        |_| {},
    )
    .await?;
    Ok(lake)
}

/// Gives `stock_ticks` every operator of the service: a Last Value Cache per symbol, a
/// one-minute OHLCV rollup (for the invalidation operator) and a Delta mirror in a
/// temporary directory (kept while the returned guard lives). The service's default slot,
/// made by enable_sync, is dropped: the benchmarks stream from slots of their own.
pub(crate) async fn attach_operators(
    client: &mut tokio_postgres::Client,
    db: &crate::db::DbConfig,
) -> Result<tempfile::TempDir> {
    lakets_core::lvc::enable_lvc(
        client,
        "stock_ticks",
        &["symbol".into()],
        &["price".into(), "volume".into()],
    )
    .await?;
    lakets_core::rollup::create_rollup(
        client,
        &lakets_core::rollup::CreateRollup {
            name: "ohlcv_1min".into(),
            source: "stock_ticks".into(),
            bucket: Interval::from_secs(60),
            group_by: vec!["symbol".into()],
            aggregate: "ohlcv(price, volume)".into(),
            refresh_lag: Interval::ZERO,
        },
    )
    .await?;
    let lake = sync_stock_ticks(db).await?;
    lakets_core::catalog::replication::ensure_publication(&*client, "lakets").await?;
    let default_slot = crate::wal::slot::default_slot_name("lakets_bench");
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = $1",
            &[&default_slot],
        )
        .await
        .pg_context(|| format!("dropping slot {default_slot}"))?;
    Ok(lake)
}

/// Settles a freshly written backlog (the insert-triggered autovacuum and the next
/// checkpoint would otherwise slow whichever consumer runs first).
pub(crate) async fn settle_backlog(client: &tokio_postgres::Client) -> Result<()> {
    for statement in ["VACUUM (ANALYZE) stock_ticks", "CHECKPOINT"] {
        client
            .batch_execute(statement)
            .await
            .pg_context(|| format!("settling the backlog ({statement})"))?;
    }
    Ok(())
}

/// Creates a pgoutput slot at the current WAL position.
pub(crate) async fn create_slot(client: &tokio_postgres::Client, slot: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .pg_context(|| format!("creating slot {slot}"))?;
    Ok(())
}

/// Drops a slot, waiting (up to 10 s) for the walsender of a consumer that just
/// disconnected to let it go.
pub(crate) async fn drop_slot(client: &tokio_postgres::Client, slot: &str) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => {
                // A throwaway slot: its operators' progress goes with it (a slot that
                // vanished with progress stored would read as a gap in the stream).
                return lakets_core::catalog::progress::forget_slot(client, slot).await;
            }
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && started.elapsed() < std::time::Duration::from_secs(10) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).pg_context(|| format!("dropping slot {slot}")),
        }
    }
}

/// Writes a logical message and returns its position: a consumer that acknowledged it has
/// stored everything written before.
pub(crate) async fn end_marker(client: &tokio_postgres::Client) -> Result<crate::wal::lsn::Lsn> {
    let lsn: String = client
        .query_one(
            "SELECT pg_logical_emit_message(false, 'lakets_bench_end', '')::text",
            &[],
        )
        .await
        .pg_context(|| "writing the end marker".into())?
        .get(0);
    lsn.parse()
}

/// The service's pipeline (chunk tracker, LVC, invalidations, Delta) on `slot`, running
/// until `stop`; its status is shared.
pub(crate) fn spawn_service_pipeline(
    db: &crate::db::DbConfig,
    slot: &str,
    binary: bool,
    flush_interval: std::time::Duration,
    view: Option<std::sync::Arc<lakets_core::lvc::view::LvcView>>,
    stop: tokio_util::sync::CancellationToken,
) -> (
    std::sync::Arc<std::sync::Mutex<crate::wal::PipelineStatus>>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let mut source = crate::wal::SourceSettings::new(slot, "lakets");
    source.binary = binary;
    let mut config = crate::wal::PipelineConfig::new(source);
    config.flush_interval = flush_interval;
    // The status (which the benchmarks poll) is refreshed with every acknowledgement.
    config.ack_interval = std::time::Duration::from_millis(5);
    let status: std::sync::Arc<std::sync::Mutex<crate::wal::PipelineStatus>> =
        std::sync::Arc::default();
    let task = {
        let (db, status) = (db.clone(), status.clone());
        tokio::spawn(async move {
            crate::wal::run_with_restarts(
                || {
                    lakets_server::service::standard_pipeline(
                        &db,
                        config.clone(),
                        status.clone(),
                        view.clone(),
                    )
                },
                stop,
            )
            .await
        })
    };
    (status, task)
}

/// The walsender streaming from `slot` (None: no consumer holds it).
pub(crate) async fn slot_walsender(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<i32>> {
    Ok(client
        .query_one(
            "SELECT (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .pg_context(|| format!("finding the walsender of slot {slot}"))?
        .get(0))
}

/// The oldest position every operator has made durable (zero before the first report).
pub(crate) fn min_durable(status: &crate::wal::PipelineStatus) -> crate::wal::lsn::Lsn {
    status
        .operators
        .iter()
        .map(|(_, lsn)| *lsn)
        .min()
        .unwrap_or(crate::wal::lsn::Lsn::ZERO)
}

/// Waits until the pipeline acknowledged `end` (everything before it is durable in every
/// operator), or fails after `limit`.
pub(crate) async fn wait_acknowledged(
    status: &std::sync::Mutex<crate::wal::PipelineStatus>,
    task: &tokio::task::JoinHandle<Result<()>>,
    end: crate::wal::lsn::Lsn,
    limit: std::time::Duration,
) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        {
            let st = status.lock().unwrap();
            if st.acknowledged_lsn >= end {
                return Ok(());
            }
            if task.is_finished() || started.elapsed() > limit {
                return Err(Error::Operator(format!(
                    "the pipeline did not acknowledge {end} within {limit:?} (at {}, last error: {})",
                    st.acknowledged_lsn,
                    st.last_error.as_deref().unwrap_or("none")
                )));
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Stops a pipeline started by `spawn_service_pipeline` and returns its result.
pub(crate) async fn stop_pipeline(
    stop: &tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
) -> Result<()> {
    stop.cancel();
    task.await
        .map_err(|e| Error::Operator(format!("pipeline task: {e}")))?
}
