//! Syncing a ChronoTable to Delta Lake (spec: `enable_sync`): the registry, the table
//! creation and the initial snapshot.
//!
//! The snapshot meets the stream exactly: a second connection holds a SHARE lock on the
//! table for the instant it takes the (already connected) reader to start a REPEATABLE
//! READ transaction and read the WAL insert position. No writer is in flight at that instant, so every transaction
//! committed before the position is in the snapshot and every later one commits after it.
//! The lock is released at once; the copy then runs as long as it needs while writes
//! continue. The copy is committed to Delta as one version whose `txn` action records the
//! position, and the WAL operator skips the table's changes committed before it.

use std::time::{Duration, Instant};

use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::DeltaWriter;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, GenericClient, IsolationLevel};
use tracing::info;

use crate::catalog::announce::{Announcement, announce};
use crate::catalog::registry;
use crate::catalog::sync_registry;
pub use crate::catalog::sync_registry::{SyncConfig, SyncState, find_sync, list_syncs};
use crate::delta::batch::{CellRow, build_batch};
use crate::delta::mirror::shape_of;
use crate::delta::schema::{Cell, DataColumn, Partitioning, TableShape};
use crate::delta::table;
use crate::error::{DeltaResultExt, Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::wal::lsn::Lsn;
use crate::wal::value::{ColumnType, decode_text};

/// Advisory lock namespace held by `enable_sync` for the length of a copy (second key:
/// `hashtext` of the table name).
pub const SYNC_LOCK_NAMESPACE: i32 = 0x4c4b_5455;

/// The `txn` application id of the stream's commits to one table.
pub fn stream_app_id(slot: &str, table: &TableName) -> String {
    format!("lakets:{slot}:{table}")
}

/// The `txn` application id of the initial snapshot's commit.
pub fn snapshot_app_id(table: &TableName) -> String {
    format!("lakets:snapshot:{table}")
}

/// Progress of a long initial copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyProgress {
    pub rows: u64,
    pub estimate: Option<u64>,
}

/// `enable_sync`: creates the Delta table at `location`, copies the rows the table holds
/// now, and registers the sync so that the WAL operator mirrors every later change.
/// Running it again after an interruption resumes (the copy starts over; a half-written
/// copy was never committed).
pub async fn enable_sync(
    db: &crate::db::DbConfig,
    table: &str,
    location: &str,
    partitioning: Partitioning,
    mut progress: impl FnMut(CopyProgress),
) -> Result<SyncConfig> {
    let mut client = crate::db::connect_with(db).await?;
    crate::catalog::check_installed(&client).await?;
    let ct = registry::find_chronotable(&client, table).await?;
    let url = table::parse_location(location)?;
    let shape = postgres_shape(&client, &ct.table, &ct.time_column, partitioning).await?;
    crate::chronotable::replica_identity::require_chunks_match(
        &client,
        &ct.table,
        "the Delta mirror",
    )
    .await?;

    let existing = find_sync(&client, &ct.table).await?;
    if let Some(s) = &existing {
        if s.state == SyncState::Active {
            return Err(Error::Conflict(format!(
                "{} is already synced to {}",
                ct.table,
                table::display_location(&s.location)
            )));
        }
        if s.location != url || s.partitioning != partitioning {
            return Err(Error::Conflict(format!(
                "an interrupted sync of {} to {} (partitioned by {}) is pending; run the same \
                 command again to finish it, or `lakets sync disable {}` first",
                ct.table,
                table::display_location(&s.location),
                s.partitioning.as_str(),
                ct.table
            )));
        }
    }

    // One enable per table at a time; the WAL operator also reads this lock to tell a
    // running copy from an abandoned one.
    client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&SYNC_LOCK_NAMESPACE, &ct.table.to_string()],
        )
        .await
        .pg_context(|| format!("waiting for another sync of {} to finish", ct.table))?;

    let found = table::open(&url).await?;
    if let Some(t) = &found {
        let same =
            shape_of(t, &ct.time_column, partitioning).is_ok_and(|f| f.columns == shape.columns);
        if existing.is_none() || !same {
            return Err(Error::Conflict(format!(
                "a Delta table already exists at {}; sync into a new (empty) location",
                table::display_location(&url)
            )));
        }
    }

    // Every change after the snapshot must be held by a slot.
    crate::catalog::replication::ensure_default_consumer(&client).await?;
    {
        let tx = client
            .transaction()
            .await
            .pg_context(|| "starting a transaction".into())?;
        sync_registry::register_sync(&tx, &ct.table, &url, partitioning).await?;
        announce(
            &tx,
            &Announcement::SyncRegistered {
                table: ct.table.clone(),
                location: url.to_string(),
                partitioning: partitioning.as_str().to_owned(),
            },
        )
        .await?;
        tx.commit()
            .await
            .pg_context(|| format!("committing the sync of {}", ct.table))?;
    }
    let mut delta = match found {
        Some(t) => t,
        None => table::create(&url, &shape, &ct.table.to_string()).await?,
    };

    // A copy committed before an interruption of the registry update: just finish.
    let registered = find_sync(&client, &ct.table).await?;
    let committed = table::txn_lsn(&delta, &snapshot_app_id(&ct.table)).await?;
    if let (Some(done), Some(reg)) = (committed, registered.as_ref().and_then(|s| s.start_lsn))
        && done == reg
    {
        return activate(&mut client, &ct.table).await;
    }

    let (start_lsn, rows) =
        copy_snapshot(db, &client, &ct.table, &shape, &mut delta, &mut progress).await?;
    info!(table = %ct.table, rows, start_lsn = %start_lsn, location = %table::display_location(&url), "initial snapshot committed to Delta");
    let config = activate(&mut client, &ct.table).await?;
    client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&SYNC_LOCK_NAMESPACE, &ct.table.to_string()],
        )
        .await
        .pg_context(|| "releasing the sync lock".into())?;
    Ok(config)
}

async fn activate(client: &mut Client, table: &TableName) -> Result<SyncConfig> {
    let tx = client
        .transaction()
        .await
        .pg_context(|| "starting a transaction".into())?;
    sync_registry::activate_sync(&tx, table).await?;
    registry::set_sync_enabled(&tx, table, true).await?;
    announce(
        &tx,
        &Announcement::SyncActivated {
            table: table.clone(),
        },
    )
    .await?;
    tx.commit()
        .await
        .pg_context(|| format!("committing the activation of {table}"))?;
    find_sync(&*client, table)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "sync of",
            name: table.to_string(),
        })
}

/// The Delta shape of a PostgreSQL table's current columns.
pub async fn postgres_shape(
    client: &impl GenericClient,
    table: &TableName,
    time_column: &str,
    partitioning: Partitioning,
) -> Result<TableShape> {
    let rows = client
        .query(
            "SELECT attname::text, atttypid::oid, atttypmod, format_type(atttypid, atttypmod)
               FROM pg_attribute
              WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
            &[&table.quoted()],
        )
        .await
        .pg_context(|| format!("reading the columns of {table}"))?;
    let columns: Vec<(String, ColumnType, i32)> = rows
        .iter()
        .map(|r| (r.get(0), ColumnType::from_oid(r.get(1)), r.get(2)))
        .collect();
    TableShape::new(&columns, time_column, partitioning).map_err(|e| match e {
        Error::Unsupported(mut m) => {
            // Name the types as the user declared them, not by their oids.
            for ((name, ty, _), row) in columns.iter().zip(&rows) {
                let declared: String = row.get(3);
                m = m.replace(
                    &format!("{name} ({})", ty.name()),
                    &format!("{name} ({declared})"),
                );
            }
            Error::Unsupported(format!("cannot sync {table}: {m}"))
        }
        other => other,
    })
}

/// Rows per fetch from the snapshot cursor.
const FETCH_ROWS: i32 = 10_000;
/// Staged files are sealed every this many rows (bounds the writer's memory).
const SEAL_ROWS: u64 = 1_000_000;

async fn copy_snapshot(
    db: &crate::db::DbConfig,
    client: &Client,
    table_name: &TableName,
    shape: &TableShape,
    delta: &mut deltalake::DeltaTable,
    progress: &mut impl FnMut(CopyProgress),
) -> Result<(Lsn, u64)> {
    let mut shape = shape.clone();
    let mut attempts = 0;
    let (start_lsn, copied, adds) = loop {
        let mut writer = table::writer(delta)?;
        let mut adds = Vec::new();
        let mut since_seal: u64 = 0;
        let read = read_snapshot(
            db,
            client,
            table_name,
            &shape,
            progress,
            async |rows: Vec<CellRow>| {
                let refs: Vec<&CellRow> = rows.iter().collect();
                writer
                    .write(build_batch(&shape, &refs)?)
                    .await
                    .delta_context(|| "writing the initial snapshot".into())?;
                since_seal += rows.len() as u64;
                if since_seal >= SEAL_ROWS {
                    adds.extend(
                        writer
                            .flush()
                            .await
                            .delta_context(|| "writing the initial snapshot".into())?,
                    );
                    since_seal = 0;
                }
                Ok(())
            },
        )
        .await?;
        match read {
            SnapshotRead::Copied { start_lsn, rows } => {
                adds.extend(
                    writer
                        .flush()
                        .await
                        .delta_context(|| "writing the initial snapshot".into())?,
                );
                break (start_lsn, rows, adds);
            }
            SnapshotRead::ColumnsAdded(columns) => {
                attempts += 1;
                if attempts > MAX_SHAPE_RETRIES {
                    return Err(columns_keep_changing(table_name));
                }
                *delta = table::add_columns(delta, &columns).await?;
                shape.columns.extend(columns);
            }
        }
    };
    // The copy replaces whatever an interrupted earlier copy committed (the stream never
    // writes to a table whose copy is pending), so running `enable` again never doubles.
    let earlier = crate::delta::read::active_files(delta).await?;
    let actions = earlier
        .iter()
        .map(|v| deltalake::kernel::Action::Remove(v.remove_action(true)))
        .chain(adds.into_iter().map(deltalake::kernel::Action::Add))
        .collect();
    table::commit(
        delta,
        actions,
        DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: shape.partition_column.clone().map(|p| vec![p]),
            predicate: None,
        },
        Some((&snapshot_app_id(table_name), start_lsn)),
    )
    .await?;
    sync_registry::record_rows_copied(client, table_name, copied as i64).await?;
    Ok((start_lsn, copied))
}

/// What [`read_snapshot`] found.
pub(crate) enum SnapshotRead {
    /// Every row went to `each`: the snapshot's position and the number of rows.
    Copied { start_lsn: Lsn, rows: u64 },
    /// The table has columns `shape` lacks (an ADD COLUMN committed after the caller read
    /// the shape): nothing was read. The caller adds them to the Delta table and reads
    /// again, so that no copied row loses a value the stream would never send again.
    ColumnsAdded(Vec<DataColumn>),
}

/// Snapshot attempts that may each find new columns before the copy gives up.
pub(crate) const MAX_SHAPE_RETRIES: u32 = 3;

pub(crate) fn columns_keep_changing(table: &TableName) -> Error {
    Error::Conflict(format!(
        "the columns of {table} changed {MAX_SHAPE_RETRIES} times while the snapshot was \
         being taken; run the command again when the schema changes are done"
    ))
}

/// Reads every row of `table_name` as of a snapshot that meets the WAL stream exactly
/// (see the module docs), handing them to `each` in batches. The snapshot's position is
/// recorded as the sync's `start_lsn` while writers are held off. The table's columns
/// are checked against `shape` under the same lock, since that is the only moment no
/// ALTER TABLE can slip in between.
pub(crate) async fn read_snapshot(
    db: &crate::db::DbConfig,
    client: &Client,
    table_name: &TableName,
    shape: &TableShape,
    progress: &mut impl FnMut(CopyProgress),
    mut each: impl AsyncFnMut(Vec<CellRow>) -> Result<()>,
) -> Result<SnapshotRead> {
    // Both connections first: writers wait only while the snapshot is taken.
    let mut reader = crate::db::connect_with(db).await?;
    reader
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 3; \
             SET bytea_output = 'hex'",
        )
        .await
        .pg_context(|| "preparing the snapshot session".into())?;
    let locker = crate::db::connect_with(db).await?;
    locker
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '10s'; LOCK TABLE {} IN SHARE MODE",
            table_name.quoted()
        ))
        .await
        .pg_context(|| {
            format!("locking {table_name} briefly to take a snapshot consistent with the WAL")
        })?;
    let tx = reader
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .pg_context(|| "starting the snapshot transaction".into())?;
    let row = tx
        .query_one(
            "SELECT pg_current_wal_insert_lsn(),
                    (SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
                       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                      WHERE i.inhparent = $1::text::regclass)",
            &[&table_name.quoted()],
        )
        .await
        .pg_context(|| "taking the snapshot".into())?;
    let start_lsn = Lsn::from(row.get::<_, PgLsn>(0));
    let estimate: i64 = row.get(1);
    let time_column = &shape.columns[shape.time_index].name;
    let columns_now = postgres_shape(&tx, table_name, time_column, shape.partitioning).await?;
    let added = columns_to_add(table_name, shape, &columns_now)?;
    if !added.is_empty() {
        locker
            .batch_execute("ROLLBACK")
            .await
            .pg_context(|| format!("releasing the lock on {table_name}"))?;
        return Ok(SnapshotRead::ColumnsAdded(added));
    }
    sync_registry::record_snapshot(&locker, table_name, start_lsn, estimate).await?;
    announce(
        &locker,
        &Announcement::SyncSnapshot {
            table: table_name.clone(),
            start_lsn,
        },
    )
    .await?;
    locker
        .batch_execute("COMMIT")
        .await
        .pg_context(|| format!("releasing the lock on {table_name}"))?;

    let (select, types) = text_select(&tx, table_name, shape).await?;
    let portal = tx
        .bind(
            &format!("SELECT {select} FROM {}", table_name.quoted()),
            &[],
        )
        .await
        .pg_context(|| format!("reading {table_name}"))?;
    let mut copied: u64 = 0;
    let mut last_report = Instant::now();
    let estimate = (estimate > 0).then_some(estimate as u64);
    loop {
        let rows = tx
            .query_portal(&portal, FETCH_ROWS)
            .await
            .pg_context(|| format!("reading {table_name}"))?;
        if rows.is_empty() {
            break;
        }
        copied += rows.len() as u64;
        each(
            rows.iter()
                .map(|row| text_row_cells(row, &types, shape))
                .collect::<Result<_>>()?,
        )
        .await?;
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            progress(CopyProgress {
                rows: copied,
                estimate,
            });
            let _ = sync_registry::record_rows_copied(client, table_name, copied as i64).await;
        }
    }
    tx.commit()
        .await
        .pg_context(|| "ending the snapshot transaction".into())?;
    progress(CopyProgress {
        rows: copied,
        estimate,
    });
    Ok(SnapshotRead::Copied {
        start_lsn,
        rows: copied,
    })
}

/// The columns `postgres` has and `delta` lacks, in PostgreSQL's order. A column both
/// have whose type differs cannot be carried into the Delta table.
pub(crate) fn columns_to_add(
    table: &TableName,
    delta: &TableShape,
    postgres: &TableShape,
) -> Result<Vec<DataColumn>> {
    let mut added = Vec::new();
    for column in &postgres.columns {
        match delta.columns.iter().find(|c| c.name == column.name) {
            None => added.push(column.clone()),
            Some(old) if old.kind != column.kind => {
                return Err(Error::Unsupported(format!(
                    "column {} of {table} is {:?} in the Delta table and {:?} in PostgreSQL; \
                     the Delta table cannot carry a type change: `lakets sync disable {table}` \
                     and enable it into a new location",
                    column.name, old.kind, column.kind
                )));
            }
            Some(_) => {}
        }
    }
    Ok(added)
}

/// The select list (`col::text, ...`, in the shape's order) and the columns' types.
async fn text_select(
    client: &impl GenericClient,
    table_name: &TableName,
    shape: &TableShape,
) -> Result<(String, Vec<ColumnType>)> {
    let rows = client
        .query(
            "SELECT attname::text, atttypid::oid FROM pg_attribute
              WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&table_name.quoted()],
        )
        .await
        .pg_context(|| format!("reading the columns of {table_name}"))?;
    let types = shape
        .columns
        .iter()
        .map(|c| {
            rows.iter()
                .find(|r| r.get::<_, &str>(0) == c.name)
                .map(|r| ColumnType::from_oid(r.get(1)))
                .ok_or_else(|| Error::Conflict(format!("{table_name} has no column {:?}", c.name)))
        })
        .collect::<Result<_>>()?;
    let select = shape
        .columns
        .iter()
        .map(|c| format!("{}::text", crate::ident::quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((select, types))
}

/// A row selected as `col::text, ...` (in a session with ISO dates in UTC) as cells.
fn text_row_cells(
    row: &tokio_postgres::Row,
    types: &[ColumnType],
    shape: &TableShape,
) -> Result<CellRow> {
    shape
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| match row.get::<_, Option<&str>>(i) {
            None => Ok(Cell::Null),
            Some(text) => Cell::from_value(&decode_text(types[i], text.as_bytes())?, column),
        })
        .collect()
}

/// Every row of a PostgreSQL table as cells in the shape's column order, read the way
/// the initial copy reads them (for comparisons with the Delta table).
pub async fn postgres_rows(
    client: &impl GenericClient,
    table_name: &TableName,
    shape: &TableShape,
) -> Result<Vec<CellRow>> {
    let mut rows = Vec::new();
    for_each_postgres_row(client, table_name, shape, |row| rows.push(row)).await?;
    Ok(rows)
}

/// Hands every row of a PostgreSQL table to `each` as it arrives (rows stream from the
/// server; none is held beyond its turn).
pub async fn for_each_postgres_row(
    client: &impl GenericClient,
    table_name: &TableName,
    shape: &TableShape,
    mut each: impl FnMut(CellRow),
) -> Result<()> {
    use futures_util::TryStreamExt;
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 3; \
             SET bytea_output = 'hex'",
        )
        .await
        .pg_context(|| "preparing the session".into())?;
    let (select, types) = text_select(client, table_name, shape).await?;
    let sql = format!("SELECT {select} FROM {}", table_name.quoted());
    let rows = client
        .query_raw(
            &sql,
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await
        .pg_context(|| format!("reading {table_name}"))?;
    futures_util::pin_mut!(rows);
    while let Some(row) = rows
        .try_next()
        .await
        .pg_context(|| format!("reading {table_name}"))?
    {
        each(text_row_cells(&row, &types, shape)?);
    }
    Ok(())
}

/// Stops mirroring a table (the Delta table stays where it is). The stream stops
/// mirroring it at exactly this transaction.
pub async fn disable_sync(client: &mut Client, table: &str) -> Result<()> {
    let ct = registry::find_chronotable(&*client, table).await?;
    let tx = client
        .transaction()
        .await
        .pg_context(|| "starting a transaction".into())?;
    if !sync_registry::unregister_sync(&tx, &ct.table).await? {
        return Err(Error::NotFound {
            kind: "sync of",
            name: ct.table.to_string(),
        });
    }
    registry::set_sync_enabled(&tx, &ct.table, false).await?;
    announce(
        &tx,
        &Announcement::SyncDisabled {
            table: ct.table.clone(),
        },
    )
    .await?;
    tx.commit()
        .await
        .pg_context(|| format!("committing the end of the sync of {}", ct.table))?;
    Ok(())
}
