//! The cold-tier operator: mirrors every synced ChronoTable into its Delta table, exactly
//! once, in commit order.
//!
//! Durability: each flush commits one Delta version per changed table, carrying a `txn`
//! action (app id per slot and table, version = end LSN of the last transaction applied)
//! in the same commit as the files; then it records the same LSN in
//! `lakets._sink_progress`. After a crash between the two, the stream resumes from the
//! older progress and each table skips what its own `txn` says it has. The durability gate
//! reads that `txn` version as its evidence; for a table without changes the gate asks
//! (an announcement) and the next tick records the position in a commit of its own.
//!
//! Configuration follows the stream: `sync enable`, the copy's snapshot, its activation
//! and `sync disable` are announced in the transactions that make them
//! ([`crate::catalog::announce`]), and the sink switches at exactly those positions. What
//! it followed is stored with its durable position, so a replay after a crash mirrors the
//! replayed changes where they went the first time, whatever the catalog says by then.
//!
//! A table whose initial copy is running: its changes committed before the snapshot
//! position are in the copy; a change after it waits here until the copy is committed (the
//! stream holds, nothing is acknowledged past it). A copy whose `sync enable` died is
//! reset, so that the next run takes a fresh snapshot.
//!
//! Maintenance (compaction, checkpoints, vacuum) runs here too, between two windows, so
//! the table's writer never races its own compaction.

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::catalog::announce::{self, Announcement};
use crate::catalog::{job_runs, progress, sync_registry};
use crate::coldtier::sync::{self, SYNC_LOCK_NAMESPACE, SyncState};
use crate::delta::batch::CellRow;
use crate::delta::mirror::{MaintenancePolicy, TableMirror, shape_for_source};
use crate::delta::schema::{Cell, ColumnKind, DataColumn, Partitioning};
use crate::delta::table;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::operators::Operator;
use crate::wal::lsn::Lsn;
use crate::wal::relation::Relation;
use crate::wal::transaction::{Change, TxnSlice, check_update_old};

pub const NAME: &str = "delta";

/// The job name under which maintenance runs are recorded in `lakets._job_runs`.
pub const MAINTENANCE_JOB: &str = "delta_maintenance";

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

/// A sync as the stream has announced it so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Followed {
    table: TableName,
    time_column: String,
    /// The Delta table's URL.
    location: String,
    partitioning: String,
    /// This cluster's name in a Delta table several clusters share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    state: SyncState,
    /// Changes committed before this are in the initial copy.
    start_lsn: Option<Lsn>,
}

impl Followed {
    fn from_registry(s: &sync::SyncConfig) -> Self {
        Followed {
            table: s.table.clone(),
            time_column: s.time_column.clone(),
            location: s.location.to_string(),
            partitioning: s.partitioning.as_str().to_owned(),
            source: s.source.clone(),
            state: s.state,
            start_lsn: s.start_lsn,
        }
    }

    fn url(&self) -> Result<url::Url> {
        url::Url::parse(&self.location)
            .map_err(|e| Error::invalid(format!("sync location {:?}: {e}", self.location)))
    }

    fn same_place(&self, s: &sync::SyncConfig) -> bool {
        s.location.as_str().trim_end_matches('/') == self.location.trim_end_matches('/')
    }
}

/// When and how the sink maintains its tables.
#[derive(Debug, Clone)]
pub struct MaintenanceSchedule {
    pub every: Duration,
    pub policy: MaintenancePolicy,
    /// Recorded with each run (`lakets._job_runs.instance`).
    pub instance: String,
}

pub struct DeltaSink {
    client: Client,
    slot: String,
    /// Syncs by table, as of the stream's position.
    followed: HashMap<TableName, Followed>,
    /// Open mirrors of the active syncs.
    mirrors: HashMap<TableName, TableMirror>,
    /// Shared with each change that uses it (one per row): a reference, not a copy.
    layouts: HashMap<u32, Arc<Layout>>,
    /// Tables the durability gate waits on, with the lock position it needs passed.
    gate_waits: HashMap<TableName, Lsn>,
    maintenance: Option<MaintenanceSchedule>,
    last_maintenance: Option<Instant>,
    /// End LSN of the last transaction applied whole.
    last_end: Lsn,
}

impl DeltaSink {
    pub async fn new(client: Client, slot: impl Into<String>) -> Result<Self> {
        crate::operators::prepare_session(&client, NAME).await?;
        let slot = slot.into();
        let (_, stored) = progress::load_with_config(&client, &slot, NAME).await?;
        let followed: Vec<Followed> = match stored {
            Some(config) => serde_json::from_value(config).map_err(|e| {
                Error::Protocol(format!(
                    "the Delta operator's stored configuration is unreadable: {e}"
                ))
            })?,
            None => sync::list_syncs(&client)
                .await?
                .iter()
                .map(Followed::from_registry)
                .collect(),
        };
        let mut op = DeltaSink {
            client,
            slot,
            followed: followed.into_iter().map(|f| (f.table.clone(), f)).collect(),
            mirrors: HashMap::new(),
            layouts: HashMap::new(),
            gate_waits: HashMap::new(),
            maintenance: None,
            last_maintenance: None,
            last_end: Lsn::ZERO,
        };
        let active: Vec<TableName> = op
            .followed
            .values()
            .filter(|f| f.state == SyncState::Active)
            .map(|f| f.table.clone())
            .collect();
        for table in active {
            op.open(&table).await?;
        }
        // Registers this slot's Delta operator (and its configuration) before anything is
        // streamed.
        let (durable, _) = progress::load_with_config(&op.client, &op.slot, NAME).await?;
        progress::store_with_config(&op.client, &op.slot, NAME, durable, &op.config_json()).await?;
        Ok(op)
    }

    /// Maintains every mirrored table on this schedule, between windows.
    pub fn with_maintenance(mut self, schedule: MaintenanceSchedule) -> Self {
        self.maintenance = Some(schedule);
        self
    }

    fn config_json(&self) -> serde_json::Value {
        let mut list: Vec<&Followed> = self.followed.values().collect();
        list.sort_by_key(|f| f.table.to_string());
        serde_json::to_value(list).expect("sync configuration serializes")
    }

    /// Opens the Delta mirror of an active sync, resuming after what it already holds.
    async fn open(&mut self, table: &TableName) -> Result<()> {
        let f = self.followed[table].clone();
        let url = f.url()?;
        let delta = table::open(&url).await?.ok_or_else(|| {
            Error::NotReady(format!(
                "the Delta table of {} is missing at {}; streaming stops (restore it, or \
                 `lakets sync disable` and enable the sync again)",
                f.table,
                table::display_location(&url)
            ))
        })?;
        let source = f.source.as_deref();
        let shape = shape_for_source(
            &delta,
            &f.time_column,
            Partitioning::parse(&f.partitioning)?,
            source,
        )?;
        if let Some(name) = source {
            // A second cluster that took the same name would have the same app ids, and
            // each would skip the other's changes as its own.
            sync::check_source_claim(&self.client, &delta, name).await?;
        }
        let app_id = sync::stream_app_id(&self.slot, &f.table, source);
        // What the table holds: what this stream committed, and the initial copy (its
        // snapshot position, recorded in its own commit).
        let streamed = table::txn_lsn(&delta, &app_id).await?;
        let copied = table::txn_lsn(&delta, &sync::snapshot_app_id(&f.table, source)).await?;
        let skip_before = streamed
            .into_iter()
            .chain(copied)
            .chain(f.start_lsn)
            .max()
            .unwrap_or(Lsn::ZERO);
        let mirror = TableMirror::new(shape, delta, app_id, skip_before);
        info!(table = %f.table, location = %mirror.location(), skip_before = %mirror.skip_before, "mirroring into Delta");
        self.layouts.retain(|_, l| &l.table != table);
        self.mirrors.insert(table.clone(), mirror);
        Ok(())
    }

    /// Stops mirroring `table`: what its window holds (changes before this position) is
    /// committed to its Delta table first.
    async fn close(&mut self, table: &TableName) -> Result<()> {
        if let Some(mut mirror) = self.mirrors.remove(table) {
            if mirror.has_changes() && !self.last_end.is_zero() {
                mirror.flush(self.last_end).await?;
            }
            info!(table = %table, location = %mirror.location(), "no longer mirrored");
        }
        self.layouts.retain(|_, l| &l.table != table);
        self.gate_waits.remove(table);
        Ok(())
    }

    /// Applies a configuration change at its position in the stream.
    async fn follow(&mut self, change: Announcement) -> Result<()> {
        match change {
            Announcement::SyncRegistered {
                table,
                location,
                partitioning,
                source,
            } => {
                self.close(&table).await?;
                let time_column = crate::catalog::registry::get_chronotable(&self.client, &table)
                    .await?
                    .map(|ct| ct.time_column)
                    .unwrap_or_default();
                // `sync enable` run again to finish an interrupted copy keeps its snapshot
                // until it takes a new one.
                let start_lsn = self
                    .followed
                    .get(&table)
                    .filter(|f| {
                        f.state == SyncState::Copying
                            && f.location == location
                            && f.partitioning == partitioning
                            && f.source == source
                    })
                    .and_then(|f| f.start_lsn);
                self.followed.insert(
                    table.clone(),
                    Followed {
                        table,
                        time_column,
                        location,
                        partitioning,
                        source,
                        state: SyncState::Copying,
                        start_lsn,
                    },
                );
            }
            Announcement::SyncSnapshot { table, start_lsn } => {
                if let Some(f) = self.followed.get_mut(&table)
                    && f.state == SyncState::Copying
                {
                    f.start_lsn = Some(start_lsn);
                }
            }
            Announcement::SyncActivated { table } => {
                let copying = self
                    .followed
                    .get(&table)
                    .is_some_and(|f| f.state == SyncState::Copying);
                if copying {
                    self.followed.get_mut(&table).expect("checked").state = SyncState::Active;
                    self.open(&table).await?;
                }
            }
            Announcement::SyncDisabled { table } => {
                self.close(&table).await?;
                self.followed.remove(&table);
            }
            Announcement::GateWaiting { table, lock_lsn } => {
                if self.mirrors.contains_key(&table) {
                    let wait = self.gate_waits.entry(table).or_insert(lock_lsn);
                    *wait = (*wait).max(lock_lsn);
                }
            }
            Announcement::LvcEnabled { .. }
            | Announcement::LvcRefilled { .. }
            | Announcement::LvcDisabled { .. }
            | Announcement::RollupsChanged { .. } => {}
        }
        Ok(())
    }

    /// A change of a table in its initial copy, committed at `lsn`: returns once the
    /// table is mirrored or known not to need the change.
    async fn await_copy(&mut self, table: &TableName, lsn: Lsn) -> Result<()> {
        let started = Instant::now();
        let mut warned = Instant::now();
        loop {
            let Some(f) = self.followed.get(table).cloned() else {
                return Ok(());
            };
            match f.start_lsn {
                // No snapshot yet: it will hold this change.
                None => return Ok(()),
                Some(start) if lsn < start => return Ok(()),
                Some(_) => {}
            }
            // The copy's activation comes later in the stream than this change, so the
            // registry tells whether the copy at this place was committed.
            let registered = sync::find_sync(&self.client, table).await?;
            match registered {
                Some(s) if f.same_place(&s) && s.start_lsn == f.start_lsn => {
                    if s.state == SyncState::Active {
                        self.followed.get_mut(table).expect("present").state = SyncState::Active;
                        return self.open(table).await;
                    }
                }
                // Disabled or started over elsewhere meanwhile: this copy never becomes
                // active, and its announcement will say so.
                _ => return Ok(()),
            }
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
                let outcome = self.settle_unlocked_copy(table, &f).await;
                self.client
                    .execute(
                        "SELECT pg_advisory_unlock($1, hashtext($2))",
                        &[&SYNC_LOCK_NAMESPACE, &table.to_string()],
                    )
                    .await
                    .pg_context(|| "releasing the sync lock".into())?;
                return outcome;
            }
            if warned.elapsed() >= Duration::from_secs(10) {
                warned = Instant::now();
                info!(table = %table, waiting = ?started.elapsed(), "the stream waits for the initial copy into Delta");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Nobody holds the copy's lock (this session does now): the copy either finished
    /// between the registry read and the lock, or was abandoned. Read again under the
    /// lock, where the registry cannot change: a finished copy is opened; an abandoned one
    /// is reset, and the next `sync enable` takes a new snapshot (announced), which will
    /// hold this change.
    async fn settle_unlocked_copy(&mut self, table: &TableName, f: &Followed) -> Result<()> {
        match sync::find_sync(&self.client, table).await? {
            Some(s) if f.same_place(&s) && s.start_lsn == f.start_lsn => {
                if s.state == SyncState::Active {
                    self.followed.get_mut(table).expect("present").state = SyncState::Active;
                    return self.open(table).await;
                }
                sync_registry::reset_abandoned_copy(&self.client, table, f.start_lsn).await?;
                if let Some(f) = self.followed.get_mut(table) {
                    f.start_lsn = None;
                }
                warn!(table = %table, "the initial copy into Delta was interrupted; run `lakets sync enable` again");
                Ok(())
            }
            // Disabled or started over elsewhere meanwhile: its announcement will say so.
            _ => Ok(()),
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
        // In a shared table, a column another cluster added is NULL in this cluster's rows:
        // none of its files holds a value there. (One that does was this cluster's own,
        // dropped or renamed since.)
        let mut others_columns = HashSet::new();
        if lacks_columns && !replay && mirror.shape.source.is_some() {
            let missing: Vec<String> = mirror
                .shape
                .columns
                .iter()
                .filter(|c| relation.column_index(&c.name).is_none())
                .map(|c| c.name.clone())
                .collect();
            let holding = mirror.columns_with_values(&missing).await?;
            others_columns.extend(missing.into_iter().filter(|c| !holding.contains(c)));
        }
        let mut sources = Vec::with_capacity(mirror.shape.columns.len());
        for column in &mirror.shape.columns {
            let Some(index) = relation.column_index(&column.name) else {
                if replay
                    || in_postgres.contains(&column.name)
                    || others_columns.contains(&column.name)
                {
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
            if sources.contains(&Some(index)) || mirror.shape.is_derived(&rc.name) {
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
            Arc::new(Layout {
                table: relation.table.clone(),
                sources,
                key_columns: Arc::new(key_columns),
            }),
        );
        Ok(())
    }

    async fn layout(
        &mut self,
        relation: &Relation,
        commit_lsn: Lsn,
    ) -> Result<Option<Arc<Layout>>> {
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

    /// Whether a change of `table` committed at `lsn` waits for its initial copy.
    fn copying(&self, table: &TableName) -> bool {
        self.followed
            .get(table)
            .is_some_and(|f| f.state == SyncState::Copying)
    }

    async fn apply_change(&mut self, change: &Change, xid: u32, commit_lsn: Lsn) -> Result<()> {
        let relation = match change {
            Change::Schema { relation, .. } => {
                if self.mirrors.contains_key(&relation.table) {
                    self.learn_relation(relation, commit_lsn).await?;
                }
                return Ok(());
            }
            Change::Message { prefix, content } => {
                if prefix == announce::PREFIX
                    && let Some(change) = announce::verify(&self.client, content, xid).await?
                {
                    self.follow(change).await?;
                }
                return Ok(());
            }
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => relation,
            Change::Truncate { relations, .. } => {
                for r in relations {
                    if self.copying(&r.table) {
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
                        let keep = crate::catalog::registry::dropped_ranges(&self.client, &r.table)
                            .await?;
                        let m = self.mirrors.get_mut(&r.table).expect("checked above");
                        warn!(table = %r.table, location = %m.location(), kept_ranges = keep.len(), "TRUNCATE mirrored: the rows of the hot chunks leave the Delta table (earlier versions keep them until vacuum); the dropped chunks' history stays");
                        m.truncate(keep).await?;
                    }
                }
                return Ok(());
            }
        };
        if self.copying(&relation.table) {
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
                check_update_old(relation, old.as_ref(), &[], "cold tier mirror")?;
                let (old_key, old_full) = match old {
                    Some(o) => {
                        let old_row = cells(&o.values)?;
                        (key_of(&old_row), (!o.key_only).then_some(old_row))
                    }
                    None => (key_of(&new_row), None),
                };
                mirror
                    .update(&layout.key_columns, old_key, old_full, new_row, commit_lsn)
                    .await?;
            }
            Change::Delete { old, .. } => {
                old.require(relation, &[], "cold tier mirror")?;
                let old_row = cells(&old.values)?;
                mirror
                    .delete(&layout.key_columns, key_of(&old_row), commit_lsn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Compacts, checkpoints and vacuums each mirrored table, recording the run in
    /// `lakets._job_runs`. A failure is recorded and logged; the stream goes on.
    async fn maintain(&mut self, schedule: &MaintenanceSchedule) -> Result<()> {
        let id = job_runs::start_run(&self.client, MAINTENANCE_JOB, &schedule.instance).await?;
        let started = Instant::now();
        let mut details = Vec::new();
        let mut files = 0i64;
        let mut failure = None;
        let mut tables: Vec<TableName> = self.mirrors.keys().cloned().collect();
        tables.sort_by_key(|t| t.to_string());
        for name in tables {
            let mirror = self.mirrors.get_mut(&name).expect("listed above");
            match mirror.maintain(&schedule.policy).await {
                Ok(Some(done)) => {
                    files += (done.compaction.files_removed + done.vacuumed_files) as i64;
                    details.push(serde_json::json!({
                        "table": name.to_string(),
                        "compaction": done.compaction,
                        "vacuumed_files": done.vacuumed_files,
                    }));
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(table = %name, error = %e, "Delta maintenance failed");
                    failure.get_or_insert_with(|| format!("{name}: {e}"));
                }
            }
        }
        let outcome = if failure.is_some() { "failed" } else { "ok" };
        metrics::histogram!("lakets_job_duration_seconds", "job_name" => MAINTENANCE_JOB)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("lakets_job_runs_total", "job_name" => MAINTENANCE_JOB, "outcome" => outcome)
            .increment(1);
        job_runs::finish_run(
            &self.client,
            id,
            outcome,
            failure.as_deref(),
            Some(files),
            Some(&serde_json::Value::Array(details)),
        )
        .await
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
        for change in &slice.changes {
            self.apply_change(change, slice.xid, slice.commit_lsn)
                .await?;
        }
        if let Some(end) = slice.end_lsn {
            self.last_end = end;
        }
        Ok(())
    }

    async fn flush(&mut self, through: Lsn) -> Result<()> {
        let started = Instant::now();
        let mut committed = false;
        for (name, mirror) in self.mirrors.iter_mut() {
            if !mirror.has_changes() {
                continue;
            }
            let outcome = mirror.flush(through).await?;
            metrics::counter!("lakets_delta_rows_written_total", "table" => name.to_string())
                .increment(outcome.rows_written as u64);
            metrics::counter!("lakets_delta_commits_total", "table" => name.to_string())
                .increment(1);
            committed = true;
        }
        progress::store_with_config(&self.client, &self.slot, NAME, through, &self.config_json())
            .await?;
        if committed {
            metrics::histogram!("lakets_delta_flush_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn tick(&mut self, position: Lsn) -> Result<()> {
        // The gate's evidence: tables it waits on record the position in a commit of
        // their own when they had nothing to commit.
        let waits: Vec<(TableName, Lsn)> = self.gate_waits.drain().collect();
        for (table, lock_lsn) in waits {
            let Some(mirror) = self.mirrors.get_mut(&table) else {
                continue;
            };
            if mirror.skip_before < lock_lsn && mirror.mark_position(position).await? {
                metrics::counter!("lakets_delta_commits_total", "table" => table.to_string())
                    .increment(1);
            }
            if mirror.skip_before < lock_lsn {
                self.gate_waits.insert(table, lock_lsn);
            }
        }
        if let Some(schedule) = self.maintenance.clone()
            && self
                .last_maintenance
                .is_none_or(|t| t.elapsed() >= schedule.every)
        {
            self.last_maintenance = Some(Instant::now());
            self.maintain(&schedule).await?;
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

/// The Delta mirror in the operator list ([`crate::operators::COMPONENTS`]).
pub struct SinkComponent;

pub static COMPONENT: SinkComponent = SinkComponent;

impl crate::operators::Component for SinkComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach<'a>(
        &'a self,
        pipeline: crate::wal::Pipeline,
        ctx: &'a crate::operators::Attach<'a>,
    ) -> crate::wal::pipeline::BoxFuture<'a, Result<crate::wal::Pipeline>> {
        Box::pin(async move {
            let mut operator =
                DeltaSink::new(crate::db::connect_with(ctx.db).await?, ctx.slot).await?;
            if let Some(schedule) = &ctx.maintenance {
                operator = operator.with_maintenance(schedule.clone());
            }
            Ok(pipeline.operator(operator))
        })
    }

    fn state_registry(&self) -> Option<crate::catalog::registry::FeatureRegistry> {
        Some(crate::catalog::registry::FeatureRegistry::Sync)
    }

    fn resync<'a>(
        &'a self,
        db: &'a crate::db::DbConfig,
        client: &'a mut Client,
        report: &'a mut crate::coldtier::resync::ResyncReport,
    ) -> crate::operators::LocalBoxFuture<'a, Result<()>> {
        Box::pin(crate::coldtier::resync::resync_tables(db, client, report))
    }
}
