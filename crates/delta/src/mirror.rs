//! One synced table's Delta mirror: the changes of a flush window, in commit order, turned
//! into one Delta commit that carries the window's end LSN.
//!
//! - Inserts are buffered as cells and handed to the Parquet writer when the buffer grows;
//!   it streams them to storage, and its files are sealed ("staged": written but not
//!   committed) at the flush or when a delete needs a boundary. A huge transaction never
//!   sits in memory, and it still makes files of the target size.
//! - A delete (or the old half of an update) first cancels a matching row inserted earlier
//!   in the window and still buffered. Otherwise it is kept as a key, stamped with how
//!   many files were staged when it came (its epoch): at flush it removes one matching row
//!   from the committed files and from the files staged before it, never from rows
//!   inserted after it. The files it touches are rewritten (copy-on-write), pruned by the
//!   partition of the deleted row's time when the time column is part of the key (every
//!   file otherwise, or when the table is not partitioned). A delete whose row is in no
//!   file means the mirror has diverged: the flush fails for good, naming the row.
//! - An update whose new row has an unchanged TOAST value takes it from the row it
//!   replaces (the buffered row, the old row sent with REPLICA IDENTITY FULL, or the row
//!   found in the file at flush; until then later changes of that row see it waiting).
//! - A window without deletes is a plain append: staged files plus a `txn` action.
//! - With deletion vectors, a delete's row in a committed file is marked in the file's
//!   vector instead: the file is re-added with the old vector's rows and the new ones
//!   (its rows at those positions read once, for TOAST values and change data). Files the
//!   window staged itself are still rewritten (they are small and were never committed).
//! - With Change Data Feed, a window whose commit removes files also writes its net
//!   changes as change data ([`super::change_data`]) into the same commit.
//!
//! Other writers exist (a Databricks OPTIMIZE, the service's own compaction through this
//! mirror, other sources in a later release), so a window that removes files chooses them
//! from the latest table version and commits exactly on it; when another commit landed in
//! between, it chooses again ([`table::try_commit`]).
//!
//! Memory: rewriting a file reads it a batch at a time, twice: first only the key columns,
//! to find the rows to remove, then (for files that hold one) every column, writing the
//! rows that stay as it goes. A delete into a compacted 128 MB file costs a batch, not the
//! file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::kernel::{Action, Add, Remove};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures_util::TryStreamExt;
use tracing::{debug, info};

use super::batch::{CellRow, build_batch, cell_at};
use super::maintenance::{self, CompactionOutcome};
use super::schema::{Cell, ColumnKind, DataColumn, Partitioning, SOURCE_COLUMN, TableShape};
use super::table;
use crate::error::{DeltaResultExt, Error, Result};
use crate::wal::lsn::Lsn;

/// The commitInfo key of the WAL positions a mirror commit holds (`after`, `through`).
pub const LSN_RANGE_KEY: &str = "lakets.lsnRange";

/// Buffered inserts go to the Parquet writer (which streams them to storage) beyond this
/// many rows...
const SPILL_ROWS: usize = 32 * 1024;
/// ... or this many bytes of cells.
const SPILL_BYTES: usize = 16 << 20;
/// Rows per record batch handed to the Parquet writer.
const BATCH_ROWS: usize = 32 * 1024;
/// A window meeting other writers' commits this many times in a row fails (transiently).
const MAX_COMMIT_ATTEMPTS: usize = 10;

/// What one flush committed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlushOutcome {
    pub version: Option<i64>,
    pub rows_written: usize,
    pub files_added: usize,
    pub files_removed: usize,
    /// Times the window met another writer's commit and chose its files again.
    pub retries: usize,
    /// Rows of change data the commit carries (Change Data Feed; only commits that remove
    /// files carry any).
    pub change_rows: usize,
}

struct PendingDelete {
    key_columns: Arc<Vec<usize>>,
    key: CellRow,
    /// Files staged before this delete (it applies to those and to committed files).
    epoch: usize,
    /// The partition of the deleted row, when its time is part of the key.
    partition: Option<i32>,
    /// Commit LSN of the change it mirrors (named when its row is missing).
    at: Lsn,
    /// A later TRUNCATE in the window removed every row before it.
    cancelled: bool,
    /// Set by the rewrite: the whole row it removed (to fill unchanged TOAST values of an
    /// update).
    removed: Option<CellRow>,
    /// Set by the rewrite: the row it removed was in a committed file (it existed before
    /// the window, rather than being inserted in it).
    preexisting: bool,
}

/// Positions of rows by key.
type KeyIndex = hashbrown::HashMap<CellRow, Vec<usize>>;

#[derive(Default)]
struct Window {
    pending: Vec<Option<CellRow>>,
    live: usize,
    pending_bytes: usize,
    /// Positions in `pending` by key, built on the first delete of the window.
    index: Option<(Arc<Vec<usize>>, KeyIndex)>,
    staged: Vec<Add>,
    deletes: Vec<PendingDelete>,
    /// New rows of updates waiting for an unchanged TOAST value from delete `.0`.
    toast_rows: Vec<(usize, CellRow)>,
    /// A TRUNCATE came: every committed file goes (but the rows of `truncate_keeps`),
    /// and staged files before `.0`.
    truncated_at: Option<usize>,
    /// Time ranges (microseconds, end exclusive) whose rows a TRUNCATE leaves in the
    /// table: those of chunks already dropped from PostgreSQL, which only the cold tier
    /// holds (a TRUNCATE removes the rows PostgreSQL has, like a DELETE of all of them).
    truncate_keeps: Vec<(i64, i64)>,
    changes: usize,
    /// Rows inserted (for metrics).
    inserted: usize,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.changes == 0
    }

    fn live_deletes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.deletes.len()).filter(|&d| !self.deletes[d].cancelled)
    }
}

/// What one attempt at a rewrite produced (undone when the commit meets another writer).
#[derive(Default)]
struct Rewrite {
    removes: Vec<Remove>,
    /// Staged files replaced by rewritten ones (never committed).
    dropped_staged: HashSet<usize>,
    /// Files holding the rows that stay of rewritten committed files (no change of the
    /// window's: kept apart from the window's own rows, which are its inserts).
    carried: Vec<Add>,
    /// Committed files whose every row a TRUNCATE deletes (read for change data).
    truncated_whole: Vec<table::DataFile>,
    /// Committed files re-added with a new deletion vector (instead of rewritten).
    marked: Vec<Add>,
    /// The deletion vector file of this attempt, if it wrote one.
    vector_file: Option<String>,
    rows_written: usize,
}

pub struct TableMirror {
    pub shape: TableShape,
    pub table: DeltaTable,
    /// The `txn` application id of this table's commits.
    pub app_id: String,
    /// Changes committed before this LSN are in the table already.
    pub skip_before: Lsn,
    window: Window,
    writer: Option<RecordBatchWriter>,
    /// The writer holds rows not sealed into staged files yet.
    unsealed: bool,
    /// The writer of the rows a rewrite keeps of committed files.
    carry: Option<RecordBatchWriter>,
    /// The writer of change data (a window that removes files, in a table with Change
    /// Data Feed).
    changes: Option<RecordBatchWriter>,
    change_rows: usize,
    /// When maintenance last looked for files no commit references (a listing of the
    /// table's whole storage).
    orphans_vacuumed: Option<std::time::Instant>,
}

/// How often maintenance lists a table's storage for orphaned files.
const ORPHAN_VACUUM_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl TableMirror {
    pub fn new(shape: TableShape, table: DeltaTable, app_id: String, skip_before: Lsn) -> Self {
        TableMirror {
            shape,
            table,
            app_id,
            skip_before,
            window: Window::default(),
            writer: None,
            unsealed: false,
            carry: None,
            changes: None,
            change_rows: 0,
            orphans_vacuumed: None,
        }
    }

    pub fn location(&self) -> String {
        table::display_location(self.table.table_url())
    }

    pub fn has_changes(&self) -> bool {
        !self.window.is_empty()
    }

    /// Approximate memory held by the window.
    pub fn buffered_bytes(&self) -> usize {
        self.window.pending_bytes
    }

    pub async fn insert(&mut self, row: CellRow) -> Result<()> {
        self.window.changes += 1;
        self.window.inserted += 1;
        self.window.pending_bytes += row.iter().map(Cell::size).sum::<usize>();
        let position = self.window.pending.len();
        if let Some((cols, index)) = &mut self.window.index {
            let key: CellRow = cols.iter().map(|&i| row[i].clone()).collect();
            index.entry(key).or_default().push(position);
        }
        self.window.pending.push(Some(row));
        self.window.live += 1;
        if self.window.live >= SPILL_ROWS || self.window.pending_bytes >= SPILL_BYTES {
            self.spill().await?;
        }
        Ok(())
    }

    /// Removes the row with `key` (values of `key_columns`), deleted by the change
    /// committed at `at`; returns the removed row when it was still buffered, else the
    /// index of the delete kept for the flush.
    pub async fn delete(
        &mut self,
        key_columns: &Arc<Vec<usize>>,
        key: CellRow,
        at: Lsn,
    ) -> Result<DeleteOutcome> {
        self.window.changes += 1;
        if self
            .window
            .index
            .as_ref()
            .is_none_or(|(cols, _)| cols != key_columns)
        {
            self.build_index(key_columns);
        }
        let (_, index) = self.window.index.as_mut().expect("index built above");
        if let Some(positions) = index.get_mut(&key) {
            while let Some(p) = positions.pop() {
                if let Some(row) = self.window.pending[p].take() {
                    self.window.live -= 1;
                    return Ok(DeleteOutcome::Buffered(row));
                }
            }
        }
        // A new row of an update still waiting for its unchanged TOAST value from the
        // files: this change replaces it, and inherits what it waits for.
        if let Some(pos) = self
            .window
            .toast_rows
            .iter()
            .position(|(_, row)| key_columns.iter().map(|&i| &row[i]).eq(key.iter()))
        {
            let (d, row) = self.window.toast_rows.remove(pos);
            return Ok(DeleteOutcome::Waiting(d, row));
        }
        // The delete applies to every row written before it, so those must be in sealed
        // files it can name.
        if self.unsealed {
            self.seal().await?;
        }
        let partition = key_columns
            .iter()
            .position(|&i| i == self.shape.time_index)
            .and_then(|k| self.shape.partition_of_cell(&key[k]));
        self.window.deletes.push(PendingDelete {
            key_columns: key_columns.clone(),
            key,
            epoch: self.window.staged.len(),
            partition,
            at,
            cancelled: false,
            removed: None,
            preexisting: false,
        });
        Ok(DeleteOutcome::Kept(self.window.deletes.len() - 1))
    }

    /// An update committed at `at`: the old row goes, `new` comes; unchanged TOAST cells
    /// of `new` are taken from the row it replaces (`old_full` when the old row came whole).
    pub async fn update(
        &mut self,
        key_columns: &Arc<Vec<usize>>,
        old_key: CellRow,
        old_full: Option<CellRow>,
        mut new: CellRow,
        at: Lsn,
    ) -> Result<()> {
        let outcome = self.delete(key_columns, old_key, at).await?;
        self.window.changes -= 1; // counted once, by the insert below
        if new.contains(&Cell::Unchanged) {
            if let Some(full) = old_full.as_ref().filter(|f| !f.contains(&Cell::Unchanged)) {
                fill_unchanged(&mut new, full);
            }
            match &outcome {
                DeleteOutcome::Buffered(row) => fill_unchanged(&mut new, row),
                // The replaced row itself waits for values from the files: take what it
                // has, and wait for the rest from the same delete.
                DeleteOutcome::Waiting(_, row) => fill_known(&mut new, row),
                DeleteOutcome::Kept(_) => {}
            }
            if new.contains(&Cell::Unchanged) {
                let d = match outcome {
                    DeleteOutcome::Kept(d) | DeleteOutcome::Waiting(d, _) => d,
                    DeleteOutcome::Buffered(_) => unreachable!("a buffered row is whole"),
                };
                self.window.changes += 1;
                self.window.toast_rows.push((d, new));
                return Ok(());
            }
        }
        self.insert(new).await
    }

    /// Mirrors a TRUNCATE: every row leaves the table but those in `keep` (time ranges in
    /// microseconds, end exclusive).
    pub async fn truncate(&mut self, keep: Vec<(i64, i64)>) -> Result<()> {
        // Rows written before the TRUNCATE must be in files it can drop.
        if self.unsealed {
            self.seal().await?;
        }
        self.window.changes += 1;
        self.window.pending.clear();
        self.window.live = 0;
        self.window.pending_bytes = 0;
        self.window.index = None;
        for d in &mut self.window.deletes {
            d.cancelled = true; // nothing left for them to remove
        }
        self.window.toast_rows.clear();
        self.window.truncated_at = Some(self.window.staged.len());
        self.window.truncate_keeps = keep;
        Ok(())
    }

    /// Adds columns to the Delta schema (ADD COLUMN in PostgreSQL), committed at once.
    /// Rows buffered with the old shape read NULL in the new columns.
    pub async fn add_columns(&mut self, columns: Vec<DataColumn>) -> Result<()> {
        if columns.is_empty() {
            return Ok(());
        }
        // Files written with the old schema are complete; the next writer uses the new one.
        self.spill().await?;
        self.seal().await?;
        self.writer = None;
        self.table = table::add_columns(&self.table, &columns).await?;
        self.shape.columns.extend(columns);
        Ok(())
    }

    /// Records `through` as this table's durable position with a commit holding only the
    /// `txn` action: the table had no change since its last commit, and the durability
    /// gate reads its evidence from this version. Nothing to do with a window open (its
    /// flush carries the position) or when the table is there already.
    pub async fn mark_position(&mut self, through: Lsn) -> Result<bool> {
        if self.has_changes() || through <= self.skip_before {
            return Ok(false);
        }
        let app_id = self.app_id.clone();
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(self.shape.partition_columns()),
            predicate: None,
        };
        table::commit(
            &mut self.table,
            Vec::new(),
            operation,
            Some((&app_id, through)),
        )
        .await?;
        self.skip_before = through;
        Ok(true)
    }

    /// Compacts small files, then checkpoints and vacuums, between two windows (the
    /// mirror is the only writer of its own files, so it never races itself). Nothing
    /// while a window is open.
    pub async fn maintain(&mut self, policy: &MaintenancePolicy) -> Result<Option<Maintained>> {
        if self.has_changes() {
            return Ok(None);
        }
        let mut compaction = CompactionOutcome::default();
        for attempt in 1..=MAX_COMMIT_ATTEMPTS {
            table::refresh(&mut self.table).await?;
            match maintenance::compact(
                &mut self.table,
                &self.shape,
                policy.compact_min_files,
                policy.small_file_bytes,
            )
            .await?
            {
                Some(outcome) => {
                    compaction = outcome;
                    break;
                }
                None if attempt == MAX_COMMIT_ATTEMPTS => {
                    info!(table = %self.location(), "compaction postponed: other writers keep committing");
                }
                None => {}
            }
        }
        maintenance::checkpoint(&self.table).await?;
        // Never in a shared table: another cluster's copy or window may hold files it has
        // not committed yet for longer than the retention.
        let orphans = self.shape.source.is_none()
            && self
                .orphans_vacuumed
                .is_none_or(|at| at.elapsed() >= ORPHAN_VACUUM_EVERY);
        let vacuumed =
            maintenance::vacuum(&mut self.table, policy.vacuum_retention, orphans).await?;
        if orphans {
            self.orphans_vacuumed = Some(std::time::Instant::now());
        }
        Ok(Some(Maintained {
            compaction,
            vacuumed_files: vacuumed,
        }))
    }

    /// Which of `columns` some of this cluster's files may hold a value in, by the files'
    /// statistics, read once for all of them (a file whose statistics do not say counts as
    /// holding one; a file written before a column existed has no statistics of it and
    /// holds none). `&mut self`: the mirror is not `Sync`, and the caller's future must
    /// stay `Send`.
    pub async fn columns_with_values(&mut self, columns: &[String]) -> Result<HashSet<String>> {
        let mut holding = HashSet::new();
        for file in super::read::files_of(&self.table, &self.shape).await? {
            let stats = file
                .stats()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
            let records = stats
                .as_ref()
                .and_then(|s| s.get("numRecords"))
                .and_then(|n| n.as_u64());
            let null_counts = stats
                .as_ref()
                .and_then(|s| s.get("nullCount"))
                .and_then(|n| n.as_object());
            for column in columns {
                let holds = match null_counts {
                    None => true,
                    Some(counts) => match (records, counts.get(column).and_then(|n| n.as_u64())) {
                        // Statistics cover the first 32 columns: past them, a missing
                        // count says nothing.
                        (_, None) => counts.len() >= 32,
                        (Some(r), Some(nulls)) => nulls < r,
                        (None, Some(_)) => true,
                    },
                };
                if holds {
                    holding.insert(column.clone());
                }
            }
            if holding.len() == columns.len() {
                break;
            }
        }
        Ok(holding)
    }

    /// Whether deletes go into deletion vectors (the table has the feature and asks for it).
    fn deletion_vectors(&self) -> Result<bool> {
        Ok(super::protocol::deletion_vectors(self.state()?))
    }

    /// Whether the table as loaded asks for change data (`delta.enableChangeDataFeed`).
    fn change_data(&self) -> Result<bool> {
        Ok(super::protocol::change_data_feed(self.state()?))
    }

    fn state(&self) -> Result<&deltalake::table::state::DeltaTableState> {
        self.table
            .snapshot()
            .delta_context(|| format!("reading {}", self.location()))
    }

    fn build_index(&mut self, key_columns: &Arc<Vec<usize>>) {
        let mut index = KeyIndex::new();
        for (p, row) in self.window.pending.iter().enumerate() {
            if let Some(row) = row {
                let key = key_columns.iter().map(|&i| row[i].clone()).collect();
                index.entry(key).or_default().push(p);
            }
        }
        self.window.index = Some((key_columns.clone(), index));
    }

    fn writer(&mut self) -> Result<&mut RecordBatchWriter> {
        if self.writer.is_none() {
            self.writer = Some(table::writer(&self.table)?);
        }
        Ok(self.writer.as_mut().expect("set above"))
    }

    async fn write_rows(&mut self, rows: &[&CellRow]) -> Result<()> {
        let location = self.location();
        for chunk in rows.chunks(BATCH_ROWS) {
            let batch = build_batch(&self.shape, chunk)?;
            table::write_batch(self.writer()?, batch)
                .await
                .delta_context(|| format!("writing Parquet to {location}"))?;
            self.unsealed = true;
        }
        Ok(())
    }

    /// Seals what the writer holds into staged files.
    async fn seal(&mut self) -> Result<()> {
        self.unsealed = false;
        if let Some(writer) = self.writer.as_mut() {
            let location = table::display_location(self.table.table_url());
            let adds = writer
                .flush()
                .await
                .delta_context(|| format!("writing Parquet to {location}"))?;
            self.window.staged.extend(adds);
        }
        Ok(())
    }

    /// Writes rows a rewrite keeps of a committed file (not changes of the window).
    async fn carry_rows(&mut self, rows: &[&CellRow]) -> Result<()> {
        let location = self.location();
        for chunk in rows.chunks(BATCH_ROWS) {
            let batch = build_batch(&self.shape, chunk)?;
            if self.carry.is_none() {
                self.carry = Some(table::writer(&self.table)?);
            }
            let writer = self.carry.as_mut().expect("set above");
            table::write_batch(writer, batch)
                .await
                .delta_context(|| format!("writing Parquet to {location}"))?;
        }
        Ok(())
    }

    /// Seals the carried rows into files of `out`.
    async fn seal_carry(&mut self, out: &mut Rewrite) -> Result<()> {
        if let Some(mut writer) = self.carry.take() {
            let location = self.location();
            out.carried.extend(
                writer
                    .flush()
                    .await
                    .delta_context(|| format!("writing Parquet to {location}"))?,
            );
        }
        Ok(())
    }

    /// Writes rows of change data, `types[i]` the change of `rows[i]`.
    async fn write_change_rows(&mut self, rows: &[&CellRow], types: &[&'static str]) -> Result<()> {
        let location = self.location();
        for (chunk, kinds) in rows.chunks(BATCH_ROWS).zip(types.chunks(BATCH_ROWS)) {
            let batch = build_batch(&self.shape, chunk)?;
            if self.changes.is_none() {
                self.changes = Some(super::change_data::change_writer(&self.table)?);
            }
            let writer = self.changes.as_mut().expect("set above");
            super::change_data::write_changes(writer, batch, kinds.to_vec())
                .await
                .delta_context(|| format!("writing change data to {location}"))?;
            self.change_rows += chunk.len();
        }
        Ok(())
    }

    /// The change data of a window whose commit removes files (`out`): every change it
    /// makes, net of the changes it cancels itself (a row inserted and deleted in the
    /// window is no change). Its new rows are inserts, or post-images where a row with
    /// the same key left a committed file; the rows that left committed files are deletes,
    /// or the pre-images of those updates; a TRUNCATE's rows are deletes. Returns the `cdc`
    /// actions.
    async fn write_change_data(&mut self, out: &Rewrite) -> Result<Vec<Action>> {
        const INSERT: &str = "insert";
        const DELETE: &str = "delete";
        for file in &out.truncated_whole {
            let mut batches = table::open_live(&self.table, file, None).await?;
            while let Some(batch) = batches.next().await? {
                let rows = super::read::rows_to_rewrite(&batch, &self.shape, &file.path)?;
                let refs: Vec<&CellRow> = rows.iter().collect();
                self.write_change_rows(&refs, &vec![DELETE; refs.len()])
                    .await?;
            }
        }
        // The rows that left committed files, by key (per key column set).
        let mut preimages: HashMap<Arc<Vec<usize>>, KeyIndex> = HashMap::new();
        let left: Vec<usize> = self
            .window
            .live_deletes()
            .filter(|&d| {
                let del = &self.window.deletes[d];
                del.preexisting && del.removed.is_some()
            })
            .collect();
        for &d in &left {
            let del = &self.window.deletes[d];
            preimages
                .entry(del.key_columns.clone())
                .or_default()
                .entry(del.key.clone())
                .or_default()
                .push(d);
        }
        let (mut updated, mut unchanged) = (HashSet::new(), HashSet::new());
        let new_files: Vec<String> = self
            .window
            .staged
            .iter()
            .enumerate()
            .filter(|(i, _)| !out.dropped_staged.contains(i))
            .map(|(_, add)| url_path(&add.path))
            .collect();
        for path in new_files {
            let file = table::DataFile::staged(path);
            let mut batches = table::open_live(&self.table, &file, None).await?;
            let path = &file.path;
            while let Some(batch) = batches.next().await? {
                let rows = super::read::rows_to_rewrite(&batch, &self.shape, path)?;
                let mut changed = Vec::with_capacity(rows.len());
                let mut kinds = Vec::with_capacity(rows.len());
                for row in &rows {
                    let mut kind = Some(INSERT);
                    for (cols, keys) in preimages.iter_mut() {
                        let key: CellRow = cols.iter().map(|&i| row[i].clone()).collect();
                        if let Some(d) = keys.get_mut(&key).and_then(Vec::pop) {
                            // Back as it was (updated and updated back, or an UPDATE
                            // that set what was there): no change.
                            kind = if self.window.deletes[d].removed.as_ref() == Some(row) {
                                unchanged.insert(d);
                                None
                            } else {
                                updated.insert(d);
                                Some("update_postimage")
                            };
                            break;
                        }
                    }
                    if let Some(kind) = kind {
                        changed.push(row);
                        kinds.push(kind);
                    }
                }
                self.write_change_rows(&changed, &kinds).await?;
            }
        }
        let left: Vec<usize> = left
            .into_iter()
            .filter(|d| !unchanged.contains(d))
            .collect();
        let old_rows: Vec<CellRow> = left
            .iter()
            .filter_map(|&d| self.window.deletes[d].removed.clone())
            .collect();
        let kinds: Vec<&'static str> = left
            .iter()
            .map(|d| {
                if updated.contains(d) {
                    "update_preimage"
                } else {
                    DELETE
                }
            })
            .collect();
        let refs: Vec<&CellRow> = old_rows.iter().collect();
        self.write_change_rows(&refs, &kinds).await?;
        let Some(mut writer) = self.changes.take() else {
            return Ok(Vec::new());
        };
        let location = self.location();
        let adds = writer
            .flush()
            .await
            .delta_context(|| format!("writing change data to {location}"))?;
        Ok(adds
            .into_iter()
            .map(super::change_data::change_file)
            .collect())
    }

    /// Hands the buffered inserts to the writer.
    async fn spill(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.window.pending);
        let rows: Vec<&CellRow> = pending.iter().flatten().collect();
        if !rows.is_empty() {
            self.write_rows(&rows).await?;
        }
        self.window.live = 0;
        self.window.pending_bytes = 0;
        self.window.index = None;
        Ok(())
    }

    /// Commits the window as one Delta version carrying `through`.
    pub async fn flush(&mut self, through: Lsn) -> Result<FlushOutcome> {
        if self.window.is_empty() {
            return Ok(FlushOutcome::default());
        }
        let result = self.commit_window(through).await;
        if result.is_err() {
            // The window is lost with the error: the pipeline restarts from the durable
            // LSN and streams it again. Staged files stay orphans until a vacuum lists the storage.
            self.window = Window::default();
            self.writer = None;
            self.unsealed = false;
            self.carry = None;
            self.changes = None;
            self.change_rows = 0;
        }
        result
    }

    async fn commit_window(&mut self, through: Lsn) -> Result<FlushOutcome> {
        self.spill().await?;
        self.seal().await?;
        let rewrites =
            self.window.truncated_at.is_some() || self.window.live_deletes().next().is_some();
        let base_staged = self.window.staged.len();
        let toast_rows = std::mem::take(&mut self.window.toast_rows);
        let mut retries = 0;
        loop {
            let mut rewrite = Rewrite::default();
            if rewrites {
                // Choose the files to rewrite from the latest version: another writer
                // may have compacted or rewritten them since our own last commit.
                table::refresh(&mut self.table).await?;
                self.rewrite(&mut rewrite).await?;
            }
            if !toast_rows.is_empty() {
                let mut filled = Vec::with_capacity(toast_rows.len());
                for (d, row) in &toast_rows {
                    let old = self.window.deletes[*d].removed.as_ref().ok_or_else(|| {
                        Error::Diverged(format!(
                            "an update of {} kept an unchanged TOAST value of a row that is \
                             not in the Delta table; set REPLICA IDENTITY FULL on the table \
                             (lakets chronotable replica-identity) so that updates carry the \
                             whole old row, then `lakets resync --force`",
                            self.location()
                        ))
                    })?;
                    let mut row = row.clone();
                    fill_unchanged(&mut row, old);
                    filled.push(row);
                }
                let refs: Vec<&CellRow> = filled.iter().collect();
                rewrite.rows_written += refs.len();
                self.write_rows(&refs).await?;
                self.seal().await?;
            }

            // With Change Data Feed, a commit that removes files carries every change it
            // makes as change data (readers then take its changes from those files alone;
            // an append's adds are its inserts).
            let change_files = if !rewrite.removes.is_empty() && self.change_data()? {
                self.write_change_data(&rewrite).await?
            } else {
                Vec::new()
            };
            let change_rows = std::mem::take(&mut self.change_rows);
            // Files of this attempt that no version holds if it does not land.
            let attempt_files: Vec<String> = rewrite
                .carried
                .iter()
                .map(|a| a.path.clone())
                .chain(rewrite.vector_file.clone())
                .chain(change_files.iter().filter_map(|a| match a {
                    Action::Cdc(c) => Some(c.path.clone()),
                    _ => None,
                }))
                .collect();

            let mut actions: Vec<Action> = Vec::new();
            let mut files_added = 0;
            for (i, add) in self.window.staged.iter().enumerate() {
                if !rewrite.dropped_staged.contains(&i) {
                    files_added += 1;
                    actions.push(Action::Add(add.clone()));
                }
            }
            files_added += rewrite.carried.len() + rewrite.marked.len();
            actions.extend(rewrite.carried.into_iter().map(Action::Add));
            actions.extend(rewrite.marked.into_iter().map(Action::Add));
            actions.extend(change_files);
            let files_removed = rewrite.removes.len();
            let operation = if rewrite.removes.is_empty() {
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: Some(self.shape.partition_columns()),
                    predicate: None,
                }
            } else {
                DeltaOperation::Delete {
                    predicate: Some("rows deleted or updated in PostgreSQL".into()),
                }
            };
            actions.extend(rewrite.removes.into_iter().map(Action::Remove));
            let app_id = self.app_id.clone();
            // The PostgreSQL transactions the commit holds: those committed after `after`
            // up to `through` (commit end LSNs), for readers lining changes up with them.
            let info = vec![(
                LSN_RANGE_KEY.to_owned(),
                serde_json::json!({
                    "after": self.skip_before.to_string(),
                    "through": through.to_string(),
                }),
            )];
            match table::try_commit_with(
                &mut self.table,
                actions,
                operation,
                Some((&app_id, through)),
                info,
            )
            .await?
            {
                Some(version) => {
                    let outcome = FlushOutcome {
                        version: Some(version),
                        rows_written: self.window.inserted + rewrite.rows_written,
                        files_added,
                        files_removed,
                        retries,
                        change_rows,
                    };
                    // Staged files a rewrite replaced were never part of a version.
                    for i in rewrite.dropped_staged {
                        table::delete_uncommitted(&self.table, &self.window.staged[i].path).await;
                    }
                    self.skip_before = through;
                    self.window = Window::default();
                    debug!(table = %self.location(), version, ?outcome, "committed to Delta");
                    return Ok(outcome);
                }
                None => {
                    // Another writer committed since the version the rewrite read: undo
                    // this attempt (the files it wrote, the rows it found) and choose again.
                    retries += 1;
                    if retries >= MAX_COMMIT_ATTEMPTS {
                        return Err(Error::Delta {
                            context: format!(
                                "committing to the Delta table at {}",
                                self.location()
                            ),
                            message: format!(
                                "other writers committed {retries} times while this window \
                                 was rewriting its files; the window is streamed again"
                            ),
                        });
                    }
                    for add in self.window.staged.drain(base_staged..) {
                        table::delete_uncommitted(&self.table, &add.path).await;
                    }
                    for path in &attempt_files {
                        table::delete_uncommitted(&self.table, path).await;
                    }
                    for d in &mut self.window.deletes {
                        d.removed = None;
                        d.preexisting = false;
                    }
                }
            }
        }
    }

    /// Applies the kept deletes and a TRUNCATE to committed and staged files: the files
    /// they touch are removed and what stays of them written again.
    async fn rewrite(&mut self, out: &mut Rewrite) -> Result<()> {
        let partition_column = self.shape.partition_column.clone();
        let live: Vec<usize> = self.window.live_deletes().collect();
        // Partitions the deletes can touch (None: any).
        let partitions: Option<HashSet<i32>> = if partition_column.is_none() {
            None
        } else {
            live.iter()
                .map(|&d| self.window.deletes[d].partition)
                .collect::<Option<HashSet<i32>>>()
        };
        let wanted = |values: &HashMap<String, Option<String>>| -> bool {
            match (&partitions, &partition_column) {
                (Some(set), Some(col)) => values
                    .get(col)
                    .and_then(|v| v.as_deref())
                    .and_then(parse_partition_date)
                    .is_none_or(|p| set.contains(&p)),
                _ => true,
            }
        };

        // Committed files: all go on TRUNCATE (those that may hold kept rows are filtered);
        // otherwise those the deletes may touch.
        let views = super::read::files_of(&self.table, &self.shape).await?;
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut truncated_files: Vec<(table::DataFile, Remove)> = Vec::new();
        for view in views {
            if self.window.truncated_at.is_some() {
                if self.may_hold_kept_rows(&view.partition_values_map()) {
                    truncated_files.push((table::DataFile::of(&view), view.remove_action(true)));
                } else {
                    out.truncated_whole.push(table::DataFile::of(&view));
                    out.removes.push(view.remove_action(true));
                }
                continue;
            }
            if live.is_empty() {
                continue;
            }
            if wanted(&view.partition_values_map()) {
                #[allow(deprecated)] // deltalake 1.1's one way to a file's Add action
                let add = view.add_action();
                candidates.push(Candidate {
                    data: table::DataFile::of(&view),
                    file: FileRef::Committed {
                        remove: Box::new(view.remove_action(true)),
                        add: Box::new(add),
                        records: view.num_records(),
                    },
                });
            }
        }
        let max_epoch = live
            .iter()
            .map(|&d| self.window.deletes[d].epoch)
            .max()
            .unwrap_or(0);
        for (i, add) in self.window.staged.iter().enumerate() {
            if self.window.truncated_at.is_some_and(|t| i < t) {
                out.dropped_staged.insert(i);
            } else if i < max_epoch && wanted(&add.partition_values) {
                candidates.push(Candidate {
                    data: table::DataFile::staged(url_path(&add.path)),
                    file: FileRef::Staged(i),
                });
            }
        }

        // Pass 1: find, per file, the rows the deletes remove, reading only key columns.
        let hits = self.locate(&live, &candidates).await?;
        // Pass 2: rewrite the files that hold one, a batch at a time; with deletion
        // vectors, a committed file instead gets its rows marked deleted.
        let vectors = self.deletion_vectors()?;
        let mut marks: Vec<(Add, roaring::RoaringTreemap, Option<usize>)> = Vec::new();
        for (candidate, rows) in candidates.iter().zip(hits) {
            if rows.is_empty() {
                continue;
            }
            match &candidate.file {
                FileRef::Committed {
                    remove,
                    add,
                    records,
                } => {
                    if vectors {
                        let deleted = self.take_rows(&candidate.data, &rows).await?;
                        marks.push(((**add).clone(), deleted, *records));
                    } else {
                        self.rewrite_without(&candidate.data, &rows, true, out)
                            .await?;
                    }
                    out.removes.push((**remove).clone());
                }
                FileRef::Staged(index) => {
                    self.rewrite_without(&candidate.data, &rows, false, out)
                        .await?;
                    out.dropped_staged.insert(*index);
                }
            }
        }
        // A file with no row left just goes (its remove is in place already).
        marks.retain(|(_, bitmap, records)| records.is_none_or(|n| bitmap.len() < n as u64));
        if !marks.is_empty() {
            let bitmaps = marks.iter().map(|(_, b, _)| b.clone()).collect();
            let (descriptors, path) = super::deletion_vector::write(&self.table, bitmaps).await?;
            out.vector_file = Some(path);
            for ((mut add, _, _), descriptor) in marks.into_iter().zip(descriptors) {
                add.deletion_vector = Some(descriptor);
                add.data_change = true;
                out.marked.push(add);
            }
        }
        for (file, remove) in truncated_files {
            self.keep_after_truncate(&file, remove, out).await?;
        }
        self.seal().await?;
        self.seal_carry(out).await?;
        if let Some(&d) = live
            .iter()
            .find(|&&d| self.window.deletes[d].removed.is_none())
        {
            let missing = live
                .iter()
                .filter(|&&d| self.window.deletes[d].removed.is_none())
                .count();
            let del = &self.window.deletes[d];
            let key: Vec<String> = del
                .key_columns
                .iter()
                .zip(&del.key)
                .map(|(&i, cell)| format!("{} = {cell:?}", self.shape.columns[i].name))
                .collect();
            metrics::counter!("lakets_delta_unmatched_deletes_total").increment(missing as u64);
            return Err(Error::Diverged(format!(
                "the row ({}) that PostgreSQL deleted or updated in the transaction at {} is \
                 not in the Delta table at {}{}: the mirror has diverged (was the Delta table \
                 changed behind lakets' back?). Streaming stops here, nothing after it is \
                 acknowledged; run `lakets verify` to see the differences and `lakets resync \
                 --force` (service stopped) to copy the hot rows again",
                key.join(", "),
                del.at,
                self.location(),
                if missing > 1 {
                    format!(" (and {} more rows)", missing - 1)
                } else {
                    String::new()
                }
            )));
        }
        Ok(())
    }

    /// For each candidate, the rows (by position in the file) that a live delete removes,
    /// and which delete. Reads the key columns only, a batch at a time.
    async fn locate(
        &mut self,
        live: &[usize],
        candidates: &[Candidate],
    ) -> Result<Vec<BTreeMap<usize, usize>>> {
        let mut hits = vec![BTreeMap::new(); candidates.len()];
        if live.is_empty() {
            return Ok(hits);
        }
        // Deletes by key, per key column set, oldest first.
        let mut by_key: HashMap<Arc<Vec<usize>>, KeyIndex> = HashMap::new();
        let mut key_names: Vec<String> = Vec::new();
        for &d in live {
            let del = &self.window.deletes[d];
            for &i in del.key_columns.iter() {
                let name = &self.shape.columns[i].name;
                if !key_names.contains(name) {
                    key_names.push(name.clone());
                }
            }
            by_key
                .entry(del.key_columns.clone())
                .or_default()
                .entry(del.key.clone())
                .or_default()
                .push(d);
        }
        let names: Vec<&str> = key_names.iter().map(String::as_str).collect();
        // When every key holds the time, a row whose time no delete names is passed over
        // by one lookup of an integer, without decoding it into cells.
        let time = self.shape.time_index;
        let times: Option<HashSet<i64>> = live
            .iter()
            .map(|&d| {
                let del = &self.window.deletes[d];
                let k = del.key_columns.iter().position(|&i| i == time)?;
                match del.key[k] {
                    Cell::Int(t) => Some(t),
                    _ => None,
                }
            })
            .collect();
        let mut unmatched = live.len();
        for (c, candidate) in candidates.iter().enumerate() {
            if unmatched == 0 {
                break;
            }
            let file_epoch = match candidate.file {
                FileRef::Staged(i) => Some(i),
                FileRef::Committed { .. } => None,
            };
            // Rows a deletion vector deleted already are not there to delete again.
            let mut batches = table::open_live(&self.table, &candidate.data, Some(&names)).await?;
            while let Some((batch, positions)) = batches.next_with_positions().await? {
                let columns: Vec<_> = self
                    .shape
                    .columns
                    .iter()
                    .map(|c| batch.column_by_name(&c.name))
                    .collect();
                for (r, &position) in positions.iter().enumerate() {
                    if let (Some(times), Some(array)) = (&times, columns[time])
                        && let Cell::Int(t) = cell_at(array.as_ref(), r)?
                        && !times.contains(&t)
                    {
                        continue;
                    }
                    let row: CellRow = columns
                        .iter()
                        .map(|c| c.map_or(Ok(Cell::Null), |a| cell_at(a.as_ref(), r)))
                        .collect::<Result<_>>()?;
                    for (cols, keys) in by_key.iter_mut() {
                        let key: CellRow = cols.iter().map(|&i| row[i].clone()).collect();
                        if let Some(list) = keys.get_mut(&key) {
                            let deletes = &self.window.deletes;
                            if let Some(pos) = list
                                .iter()
                                .position(|&d| file_epoch.is_none_or(|f| f < deletes[d].epoch))
                            {
                                hits[c].insert(position as usize, list.remove(pos));
                                unmatched -= 1;
                                break;
                            }
                        }
                    }
                }
            }
        }
        Ok(hits)
    }

    /// The rows of a committed file at the positions in `hits` go to their deletes (whole:
    /// for unchanged TOAST values and change data), without rewriting the file; returns the
    /// file's deletion vector with them added. Reads only the row groups holding them.
    async fn take_rows(
        &mut self,
        file: &table::DataFile,
        hits: &BTreeMap<usize, usize>,
    ) -> Result<roaring::RoaringTreemap> {
        let mut deleted =
            super::deletion_vector::deleted_rows(&self.table, file.deletion_vector.as_ref())
                .await?
                .unwrap_or_default();
        let positions: Vec<u64> = hits.keys().map(|&p| p as u64).collect();
        let mut batches = table::open_rows(&self.table, &file.path, &positions).await?;
        let mut next = positions.iter();
        while let Some(batch) = batches
            .try_next()
            .await
            .delta_context(|| format!("reading Delta file {}", file.path))?
        {
            for row in super::read::batch_rows(&batch, &self.shape)? {
                let position = *next.next().ok_or_else(|| {
                    Error::Operator(format!("more rows than asked from {}", file.path))
                })?;
                let del = &mut self.window.deletes[hits[&(position as usize)]];
                del.removed = Some(row);
                del.preexisting = true;
                deleted.insert(position);
            }
        }
        Ok(deleted)
    }

    /// Writes the rows of the file at `path` but those at the positions in `hits` (whose
    /// deletes get the removed row), a batch at a time. The rows that stay of a `committed`
    /// file are carried; those of a staged file are still the window's inserts.
    async fn rewrite_without(
        &mut self,
        file: &table::DataFile,
        hits: &BTreeMap<usize, usize>,
        committed: bool,
        out: &mut Rewrite,
    ) -> Result<()> {
        let mut batches = table::open_live(&self.table, file, None).await?;
        while let Some((batch, positions)) = batches.next_with_positions().await? {
            let mut kept: Vec<CellRow> = Vec::with_capacity(batch.num_rows());
            let rows = super::read::rows_to_rewrite(&batch, &self.shape, &file.path)?;
            for (row, &position) in rows.into_iter().zip(&positions) {
                match hits.get(&(position as usize)) {
                    Some(&d) => {
                        let del = &mut self.window.deletes[d];
                        del.removed = Some(row);
                        del.preexisting = committed;
                    }
                    None => kept.push(row),
                }
            }
            out.rows_written += kept.len();
            let refs: Vec<&CellRow> = kept.iter().collect();
            if committed {
                self.carry_rows(&refs).await?;
            } else {
                self.write_rows(&refs).await?;
            }
        }
        Ok(())
    }

    /// Whether a committed file (by its partition values) may hold rows a TRUNCATE keeps.
    fn may_hold_kept_rows(&self, values: &HashMap<String, Option<String>>) -> bool {
        let keeps = &self.window.truncate_keeps;
        if keeps.is_empty() {
            return false;
        }
        const DAY: i64 = 86_400_000_000;
        let day = match (&self.shape.partitioning, &self.shape.partition_column) {
            (Partitioning::Day, Some(col)) => values
                .get(col)
                .and_then(|v| v.as_deref())
                .and_then(parse_partition_date),
            _ => None,
        };
        match day {
            Some(d) => {
                let (start, end) = (d as i64 * DAY, (d as i64 + 1) * DAY);
                keeps.iter().any(|&(s, e)| s < end && start < e)
            }
            None => true,
        }
    }

    /// Whether a row's time cell lies in a range a TRUNCATE keeps.
    fn kept_by_truncate(&self, time: &Cell) -> bool {
        let scale = match self.shape.columns[self.shape.time_index].kind {
            ColumnKind::Date => 86_400_000_000,
            _ => 1,
        };
        match time {
            Cell::Int(t) => {
                let micros = t.saturating_mul(scale);
                self.window
                    .truncate_keeps
                    .iter()
                    .any(|&(s, e)| s <= micros && micros < e)
            }
            _ => false,
        }
    }

    /// Rewrites a committed file after a TRUNCATE: only its rows in the kept ranges stay.
    /// Reads its time column first: a file wholly kept stays as it is.
    async fn keep_after_truncate(
        &mut self,
        file: &table::DataFile,
        remove: Remove,
        out: &mut Rewrite,
    ) -> Result<()> {
        let path = file.path.as_str();
        let time = self.shape.time_index;
        let time_name = self.shape.columns[time].name.clone();
        let (mut kept, mut total) = (0usize, 0usize);
        let mut times = table::open_live(&self.table, file, Some(&[time_name.as_str()])).await?;
        while let Some(batch) = times.next().await? {
            for row in super::read::batch_rows(&batch, &self.shape)? {
                total += 1;
                if self.kept_by_truncate(&row[time]) {
                    kept += 1;
                }
            }
        }
        if kept == total {
            return Ok(()); // wholly cold history: the file stays as it is
        }
        out.removes.push(remove);
        if kept == 0 {
            out.truncated_whole.push(file.clone());
            return Ok(());
        }
        let change_data = self.change_data()?;
        let mut batches = table::open_live(&self.table, file, None).await?;
        while let Some(batch) = batches.next().await? {
            let (rows, gone): (Vec<CellRow>, Vec<CellRow>) =
                super::read::rows_to_rewrite(&batch, &self.shape, path)?
                    .into_iter()
                    .partition(|row| self.kept_by_truncate(&row[time]));
            out.rows_written += rows.len();
            let refs: Vec<&CellRow> = rows.iter().collect();
            self.carry_rows(&refs).await?;
            if change_data {
                let refs: Vec<&CellRow> = gone.iter().collect();
                self.write_change_rows(&refs, &vec!["delete"; refs.len()])
                    .await?;
            }
        }
        Ok(())
    }
}

/// How the mirror keeps its table in shape (the service's `jobs.maintenance_every` and
/// `jobs.vacuum_retention`).
#[derive(Debug, Clone)]
pub struct MaintenancePolicy {
    /// Compact a partition once it holds at least this many small files...
    pub compact_min_files: usize,
    /// ... smaller than this.
    pub small_file_bytes: i64,
    /// Files no version within this references are vacuumed.
    pub vacuum_retention: chrono::Duration,
}

impl Default for MaintenancePolicy {
    fn default() -> Self {
        MaintenancePolicy {
            compact_min_files: 8,
            small_file_bytes: 16 << 20,
            vacuum_retention: chrono::Duration::days(1),
        }
    }
}

/// What one maintenance pass did to a table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Maintained {
    pub compaction: CompactionOutcome,
    pub vacuumed_files: usize,
}

pub enum DeleteOutcome {
    /// The row was still buffered in this window: it is gone, here it is.
    Buffered(CellRow),
    /// Kept for the flush, by index.
    Kept(usize),
    /// The row was an update's new row still waiting (on delete `.0`) for unchanged TOAST
    /// values: it is gone, here it is.
    Waiting(usize, CellRow),
}

struct Candidate {
    data: table::DataFile,
    file: FileRef,
}

enum FileRef {
    Committed {
        remove: Box<Remove>,
        /// The file as added, to add again with a new deletion vector.
        add: Box<Add>,
        /// Rows the file holds (its statistics), its deleted ones included.
        records: Option<usize>,
    },
    Staged(usize),
}

/// Takes the cells `old` knows (not themselves unchanged) for the unchanged cells of `row`.
fn fill_known(row: &mut CellRow, old: &CellRow) {
    for (i, cell) in row.iter_mut().enumerate() {
        if *cell == Cell::Unchanged
            && let Some(o) = old.get(i).filter(|o| **o != Cell::Unchanged)
        {
            *cell = o.clone();
        }
    }
}

fn fill_unchanged(row: &mut CellRow, old: &CellRow) {
    for (i, cell) in row.iter_mut().enumerate() {
        if *cell == Cell::Unchanged {
            *cell = old.get(i).cloned().unwrap_or(Cell::Null);
        }
    }
}

/// An Add action's path is URL-encoded; the object store wants it decoded.
fn url_path(path: &str) -> String {
    object_store::path::Path::from_url_path(path)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| path.to_owned())
}

/// A partition value (`YYYY-MM-DD`) as days since the epoch.
fn parse_partition_date(s: &str) -> Option<i32> {
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some((d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
}

/// The Delta shape of an existing table of this cluster's own: its columns in order, less
/// the partition column.
pub fn shape_of(
    table: &DeltaTable,
    time_column: &str,
    partitioning: Partitioning,
) -> Result<TableShape> {
    shape_for_source(table, time_column, partitioning, None)
}

/// Whether several clusters share the table (it is partitioned by [`SOURCE_COLUMN`]).
pub fn is_shared(table: &DeltaTable) -> Result<bool> {
    let location = table::display_location(table.table_url());
    Ok(table
        .snapshot()
        .delta_context(|| format!("reading {location}"))?
        .metadata()
        .partition_columns()
        .iter()
        .any(|c| c == SOURCE_COLUMN))
}

/// [`shape_of`] for a sync that may share its table: `source` is this cluster's name in a
/// table several clusters share; a shared table without one, or a name with a table that
/// is not shared, is refused.
pub fn shape_for_source(
    table: &DeltaTable,
    time_column: &str,
    partitioning: Partitioning,
    source: Option<&str>,
) -> Result<TableShape> {
    let location = table::display_location(table.table_url());
    let snapshot = table
        .snapshot()
        .delta_context(|| format!("reading {location}"))?;
    let schema = snapshot.schema();
    let shared = is_shared(table)?;
    match (shared, source) {
        (true, None) => {
            return Err(Error::Conflict(format!(
                "the Delta table at {location} is shared by several PostgreSQL clusters \
                 (partitioned by {SOURCE_COLUMN}); sync into it with a source name \
                 (--source)"
            )));
        }
        (false, Some(name)) => {
            return Err(Error::Conflict(format!(
                "the Delta table at {location} is not partitioned by {SOURCE_COLUMN}, so \
                 clusters cannot share it; sync source {name:?} into a new location"
            )));
        }
        _ => {}
    }
    let partition_column = partitioning.column_name(time_column);
    if shared {
        // Every cluster writes the same layout into a shared table.
        let want: Vec<String> = std::iter::once(SOURCE_COLUMN.to_owned())
            .chain(partition_column.clone())
            .collect();
        let have = snapshot.metadata().partition_columns();
        if have != want.as_slice() {
            return Err(Error::Conflict(format!(
                "the Delta table at {location} is partitioned by {have:?}; partitioning by \
                 {} would write {want:?}: sync into it with the partitioning the other \
                 clusters use (--partition-by)",
                partitioning.as_str()
            )));
        }
    }
    let mut columns = Vec::new();
    for field in schema.fields() {
        if Some(field.name()) == partition_column.as_ref()
            || (shared && field.name() == SOURCE_COLUMN)
        {
            continue;
        }
        let kind = ColumnKind::from_delta(field.data_type()).ok_or_else(|| {
            Error::Unsupported(format!(
                "column {:?} of the Delta table at {location} has type {}, which lakets \
                 does not write",
                field.name(),
                field.data_type()
            ))
        })?;
        columns.push(DataColumn {
            name: field.name().clone(),
            kind,
        });
    }
    let time_index = columns
        .iter()
        .position(|c| c.name == time_column)
        .ok_or_else(|| {
            Error::Conflict(format!(
                "the Delta table at {location} has no column {time_column:?}"
            ))
        })?;
    Ok(TableShape {
        columns,
        time_index,
        partitioning,
        partition_column,
        source: source.map(str::to_owned),
    })
}
