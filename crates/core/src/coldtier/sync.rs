//! Syncing a ChronoTable to Delta Lake (spec: `enable_sync`): the registry, the table
//! creation and the initial copy.
//!
//! The copy reads a snapshot that meets the stream exactly ([`super::snapshot`]). It is
//! committed to Delta as one version whose `txn` action records the snapshot's position,
//! and the WAL operator skips the table's changes committed before it.

use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::DeltaWriter;
use tokio_postgres::{Client, GenericClient};
use tracing::info;

pub use super::snapshot::DEFAULT_READERS;
use super::snapshot::{
    self, SnapshotSink, TEXT_SESSION, read_snapshot, text_row_cells, text_select,
};
use crate::catalog::announce::{Announcement, announce};
use crate::catalog::registry;
use crate::catalog::sync_registry;
pub use crate::catalog::sync_registry::{SyncConfig, SyncState, find_sync, list_syncs};
use crate::delta::batch::{CellRow, build_batch};
use crate::delta::mirror::{shape_for_source, shape_of};
pub use crate::delta::protocol::Features;
use crate::delta::schema::{DataColumn, Partitioning, TableShape};
use crate::delta::table;
use crate::error::{DeltaResultExt, Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::wal::lsn::Lsn;
use crate::wal::value::ColumnType;

/// Advisory lock namespace held by `enable_sync` for the length of a copy (second key:
/// `hashtext` of the table name).
pub const SYNC_LOCK_NAMESPACE: i32 = 0x4c4b_5455;

/// The `txn` application id of the stream's commits to one table. In a table several
/// clusters share, each cluster's stream has its own (`source`: the cluster's name there),
/// so that each is exactly once on its own.
pub fn stream_app_id(slot: &str, table: &TableName, source: Option<&str>) -> String {
    match source {
        None => format!("lakets:{slot}:{table}"),
        Some(source) => format!("lakets@{source}:{slot}:{table}"),
    }
}

/// The `txn` application id of the initial snapshot's commit.
pub fn snapshot_app_id(table: &TableName, source: Option<&str>) -> String {
    match source {
        None => format!("lakets:snapshot:{table}"),
        Some(source) => format!("lakets@{source}:snapshot:{table}"),
    }
}

/// The `txn` application id under which a shared table records which database took a
/// source name ([`source_claim`]), so that no other can take it too.
pub fn source_claim_app_id(source: &str) -> String {
    format!("lakets@{source}")
}

/// What a source's claim records: the server's system identifier (shared by its physical
/// standbys and restores, so a failover keeps the name) and the database, as one 63-bit
/// FNV-1a hash (a `txn` version is a non-negative 64-bit integer), with the parts for
/// messages.
pub async fn source_claim(client: &impl GenericClient) -> Result<(i64, String)> {
    let row = client
        .query_one(
            "SELECT system_identifier::text || '/' || pg_catalog.current_database()
               FROM pg_catalog.pg_control_system()",
            &[],
        )
        .await
        .pg_context(|| "reading the server's system identifier".into())?;
    let who: String = row.get(0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in who.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(((hash >> 1) as i64, who))
}

/// Refuses a source name another database took in the shared table `delta`; `Ok(true)`
/// when none has taken it yet (the caller's first commit takes it).
pub async fn check_source_claim(
    client: &impl GenericClient,
    delta: &deltalake::DeltaTable,
    source: &str,
) -> Result<bool> {
    let (ours, who) = source_claim(client).await?;
    match table::txn_lsn(delta, &source_claim_app_id(source)).await? {
        None => Ok(true),
        Some(claim) if claim.0 as i64 == ours => Ok(false),
        Some(_) => Err(Error::Conflict(format!(
            "source {source:?} of the Delta table at {} belongs to another PostgreSQL \
             database (this one is {who}, as system identifier/database); give each \
             cluster's database a name of its own",
            table::display_location(delta.table_url())
        ))),
    }
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
    progress: impl FnMut(CopyProgress),
) -> Result<SyncConfig> {
    enable_sync_with_readers(
        db,
        table,
        location,
        partitioning,
        None,
        Features::default(),
        DEFAULT_READERS,
        progress,
    )
    .await
}

/// [`enable_sync`] with the copy read by `readers` connections at once. With `source`,
/// the Delta table is one several PostgreSQL clusters share (fan-in), this one's rows under
/// that name: it is created partitioned by `lakets_source`, or joined when another cluster
/// created it. `features` are those of a table it creates; an existing table keeps its own
/// (asking for a feature it lacks is refused: [`upgrade_sync`] turns features on).
#[allow(clippy::too_many_arguments)]
pub async fn enable_sync_with_readers(
    db: &crate::db::DbConfig,
    table: &str,
    location: &str,
    partitioning: Partitioning,
    source: Option<&str>,
    features: Features,
    readers: usize,
    mut progress: impl FnMut(CopyProgress),
) -> Result<SyncConfig> {
    let mut client = crate::db::connect_with(db).await?;
    crate::catalog::check_installed(&client).await?;
    let ct = registry::find_chronotable(&client, table).await?;
    let url = table::parse_location(location)?;
    let shape = postgres_shape(&client, &ct.table, &ct.time_column, partitioning)
        .await?
        .with_source(source)?;
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
        if s.location != url || s.partitioning != partitioning || s.source.as_deref() != source {
            return Err(Error::Conflict(format!(
                "an interrupted sync of {} to {} (partitioned by {}{}) is pending; run the same \
                 command again to finish it, or `lakets sync disable {}` first",
                ct.table,
                table::display_location(&s.location),
                s.partitioning.as_str(),
                s.source
                    .as_ref()
                    .map_or(String::new(), |n| format!(", as source {n:?}")),
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
        let state = t
            .snapshot()
            .delta_context(|| format!("reading {}", table::display_location(&url)))?;
        crate::delta::protocol::check_writable(state, &table::display_location(&url))?;
        for (asked, has, name, flag) in [
            (
                features.change_data_feed,
                crate::delta::protocol::change_data_feed(state),
                "Change Data Feed",
                "--change-data-feed",
            ),
            (
                features.deletion_vectors,
                crate::delta::protocol::deletion_vectors(state),
                "deletion vectors",
                "--deletion-vectors",
            ),
        ] {
            if asked && !has {
                return Err(Error::Conflict(format!(
                    "the Delta table at {} exists without {name}; an existing table's \
                     protocol changes only on request: run `lakets sync upgrade {} {flag}` \
                     once it is synced, or sync into a new location",
                    table::display_location(&url),
                    ct.table
                )));
            }
        }
    }
    // A pending sync resumes in its Delta table's shape: columns PostgreSQL gained
    // since the interrupted enable created the table join it before the copy.
    // A shared table is joined in its shape too: columns another cluster added read NULL
    // here (the copy selects NULL for them), columns only this cluster has join it.
    let mut copy_shape = shape.clone();
    if let Some(t) = &found {
        let joined = match source {
            Some(name) => {
                let f = shape_for_source(t, &ct.time_column, partitioning, source)?;
                check_source_claim(&client, t, name).await?;
                snapshot::columns_to_add(&ct.table, &f, &shape)?;
                Some(f)
            }
            None => match shape_of(t, &ct.time_column, partitioning) {
                // A shared table says so: it needs a source name.
                Err(e) if crate::delta::mirror::is_shared(t)? => return Err(e),
                f => f.ok().filter(|f| {
                    existing.is_some()
                        && f.partition_column == shape.partition_column
                        && f.columns.iter().all(|c| shape.columns.contains(c))
                }),
            },
        };
        match joined {
            Some(f) => copy_shape = f,
            None => {
                return Err(Error::Conflict(format!(
                    "a Delta table already exists at {}; sync into a new (empty) location, \
                     or give a source name (--source) to share a table that other clusters \
                     mirror into",
                    table::display_location(&url)
                )));
            }
        }
    }

    // Every change after the snapshot must be held by a slot.
    crate::catalog::replication::ensure_default_consumer(&client).await?;
    {
        let tx = client
            .transaction()
            .await
            .pg_context(|| "starting a transaction".into())?;
        sync_registry::register_sync(&tx, &ct.table, &url, partitioning, source).await?;
        announce(
            &tx,
            &Announcement::SyncRegistered {
                table: ct.table.clone(),
                location: url.to_string(),
                partitioning: partitioning.as_str().to_owned(),
                source: source.map(str::to_owned),
            },
        )
        .await?;
        tx.commit()
            .await
            .pg_context(|| format!("committing the sync of {}", ct.table))?;
    }
    let mut delta = match found {
        Some(t) => t,
        None => table::create(&url, &shape, &ct.table.to_string(), features).await?,
    };

    // A copy committed before an interruption of the registry update: just finish.
    let registered = find_sync(&client, &ct.table).await?;
    let committed = table::txn_lsn(&delta, &snapshot_app_id(&ct.table, source)).await?;
    if let (Some(done), Some(reg)) = (committed, registered.as_ref().and_then(|s| s.start_lsn))
        && done == reg
    {
        return activate(&mut client, &ct.table).await;
    }

    let (start_lsn, rows) = copy_snapshot(
        db,
        &client,
        &ct.table,
        &copy_shape,
        &mut delta,
        readers,
        &mut progress,
    )
    .await?;
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

/// Staged files are sealed every this many rows (bounds the writer's memory).
const SEAL_ROWS: u64 = 1_000_000;

/// The initial copy's Parquet files, written as the snapshot's rows arrive.
struct CopyFiles<'a> {
    delta: &'a mut deltalake::DeltaTable,
    shape: TableShape,
    writer: deltalake::writer::RecordBatchWriter,
    adds: Vec<deltalake::kernel::Add>,
    since_seal: u64,
}

impl SnapshotSink for CopyFiles<'_> {
    fn shape(&self) -> &TableShape {
        &self.shape
    }

    async fn add_columns(&mut self, columns: Vec<DataColumn>) -> Result<()> {
        *self.delta = table::add_columns(self.delta, &columns).await?;
        self.shape.columns.extend(columns);
        self.writer = table::writer(self.delta)?; // nothing written yet: none lost
        Ok(())
    }

    async fn write(&mut self, rows: Vec<CellRow>) -> Result<()> {
        let refs: Vec<&CellRow> = rows.iter().collect();
        table::write_batch(&mut self.writer, build_batch(&self.shape, &refs)?)
            .await
            .delta_context(|| "writing the initial snapshot".into())?;
        self.since_seal += rows.len() as u64;
        if self.since_seal >= SEAL_ROWS {
            self.seal().await?;
        }
        Ok(())
    }
}

impl CopyFiles<'_> {
    async fn seal(&mut self) -> Result<()> {
        self.adds.extend(
            self.writer
                .flush()
                .await
                .delta_context(|| "writing the initial snapshot".into())?,
        );
        self.since_seal = 0;
        Ok(())
    }
}

async fn copy_snapshot(
    db: &crate::db::DbConfig,
    client: &Client,
    table_name: &TableName,
    shape: &TableShape,
    delta: &mut deltalake::DeltaTable,
    readers: usize,
    progress: &mut impl FnMut(CopyProgress),
) -> Result<(Lsn, u64)> {
    let writer = table::writer(delta)?;
    let mut files = CopyFiles {
        delta,
        shape: shape.clone(),
        writer,
        adds: Vec::new(),
        since_seal: 0,
    };
    let (start_lsn, copied) =
        read_snapshot(db, client, table_name, readers, progress, &mut files).await?;
    files.seal().await?;
    let CopyFiles {
        delta, shape, adds, ..
    } = files;
    // The copy replaces whatever an interrupted earlier copy committed (the stream never
    // writes to a table whose copy is pending), so running `enable` again never doubles.
    // A shared table: this cluster takes its source name with its first copy (checked
    // again here, as late as can be), and replaces only its own files.
    let claim = match &shape.source {
        Some(name) if check_source_claim(client, delta, name).await? => {
            Some((source_claim_app_id(name), source_claim(client).await?.0))
        }
        _ => None,
    };
    let earlier = crate::delta::read::files_of(delta, &shape).await?;
    let actions = earlier
        .iter()
        .map(|v| deltalake::kernel::Action::Remove(v.remove_action(true)))
        .chain(adds.into_iter().map(deltalake::kernel::Action::Add))
        .chain(claim.map(|(app_id, system)| {
            deltalake::kernel::Action::Txn(deltalake::kernel::Transaction::new(app_id, system))
        }))
        .collect();
    table::commit(
        delta,
        actions,
        DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(shape.partition_columns()),
            predicate: None,
        },
        Some((
            &snapshot_app_id(table_name, shape.source.as_deref()),
            start_lsn,
        )),
    )
    .await?;
    sync_registry::record_rows_copied(client, table_name, copied as i64).await?;
    Ok((start_lsn, copied))
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
        .batch_execute(TEXT_SESSION)
        .await
        .pg_context(|| "preparing the session".into())?;
    let (select, types) = text_select(client, table_name, shape).await?;
    let sql = format!("SELECT {} FROM {}", select.join(", "), table_name.quoted());
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

/// What [`upgrade_sync`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpgradeOutcome {
    /// The version whose commit turned the features on; `None`: they were on already.
    pub version: Option<i64>,
    pub protocol: crate::delta::protocol::ProtocolSummary,
}

/// Turns `features` on in the Delta table of a synced table (`lakets sync upgrade`): one
/// commit with the raised protocol and the table property, on the latest version. Refused
/// when the table carries features lakets does not write. Safe while the service streams:
/// a window that removes files and meets the upgrade is chosen again with change data.
pub async fn upgrade_sync(
    client: &impl GenericClient,
    table_name: &str,
    features: Features,
) -> Result<UpgradeOutcome> {
    if !features.change_data_feed && !features.deletion_vectors {
        return Err(Error::invalid(
            "nothing to upgrade: name a feature to turn on (--change-data-feed, \
             --deletion-vectors)",
        ));
    }
    let ct = registry::find_chronotable(client, table_name).await?;
    let sync = find_sync(client, &ct.table)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "sync of",
            name: ct.table.to_string(),
        })?;
    let location = table::display_location(&sync.location);
    if features.deletion_vectors && sync.source.is_some() {
        // The other clusters' lakets may predate deletion vectors: one that reads its
        // files whole would bring deleted rows back with its next rewrite.
        return Err(Error::Conflict(format!(
            "the Delta table at {location} is shared by several clusters; turning deletion \
             vectors on needs every cluster's lakets to apply them, which this one cannot \
             check. Create the shared table with --deletion-vectors from the start instead"
        )));
    }
    let mut delta = table::open(&sync.location).await?.ok_or_else(|| {
        Error::Conflict(format!(
            "{} is synced to {location}, but there is no Delta table there",
            ct.table
        ))
    })?;
    for _ in 0..10 {
        let state = delta
            .snapshot()
            .delta_context(|| format!("reading {location}"))?;
        let Some(actions) = crate::delta::protocol::enable_features(state, &location, features)?
        else {
            return Ok(UpgradeOutcome {
                version: None,
                protocol: crate::delta::protocol::summary(state)?,
            });
        };
        let operation = DeltaOperation::SetTableProperties {
            properties: features
                .properties()
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                .collect(),
        };
        if let Some(version) = table::try_commit(&mut delta, actions, operation, None).await? {
            info!(table = %ct.table, version, location = %location, ?features, "Delta table features turned on");
            let state = delta
                .snapshot()
                .delta_context(|| format!("reading {location}"))?;
            return Ok(UpgradeOutcome {
                version: Some(version),
                protocol: crate::delta::protocol::summary(state)?,
            });
        }
        table::refresh(&mut delta).await?;
    }
    Err(Error::Delta {
        context: format!("upgrading the Delta table at {location}"),
        message: "other writers kept changing its metadata first".into(),
    })
}

/// The protocol of a synced table's Delta table; `None` when there is no table there yet.
pub async fn delta_protocol(
    sync: &SyncConfig,
) -> Result<Option<crate::delta::protocol::ProtocolSummary>> {
    let Some(delta) = table::open(&sync.location).await? else {
        return Ok(None);
    };
    let state = delta
        .snapshot()
        .delta_context(|| format!("reading {}", table::display_location(&sync.location)))?;
    Ok(Some(crate::delta::protocol::summary(state)?))
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
