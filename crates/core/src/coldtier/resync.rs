//! `lakets resync`: closing a gap in the WAL stream.
//!
//! A gap opens when the slot is invalidated (`max_slot_wal_keep_size`) or dropped while
//! operators depended on it: the changes in between never reached them, so the Delta
//! tables, the caches and the rollups may be wrong anywhere in the hot chunks, and nothing
//! the stream says about those chunks can vouch for them (an UPDATE keeps the counts).
//! Until the gap is closed, streaming is refused and the gate defers every drop (see
//! [`crate::catalog::replication::refuse_if_gap`]).
//!
//! Resync, with the service stopped:
//! 1. drops the lost slot and creates a new one: the stream resumes from here;
//! 2. has each operator in [`crate::operators::COMPONENTS`] rebuild, in that order, the
//!    state a gap loses ([`crate::operators::Component::resync`]):
//!    - the Last Value Cache refills each cache from its table;
//!    - the rollup invalidations invalidate each rollup over a ChronoTable across the hot
//!      chunks' ranges: the next refresh recomputes them, and the rollups that read them;
//!    - the Delta mirror re-reads each synced table's hot rows from a snapshot that meets
//!      the new stream exactly (as `sync enable` does) and, in one Delta commit, replaces
//!      the rows of the hot chunks' ranges with them; the rows of dropped chunks, which
//!      only Delta holds, stay;
//! 3. clears the gap.
//!
//! Interrupted, it is simply run again: the gap stays recorded until the end, and every
//! step replaces rather than adds.

use tokio_postgres::Client;
use tracing::info;

use crate::catalog::replication::{self, GAP_RESYNCING, StreamGap};
use crate::catalog::sync_registry;
use crate::coldtier::snapshot;
use crate::coldtier::sync::{self, SYNC_LOCK_NAMESPACE, SyncConfig, SyncState};
use crate::db::DbConfig;
use crate::delta::mirror::TableMirror;
use crate::delta::table;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::wal::lsn::Lsn;
use crate::wal::slot::{self, DEFAULT_PUBLICATION};

#[derive(Debug, Default, serde::Serialize)]
pub struct ResyncReport {
    /// The gaps that were closed.
    pub gaps: Vec<StreamGap>,
    /// Slots created anew.
    pub slots_created: Vec<String>,
    pub tables: Vec<TableResync>,
    pub caches: Vec<CacheResync>,
    /// Rollups invalidated over the hot range.
    pub rollups: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct TableResync {
    pub table: String,
    /// Hot rows copied into Delta.
    pub rows: u64,
    /// The stream takes over after this position.
    pub start_lsn: Lsn,
    /// Time ranges of dropped chunks whose Delta rows were kept.
    pub kept_ranges: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct CacheResync {
    pub table: String,
    pub keys: u64,
    pub start_lsn: Lsn,
}

/// Runs the resync. Refuses while a consumer streams, and, without `force`, when no gap
/// is recorded and every slot is healthy.
pub async fn resync(db: &DbConfig, force: bool) -> Result<ResyncReport> {
    let mut client = crate::db::connect_with(db).await?;
    crate::catalog::check_installed(&client).await?;
    let slots = consumer_slots(&client).await?;
    for (slot, _) in &slots {
        if let Some(state) = slot::slot_state(&client, slot).await?
            && state.active
        {
            return Err(Error::Conflict(format!(
                "replication slot {slot} is in use (a `lakets run` streams from it); stop the \
                 service first: resync replaces what the stream writes"
            )));
        }
        replication::detect_gap(&client, slot).await?;
    }
    let gaps = replication::list_gaps(&client).await?;
    if gaps.is_empty() && !force {
        return Err(Error::Conflict(
            "nothing to resync: no gap in the WAL stream is recorded and every lakets slot is \
             healthy (see `lakets status`); pass --force to re-copy the hot data anyway"
                .into(),
        ));
    }
    // Streaming stays refused until the end, even when it started without a gap.
    replication::record_gap(&client, &slots[0].0, None, GAP_RESYNCING).await?;
    let mut report = ResyncReport {
        gaps,
        ..Default::default()
    };

    for (slot, publication) in &slots {
        if let Some(state) = slot::slot_state(&client, slot).await?
            && state.wal_status.as_deref() == Some("lost")
        {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await
                .pg_context(|| format!("dropping the invalidated slot {slot}"))?;
            info!(slot, "dropped the invalidated slot");
        }
        slot::preflight(&client, slot).await?;
        replication::ensure_publication(&client, publication).await?;
        if slot::ensure_slot(&client, slot).await? {
            report.slots_created.push(slot.clone());
        }
    }

    for component in crate::operators::COMPONENTS {
        component.resync(db, &mut client, &mut report).await?;
    }

    // Every table, cache and rollup was rebuilt, whichever slot's gap it was.
    replication::clear_gaps(&client).await?;
    info!(
        tables = report.tables.len(),
        caches = report.caches.len(),
        rollups = report.rollups.len(),
        "resync finished; the stream resumes from the new slot"
    );
    Ok(report)
}

/// The registered consumer slots and their publications (the default one when none is).
async fn consumer_slots(client: &Client) -> Result<Vec<(String, String)>> {
    let mut slots: Vec<(String, String)> = replication::list_consumers(client)
        .await?
        .into_iter()
        .map(|c| (c.slot_name, c.publication))
        .collect();
    if slots.is_empty() {
        let database: String = client
            .query_one("SELECT current_database()::text", &[])
            .await
            .pg_context(|| "reading the database name".into())?
            .get(0);
        slots.push((
            slot::default_slot_name(&database),
            DEFAULT_PUBLICATION.to_owned(),
        ));
    }
    Ok(slots)
}

/// The Delta mirror's part ([`crate::coldtier::sink::COMPONENT`]'s resync): replaces the
/// hot rows of every active sync's Delta table (an interrupted `sync enable` is left to
/// run again: it copies from scratch).
pub(crate) async fn resync_tables(
    db: &DbConfig,
    client: &Client,
    report: &mut ResyncReport,
) -> Result<()> {
    for config in sync::list_syncs(client).await? {
        if config.state != SyncState::Active {
            // An interrupted `sync enable`: running it again copies from scratch.
            continue;
        }
        report
            .tables
            .push(locked(client, &config.table, resync_table(db, client, &config)).await?);
    }
    Ok(())
}

/// Runs `work` holding the table's sync lock (the one `sync enable` takes).
async fn locked<T>(
    client: &Client,
    table: &TableName,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&SYNC_LOCK_NAMESPACE, &table.to_string()],
        )
        .await
        .pg_context(|| format!("waiting for another sync of {table} to finish"))?;
    let outcome = work.await;
    client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&SYNC_LOCK_NAMESPACE, &table.to_string()],
        )
        .await
        .pg_context(|| "releasing the sync lock".into())?;
    outcome
}

/// Replaces the Delta rows of the hot chunks' ranges with a snapshot of the table.
async fn resync_table(db: &DbConfig, client: &Client, config: &SyncConfig) -> Result<TableResync> {
    let delta = table::open(&config.location).await?.ok_or_else(|| {
        Error::NotReady(format!(
            "the Delta table of {} is missing at {}; `lakets sync disable {0}` and enable it \
             again",
            config.table,
            table::display_location(&config.location)
        ))
    })?;
    let shape = config.shape(&delta)?;
    let current = sync::postgres_shape(
        client,
        &config.table,
        &config.time_column,
        config.partitioning,
    )
    .await?;
    // Columns added while the stream was away join the Delta schema first.
    let added = snapshot::columns_to_add(&config.table, &shape, &current)?;
    let mut mirror = TableMirror::new(
        shape,
        delta,
        sync::snapshot_app_id(&config.table, config.source.as_deref()),
        Lsn::ZERO,
    );
    mirror.add_columns(added).await?;
    let keep = crate::catalog::registry::dropped_ranges(client, &config.table).await?;
    let kept_ranges = keep.len();
    mirror.truncate(keep).await?;
    let (start_lsn, rows) = snapshot::read_snapshot(
        db,
        client,
        &config.table,
        snapshot::DEFAULT_READERS,
        &mut |_| {},
        &mut mirror,
    )
    .await?;
    mirror.flush(start_lsn).await?;
    sync_registry::record_rows_copied(client, &config.table, rows as i64).await?;
    info!(table = %config.table, rows, start_lsn = %start_lsn, kept_ranges, "hot rows re-copied into Delta");
    Ok(TableResync {
        table: config.table.to_string(),
        rows,
        start_lsn,
        kept_ranges,
    })
}
