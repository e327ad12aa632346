//! Managing chunks and ChronoTables: `show_chunks`, `set_chunk_interval`, `drop_chunks`,
//! `drop_chronotable`.

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient};
use tracing::{info, warn};

use super::bounds;
use super::partitions::{self, ddl_transaction, lock_table_ddl};
use crate::catalog::announce::{Announcement, announce};
use crate::catalog::lvc_registry;
use crate::catalog::registry::{self, Chunk, ChunkStatus};
use crate::error::{PgResultExt, Result};
use crate::ident::TableName;
use crate::interval::Interval;

/// `show_chunks`: the chunks of a ChronoTable with their range, status, row count and size.
/// Row counts and sizes of chunks that still exist are measured now (an exact count) and
/// stored in `lakets._chunk_metadata`; dropped chunks keep the figures recorded at the drop.
pub async fn show_chunks(
    client: &mut Client,
    table: &str,
    include_dropped: bool,
) -> Result<Vec<Chunk>> {
    crate::catalog::check_installed(&*client).await?;
    let ct = registry::find_chronotable(&*client, table).await?;
    let mut chunks = registry::list_chunks(&*client, &ct.table, include_dropped).await?;
    for chunk in chunks
        .iter_mut()
        .filter(|c| c.status != ChunkStatus::Dropped)
    {
        if let Some((rows, bytes)) = measure_chunk(&*client, &chunk.chunk_table()).await? {
            registry::update_chunk_stats(&*client, &chunk.chunk_table(), rows, bytes).await?;
            chunk.row_count = Some(rows);
            chunk.size_bytes = Some(bytes);
        }
    }
    Ok(chunks)
}

/// Exact row count and total size (with indexes and TOAST), or `None` when the chunk's
/// table no longer exists (dropped outside lakets).
async fn measure_chunk(
    client: &impl GenericClient,
    chunk: &TableName,
) -> Result<Option<(i64, i64)>> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&chunk.quoted()])
        .await
        .pg_context(|| format!("looking up chunk {chunk}"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {0}), pg_total_relation_size($1::text::regclass)",
                chunk.quoted()
            ),
            &[&chunk.quoted()],
        )
        .await
        .pg_context(|| format!("measuring chunk {chunk}"))?;
    Ok(Some((row.get(0), row.get(1))))
}

/// `set_chunk_interval`: changes the interval of chunks created from now on. Existing
/// chunks (including pre-created future ones) keep their bounds; the next new chunk starts
/// where the last one ends and runs to the next boundary of the new interval.
pub async fn set_chunk_interval(
    client: &mut Client,
    table: &str,
    interval: Interval,
) -> Result<()> {
    crate::catalog::check_installed(&*client).await?;
    let ct = registry::find_chronotable(&*client, table).await?;
    bounds::validate_chunk_interval(interval, ct.time_type)?;
    let tx = client
        .transaction()
        .await
        .pg_context(|| "starting a transaction".into())?;
    lock_table_ddl(&tx, &ct.table).await?;
    registry::set_chunk_interval(&tx, &ct.table, interval).await?;
    tx.commit()
        .await
        .pg_context(|| "committing the interval change".into())?;
    info!(table = %ct.table, %interval, "chunk interval changed for future chunks");
    Ok(())
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DropReport {
    pub dropped: Vec<String>,
    /// Chunks that could not be dropped this time, with the reason (they stay active).
    pub deferred: Vec<(String, String)>,
}

/// `drop_chunks`: drops chunks whose whole range is older than `older_than` (relative to
/// `at`, default the database clock), one transaction per chunk. The metadata row stays,
/// with status `dropped` and the row count and size the chunk had.
///
/// A synced table's chunks hold data that must first be safe in the cold tier: each goes
/// through the durability gate (see [`crate::lifecycle::gate`]) and is deferred, with the
/// reason, when it is not.
pub async fn drop_chunks(
    db: &crate::db::DbConfig,
    table: &str,
    older_than: Interval,
    at: Option<DateTime<Utc>>,
) -> Result<DropReport> {
    let mut client = crate::db::connect_with(db).await?;
    let client = &mut client;
    crate::catalog::check_installed(&*client).await?;
    let ct = registry::find_chronotable(&*client, table).await?;
    let now = partitions::now_or_db(&*client, at).await?;
    let cutoff = bounds::to_datetime(now - older_than.as_micros())?;
    let candidates: Vec<Chunk> = registry::list_chunks(&*client, &ct.table, false)
        .await?
        .into_iter()
        .filter(|c| c.range_end <= cutoff)
        .collect();

    // Gate on the registry too: a sync being set up (or half-activated) counts.
    let synced = ct.sync_enabled
        || crate::coldtier::sync::find_sync(&*client, &ct.table)
            .await?
            .is_some();
    if synced {
        let moved = crate::lifecycle::drop_chunks_gated(
            db,
            &ct.table,
            candidates,
            false,
            false,
            crate::lifecycle::GateSettings::default(),
        )
        .await?;
        return Ok(DropReport {
            dropped: moved.moved,
            deferred: moved.deferred,
        });
    }
    let mut report = DropReport::default();
    for chunk in candidates {
        match drop_one_chunk(client, &ct.table, &chunk).await {
            Ok(()) => report.dropped.push(chunk.chunk_name.clone()),
            Err(e) => {
                warn!(chunk = %chunk.chunk_name, error = %e, "chunk not dropped");
                report
                    .deferred
                    .push((chunk.chunk_name.clone(), e.to_string()));
            }
        }
    }
    if !report.dropped.is_empty() {
        info!(table = %ct.table, dropped = report.dropped.len(), "dropped chunks");
    }
    Ok(report)
}

async fn drop_one_chunk(client: &mut Client, table: &TableName, chunk: &Chunk) -> Result<()> {
    let tx = ddl_transaction(client, table).await?;
    let target = chunk.chunk_table();
    let measured = measure_chunk(&tx, &target).await?;
    if measured.is_some() {
        tx.batch_execute(&format!("DROP TABLE {}", target.quoted()))
            .await
            .pg_context(|| format!("dropping chunk {target}"))?;
    } else {
        warn!(chunk = %target, "chunk table was already gone (dropped outside lakets); recording it as dropped");
    }
    registry::mark_chunk_dropped(&tx, &target, measured.map(|m| m.0), measured.map(|m| m.1))
        .await?;
    tx.commit()
        .await
        .pg_context(|| format!("committing the drop of {target}"))
}

/// `drop_chronotable`: removes everything lakets registered for the table, then the table
/// with all its chunks, in one transaction. Objects that depend on the table but were not
/// created by lakets (views, say) make it fail with PostgreSQL's explanation, unchanged.
pub async fn drop_chronotable(client: &mut Client, table: &str) -> Result<TableName> {
    crate::catalog::check_installed(&*client).await?;
    let ct = registry::find_chronotable(&*client, table).await?;
    let tx = ddl_transaction(client, &ct.table).await?;
    // What later features created for the table goes first: rollups (readers first), then
    // the Last Value Cache.
    crate::rollup::drop_rollups_of(&tx, &ct.table).await?;
    if let Some(cache) = lvc_registry::cache_table_of(&tx, &ct.table).await? {
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", cache.quoted()))
            .await
            .pg_context(|| format!("dropping the Last Value Cache of {}", ct.table))?;
        announce(
            &tx,
            &Announcement::LvcDisabled {
                table: ct.table.clone(),
            },
        )
        .await?;
    }
    if crate::coldtier::sync::find_sync(&tx, &ct.table)
        .await?
        .is_some()
    {
        announce(
            &tx,
            &Announcement::SyncDisabled {
                table: ct.table.clone(),
            },
        )
        .await?;
    }
    // _chunk_metadata and _lvc_registry rows go with the registry row (ON DELETE CASCADE).
    registry::unregister_chronotable(&tx, &ct.table).await?;
    let exists: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&ct.table.quoted()])
        .await
        .pg_context(|| format!("looking up {}", ct.table))?
        .get(0);
    if exists {
        tx.batch_execute(&format!("DROP TABLE {}", ct.table.quoted()))
            .await
            .pg_context(|| format!("dropping {}", ct.table))?;
    }
    tx.commit()
        .await
        .pg_context(|| format!("committing the drop of {}", ct.table))?;
    info!(table = %ct.table, "dropped ChronoTable");
    Ok(ct.table)
}
