//! The cold-tier operator: mirrors every synced ChronoTable into its Delta table, exactly
//! once, in commit order.
//!
//! Durability: each flush commits one Delta version per changed table, carrying a `txn`
//! action (app id per slot and table, version = end LSN of the last transaction applied)
//! in the same commit as the files; then it records the same LSN in
//! `lakets._sink_progress`. After a crash between the two, the stream resumes from the
//! older progress and each table skips what its own `txn` says it has.
//!
//! A table whose initial copy (`lakets sync enable`) is running: its changes committed
//! before the snapshot position are in the copy; a change after it waits here until the
//! copy is committed (the stream holds, nothing is acknowledged past it). A copy whose
//! `sync enable` died is reset, so that the next run takes a fresh snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{info, warn};

use super::Operator;
use super::progress;
use crate::delta::batch::CellRow;
use crate::delta::mirror::{TableMirror, shape_of};
use crate::delta::schema::{Cell, ColumnKind, DataColumn};
use crate::delta::table;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::sync::{self, SYNC_LOCK_NAMESPACE, SyncConfig, SyncState};
use crate::wal::lsn::Lsn;
use crate::wal::relation::Relation;
use crate::wal::transaction::{Change, OldRow, TxnSlice};

pub const NAME: &str = "delta";

/// Ask for a flush at the next transaction end beyond this many buffered changes' bytes.
const FLUSH_BYTES: usize = 256 << 20;

/// Where each column of a relation's rows goes.
#[derive(Clone)]
struct Layout {
    table: TableName,
    /// Per Delta data column: the relation column it comes from (None: a column the
    /// Delta table already has but this older shape of the relation does not, NULL).
    sources: Vec<Option<usize>>,
    /// Delta data columns forming the replica identity.
    key_columns: Arc<Vec<usize>>,
}

pub struct DeltaSink {
    client: Client,
    slot: String,
    mirrors: HashMap<TableName, TableMirror>,
    /// Tables whose initial copy is registered but not committed.
    copying: HashMap<TableName, SyncConfig>,
    layouts: HashMap<u32, Layout>,
}

impl DeltaSink {
    pub async fn new(client: Client, slot: impl Into<String>) -> Result<Self> {
        super::prepare_session(&client, NAME).await?;
        let slot = slot.into();
        // Marks this slot as one whose consumer runs the Delta operator: the tiering gate
        // trusts only such slots' confirmed positions.
        client
            .execute(
                "INSERT INTO lakets._sink_progress (slot_name, operator, durable_lsn)
                 VALUES ($1, $2, '0/0') ON CONFLICT DO NOTHING",
                &[&slot, &NAME],
            )
            .await
            .pg_context(|| "registering the Delta operator".into())?;
        let mut op = DeltaSink {
            client,
            slot,
            mirrors: HashMap::new(),
            copying: HashMap::new(),
            layouts: HashMap::new(),
        };
        op.reload().await?;
        Ok(op)
    }

    /// Opens the Delta table of every active sync not open yet.
    async fn reload(&mut self) -> Result<()> {
        self.copying.clear();
        let syncs = sync::list_syncs(&self.client).await?;
        // Mirrors of syncs disabled (or re-enabled elsewhere) since: forget them.
        self.mirrors.retain(|table, mirror| {
            let keep = syncs.iter().any(|s| {
                &s.table == table
                    && s.state == SyncState::Active
                    && s.location.as_str().trim_end_matches('/')
                        == mirror.table.table_url().as_str().trim_end_matches('/')
            });
            if !keep {
                info!(table = %table, "no longer mirrored into {}", mirror.location());
            }
            keep
        });
        let mirrored: HashSet<TableName> = self.mirrors.keys().cloned().collect();
        self.layouts.retain(|_, l| mirrored.contains(&l.table));
        for config in syncs {
            if self.mirrors.contains_key(&config.table) {
                continue;
            }
            match config.state {
                SyncState::Copying => {
                    self.copying.insert(config.table.clone(), config);
                }
                SyncState::Active => {
                    let mirror = open_mirror(&self.slot, &config).await?;
                    info!(table = %config.table, location = %mirror.location(), skip_before = %mirror.skip_before, "mirroring into Delta");
                    self.mirrors.insert(config.table.clone(), mirror);
                }
            }
        }
        Ok(())
    }
}

/// Opens a synced table's Delta mirror, resuming after what it already holds.
async fn open_mirror(slot: &str, config: &SyncConfig) -> Result<TableMirror> {
    {
        let delta = table::open(&config.location).await?.ok_or_else(|| {
            Error::NotReady(format!(
                "the Delta table of {} is missing at {}; streaming stops (restore it, or \
                 `lakets sync disable` and enable the sync again)",
                config.table,
                table::display_location(&config.location)
            ))
        })?;
        let shape = shape_of(&delta, &config.time_column, config.partitioning)?;
        let app_id = sync::stream_app_id(slot, &config.table);
        let streamed = table::txn_lsn(&delta, &app_id).await?;
        let skip_before = streamed
            .into_iter()
            .chain(config.start_lsn)
            .max()
            .unwrap_or(Lsn::ZERO);
        Ok(TableMirror::new(shape, delta, app_id, skip_before))
    }
}

impl DeltaSink {
    /// A change of a table in its initial copy, committed at `lsn`: returns once the
    /// table is mirrored or known not to need the change.
    async fn await_copy(&mut self, table: &TableName, lsn: Lsn) -> Result<()> {
        let started = Instant::now();
        let mut warned = Instant::now();
        loop {
            let Some(config) = sync::find_sync(&self.client, table).await? else {
                self.copying.remove(table);
                return Ok(()); // disabled meanwhile
            };
            if config.state == SyncState::Active {
                return self.reload().await;
            }
            match config.start_lsn {
                // No snapshot yet: it will hold this change.
                None => return Ok(()),
                Some(start) if lsn < start => return Ok(()),
                Some(start) => {
                    let free: bool = self
                        .client
                        .query_one(
                            "SELECT pg_try_advisory_lock($1, hashtext($2))",
                            &[&SYNC_LOCK_NAMESPACE, &table.to_string()],
                        )
                        .await
                        .pg_context(|| format!("checking the initial copy of {table}"))?
                        .get(0);
                    if free {
                        // Nobody is copying: the copy was abandoned. The next `sync
                        // enable` takes a new snapshot, which will hold this change.
                        self.client
                            .execute(
                                "SELECT pg_advisory_unlock($1, hashtext($2))",
                                &[&SYNC_LOCK_NAMESPACE, &table.to_string()],
                            )
                            .await
                            .pg_context(|| "releasing the sync lock".into())?;
                        self.client
                            .execute(
                                "UPDATE lakets._sync_registry SET start_lsn = NULL
                                  WHERE schema_name = $1 AND table_name = $2
                                    AND state = 'copying' AND start_lsn = $3",
                                &[
                                    &table.schema,
                                    &table.name,
                                    &tokio_postgres::types::PgLsn::from(start),
                                ],
                            )
                            .await
                            .pg_context(|| format!("resetting the abandoned copy of {table}"))?;
                        warn!(table = %table, "the initial copy into Delta was interrupted; run `lakets sync enable` again");
                        return Ok(());
                    }
                }
            }
            if warned.elapsed() >= Duration::from_secs(10) {
                warned = Instant::now();
                info!(table = %table, waiting = ?started.elapsed(), "the stream waits for the initial copy into Delta");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Checks a relation against the Delta table: new columns are added to it; a
    /// dropped, renamed or retyped column stops the stream.
    /// `commit_lsn`: of the transaction carrying the relation. Before the table's durable
    /// position (a replay after a restart), an older shape lacking columns the Delta table
    /// already has is expected (ADD COLUMN came later): those read NULL.
    async fn learn_relation(&mut self, relation: &Relation, commit_lsn: Lsn) -> Result<()> {
        let Some(mirror) = self.mirrors.get(&relation.table) else {
            return Ok(());
        };
        let replay = commit_lsn < mirror.skip_before;
        // A column the relation lacks but PostgreSQL still has: an older shape, replayed
        // after a restart from before its ADD COLUMN. The position alone misses a crash
        // between the schema's commit to Delta and the next data commit.
        let lacks_columns = mirror
            .shape
            .columns
            .iter()
            .any(|c| relation.column_index(&c.name).is_none());
        let in_postgres = if lacks_columns && !replay {
            current_columns(&self.client, &relation.table).await?
        } else {
            HashSet::new()
        };
        let mirror = self
            .mirrors
            .get_mut(&relation.table)
            .expect("looked up above");
        let mut sources = Vec::with_capacity(mirror.shape.columns.len());
        for column in &mirror.shape.columns {
            let Some(index) = relation.column_index(&column.name) else {
                if replay || in_postgres.contains(&column.name) {
                    sources.push(None);
                    continue;
                }
                return Err(Error::Unsupported(format!(
                    "column {:?} of {} is gone from PostgreSQL (dropped or renamed), but the \
                     Delta table at {} has it; the mirror cannot follow, so streaming stops \
                     here (nothing after this change is acknowledged). Add the column back, \
                     or disable the sync and enable it into a new location",
                    column.name,
                    relation.table,
                    mirror.location()
                )));
            };
            let rc = &relation.columns[index];
            let kind = ColumnKind::for_postgres(rc.column_type, rc.type_modifier)?;
            if kind != column.kind {
                return Err(Error::Unsupported(format!(
                    "column {:?} of {} changed type to {} ({kind:?} in Delta), but the Delta \
                     table at {} stores {:?}; the mirror cannot follow, so streaming stops \
                     here (nothing after this change is acknowledged)",
                    column.name,
                    relation.table,
                    rc.column_type.name(),
                    mirror.location(),
                    column.kind
                )));
            }
            sources.push(Some(index));
        }
        let mut added = Vec::new();
        for (index, rc) in relation.columns.iter().enumerate() {
            if sources.contains(&Some(index))
                || Some(&rc.name) == mirror.shape.partition_column.as_ref()
            {
                continue;
            }
            let kind = ColumnKind::for_postgres(rc.column_type, rc.type_modifier).map_err(|e| {
                Error::Unsupported(format!(
                    "new column {:?} of {}: {e}; streaming stops here",
                    rc.name, relation.table
                ))
            })?;
            added.push(DataColumn {
                name: rc.name.clone(),
                kind,
            });
            sources.push(Some(index));
        }
        if !added.is_empty() {
            info!(table = %relation.table, columns = ?added.iter().map(|c| &c.name).collect::<Vec<_>>(), "adding columns to the Delta table");
            mirror.add_columns(added).await?;
        }
        let key_columns: Vec<usize> = if relation.replica_identity == b'f' {
            (0..sources.len()).collect()
        } else {
            sources
                .iter()
                .enumerate()
                .filter(|(_, ri)| ri.is_some_and(|ri| relation.columns[ri].is_key))
                .map(|(i, _)| i)
                .collect()
        };
        self.layouts.insert(
            relation.id,
            Layout {
                table: relation.table.clone(),
                sources,
                key_columns: Arc::new(key_columns),
            },
        );
        Ok(())
    }

    async fn layout(&mut self, relation: &Relation, commit_lsn: Lsn) -> Result<Option<Layout>> {
        if !self.mirrors.contains_key(&relation.table) {
            return Ok(None);
        }
        let fresh = self
            .layouts
            .get(&relation.id)
            .is_some_and(|l| l.table == relation.table);
        if !fresh {
            self.learn_relation(relation, commit_lsn).await?;
        }
        Ok(self.layouts.get(&relation.id).cloned())
    }

    async fn apply_change(&mut self, change: &Change, commit_lsn: Lsn) -> Result<()> {
        let relation = match change {
            Change::Schema { relation, .. } => {
                if self.mirrors.contains_key(&relation.table) {
                    self.learn_relation(relation, commit_lsn).await?;
                }
                return Ok(());
            }
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => relation,
            Change::Truncate { relations, .. } => {
                for r in relations {
                    if self.copying.contains_key(&r.table) {
                        self.await_copy(&r.table, commit_lsn).await?;
                    }
                    let applies = self
                        .mirrors
                        .get(&r.table)
                        .is_some_and(|m| commit_lsn >= m.skip_before);
                    if applies {
                        // The rows of dropped chunks live only in the cold tier: TRUNCATE
                        // empties the hot table, so it removes only the rows PostgreSQL
                        // held. (No chunk can be dropped between the TRUNCATE and this
                        // point: the gate waits for this operator to pass the drop first.)
                        let keep = dropped_ranges(&self.client, &r.table).await?;
                        let m = self.mirrors.get_mut(&r.table).expect("checked above");
                        warn!(table = %r.table, location = %m.location(), kept_ranges = keep.len(), "TRUNCATE mirrored: the rows of the hot chunks leave the Delta table (earlier versions keep them until vacuum); the dropped chunks' history stays");
                        m.truncate(keep).await?;
                    }
                }
                return Ok(());
            }
            Change::Message { .. } => return Ok(()),
        };
        if self.copying.contains_key(&relation.table) {
            self.await_copy(&relation.table, commit_lsn).await?;
        }
        let Some(layout) = self.layout(relation, commit_lsn).await? else {
            return Ok(());
        };
        let mirror = self
            .mirrors
            .get_mut(&layout.table)
            .expect("a layout exists only for mirrored tables");
        if commit_lsn < mirror.skip_before {
            return Ok(());
        }
        let cells = |values: &[crate::wal::value::Value]| -> Result<CellRow> {
            layout
                .sources
                .iter()
                .zip(&mirror.shape.columns)
                .map(|(ri, column)| match ri {
                    Some(ri) => Cell::from_value(&values[*ri], column),
                    None => Ok(Cell::Null),
                })
                .collect()
        };
        let key_of = |row: &CellRow| -> CellRow {
            layout.key_columns.iter().map(|&i| row[i].clone()).collect()
        };
        match change {
            Change::Insert { new, .. } => {
                let row = cells(new)?;
                mirror.insert(row).await?;
            }
            Change::Update { old, new, .. } => {
                let new_row = cells(new)?;
                let (old_key, old_full) = match old {
                    Some(OldRow { key_only, values }) => {
                        let old_row = cells(values)?;
                        (key_of(&old_row), (!key_only).then_some(old_row))
                    }
                    None => (key_of(&new_row), None),
                };
                mirror
                    .update(&layout.key_columns, old_key, old_full, new_row)
                    .await?;
            }
            Change::Delete { old, .. } => {
                let old_row = cells(&old.values)?;
                mirror.delete(&layout.key_columns, key_of(&old_row)).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Operator for DeltaSink {
    fn name(&self) -> &str {
        NAME
    }

    async fn durable_lsn(&mut self) -> Result<Lsn> {
        progress::load(&self.client, &self.slot, NAME).await
    }

    async fn apply(&mut self, slice: &TxnSlice) -> Result<()> {
        // A table synced (or being copied) since the last look: every slice, since a long
        // transaction may reach it after its first slice.
        let touches_unknown = slice.changes.iter().any(|c| match c {
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => !self.mirrors.contains_key(&relation.table),
            Change::Truncate { relations, .. } => relations
                .iter()
                .any(|r| !self.mirrors.contains_key(&r.table)),
            _ => false,
        });
        if touches_unknown {
            self.reload().await?;
        }
        for change in &slice.changes {
            self.apply_change(change, slice.commit_lsn).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, through: Lsn) -> Result<()> {
        let started = Instant::now();
        let mut committed: HashSet<TableName> = HashSet::new();
        for (name, mirror) in self.mirrors.iter_mut() {
            if !mirror.has_changes() {
                continue;
            }
            let outcome = mirror.flush(through).await?;
            metrics::counter!("lakets_delta_rows_written_total", "table" => name.to_string())
                .increment(outcome.rows_written as u64);
            metrics::counter!("lakets_delta_commits_total", "table" => name.to_string())
                .increment(1);
            committed.insert(name.clone());
        }
        progress::store(&self.client, &self.slot, NAME, through).await?;
        if !committed.is_empty() {
            metrics::histogram!("lakets_delta_flush_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.mirrors
            .values()
            .map(TableMirror::buffered_bytes)
            .sum::<usize>()
            >= FLUSH_BYTES
    }
}

/// The columns a table has now.
async fn current_columns(client: &Client, table: &TableName) -> Result<HashSet<String>> {
    Ok(client
        .query(
            "SELECT attname::text FROM pg_attribute
              WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&table.quoted()],
        )
        .await
        .pg_context(|| format!("reading the columns of {table}"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The time ranges (microseconds) of a table's dropped chunks.
pub(crate) async fn dropped_ranges(client: &Client, table: &TableName) -> Result<Vec<(i64, i64)>> {
    let rows = client
        .query(
            "SELECT (extract(epoch FROM range_start) * 1000000)::bigint,
                    (extract(epoch FROM range_end) * 1000000)::bigint
               FROM lakets._chunk_metadata
              WHERE schema_name = $1 AND table_name = $2 AND status = 'dropped'",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| format!("reading the dropped chunks of {table}"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
