//! Reading a table as of one snapshot that meets the WAL stream exactly, in parallel.
//!
//! A second connection holds a SHARE lock on the table for the instant it takes the
//! (already connected) reader to start a REPEATABLE READ transaction, read the WAL insert
//! position and export its snapshot. No writer is in flight at that instant, so every
//! transaction committed before the position is in the snapshot and every later one
//! commits after it. The lock is released at once; writes continue while the copy runs.
//!
//! The copy is split into ranges of heap pages of each partition (`ctid` ranges, which
//! PostgreSQL reads with a TID range scan) and read by several connections that all
//! import the exported snapshot (`SET TRANSACTION SNAPSHOT`), as supabase/etl and PeerDB
//! do: the server's reading and output, and lakets' decoding, run on every core. Each
//! range is a binary `COPY (SELECT ...) TO STDOUT`, the cheapest form on both sides.
//! Memory is bounded by a channel of a few batches between the readers and the caller.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, GenericClient, IsolationLevel};
use tracing::info;

use super::sync::{CopyProgress, postgres_shape};
use crate::catalog::announce::{Announcement, announce};
use crate::catalog::sync_registry;
use crate::delta::batch::CellRow;
use crate::delta::schema::{Cell, DataColumn, TableShape};
use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::wal::lsn::Lsn;
use crate::wal::value::{ColumnType, decode_binary, decode_text};

/// Rows per batch a reader hands over.
const FETCH_ROWS: usize = 10_000;
/// Heap pages per range (8 kB pages: 32 MB), so that ranges balance across readers.
const PAGES_PER_RANGE: i64 = 4096;
/// Batches in flight between the readers and the caller, per reader.
const BATCHES_PER_READER: usize = 2;
/// Snapshot attempts that may each find new columns before the copy gives up.
const MAX_SHAPE_RETRIES: u32 = 3;

/// How many times a snapshot gives way to an exclusive lock queued on a partition before
/// the error is returned (transient: the caller retries later).
const MAX_LOCK_RETRIES: u32 = 10;

/// Readers of a snapshot when the caller does not choose. Measured on 2 cores (`lakets
/// bench snapshot`): 2 beat 1 on small tables and matched it on large ones, 4 lost to
/// both (the cores were full); a larger server takes more with `--readers`.
pub const DEFAULT_READERS: usize = 2;

/// The session of every read of values as text (comparisons with Delta): text the
/// decoder reads exactly (UTC ISO times, round-tripping floats, hex bytea).
pub(crate) const TEXT_SESSION: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; \
     SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// Where a snapshot's rows go: the initial copy's Parquet files, or resync's mirror.
pub(crate) trait SnapshotSink {
    /// The shape the rows are read in (the Delta table's).
    fn shape(&self) -> &TableShape;
    /// Columns the table has and the shape lacks, found before any row is written: an
    /// ADD COLUMN committed after the shape was read. They join the Delta table first, so
    /// that no copied row loses a value the stream would never send again.
    async fn add_columns(&mut self, columns: Vec<DataColumn>) -> Result<()>;
    async fn write(&mut self, rows: Vec<CellRow>) -> Result<()>;
}

impl SnapshotSink for crate::delta::mirror::TableMirror {
    fn shape(&self) -> &TableShape {
        &self.shape
    }

    async fn add_columns(&mut self, columns: Vec<DataColumn>) -> Result<()> {
        crate::delta::mirror::TableMirror::add_columns(self, columns).await
    }

    async fn write(&mut self, rows: Vec<CellRow>) -> Result<()> {
        for row in rows {
            self.insert(row).await?;
        }
        Ok(())
    }
}

/// What one attempt at a snapshot found.
enum SnapshotRead {
    /// Every row went to the sink: the snapshot's position and the number of rows.
    Copied { start_lsn: Lsn, rows: u64 },
    /// The table has columns the sink's shape lacks; nothing was read.
    ColumnsAdded(Vec<DataColumn>),
    /// A reader could not lock a partition: an exclusive lock (an ALTER TABLE, a DROP)
    /// was queued on it behind the snapshot's own. Nothing was read; every lock is let go
    /// so that it runs, and the snapshot is taken again.
    LockQueued(Error),
}

/// A part of one partition a reader reads at a time.
#[derive(Debug, Clone)]
struct PageRange {
    partition: TableName,
    /// Heap pages `[first, end)` (`end` open for the last range); `None` for a
    /// partition without a heap to range over (read whole).
    pages: Option<(i64, Option<i64>)>,
}

/// Reads every row of `table_name` as of a snapshot that meets the WAL stream exactly
/// (see the module docs) with `readers` connections, handing them to `sink` in batches.
/// The snapshot's position is recorded as the sync's `start_lsn` while writers are held
/// off. The table's columns are checked against the sink's shape under the same lock,
/// the only moment no ALTER TABLE can slip in between; new ones join the sink and the
/// snapshot is taken again. Returns the position and the number of rows.
pub(crate) async fn read_snapshot(
    db: &crate::db::DbConfig,
    client: &Client,
    table_name: &TableName,
    readers: usize,
    progress: &mut impl FnMut(CopyProgress),
    sink: &mut impl SnapshotSink,
) -> Result<(Lsn, u64)> {
    let mut queued = 0;
    let mut shape_changes = 0;
    while shape_changes <= MAX_SHAPE_RETRIES {
        match read_once(db, client, table_name, readers, progress, sink).await? {
            SnapshotRead::Copied { start_lsn, rows } => return Ok((start_lsn, rows)),
            SnapshotRead::ColumnsAdded(columns) => {
                shape_changes += 1;
                sink.add_columns(columns).await?
            }
            SnapshotRead::LockQueued(e) => {
                queued += 1;
                if queued > MAX_LOCK_RETRIES {
                    return Err(e);
                }
                info!(table = %table_name, error = %e, "an exclusive lock is queued on a partition; the snapshot gives way and is taken again");
                tokio::time::sleep(Duration::from_millis(200 * queued as u64)).await;
            }
        }
    }
    Err(Error::Conflict(format!(
        "the columns of {table_name} changed {} times while the snapshot was being taken; \
         run the command again when the schema changes are done",
        MAX_SHAPE_RETRIES + 1
    )))
}

async fn read_once(
    db: &crate::db::DbConfig,
    client: &Client,
    table_name: &TableName,
    readers: usize,
    progress: &mut impl FnMut(CopyProgress),
    sink: &mut impl SnapshotSink,
) -> Result<SnapshotRead> {
    let shape = &sink.shape().clone();
    let readers = readers.max(1);
    // Every connection first: writers wait only while the snapshot is taken.
    let mut exporter = crate::db::connect_with(db).await?;
    let mut workers = Vec::with_capacity(readers);
    for _ in 0..readers {
        workers.push(crate::db::connect_with(db).await?);
    }
    // The exporter idles in its transaction for the whole copy, and a reader's COPY
    // waits on the Delta writer: a server's or role's timeouts must not end them.
    for session in workers.iter().chain([&exporter]) {
        session
            .batch_execute("SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0")
            .await
            .pg_context(|| "preparing a snapshot session".into())?;
    }
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
    let tx = exporter
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .pg_context(|| "starting the snapshot transaction".into())?;
    let row = tx
        .query_one(
            "SELECT pg_current_wal_insert_lsn(), pg_export_snapshot(),
                    (SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
                       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                      WHERE i.inhparent = $1::text::regclass)",
            &[&table_name.quoted()],
        )
        .await
        .pg_context(|| "taking the snapshot".into())?;
    let start_lsn = Lsn::from(row.get::<_, PgLsn>(0));
    let snapshot: String = row.get(1);
    let estimate: i64 = row.get(2);
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
    // The partitions are listed (and so locked against DETACH and DROP for the rest of
    // the copy) while the table's lock still holds them all.
    let ranges = page_ranges(&tx, table_name).await?;
    // Every reader imports the snapshot and locks every partition now, while the
    // table's lock keeps ALTER TABLE out. Taken later, a reader's lock would queue behind
    // an exclusive request that itself waits for the exporter's locks, and the exporter
    // waits for the readers: a deadlock the server cannot see (pg_dump's parallel
    // workers meet the same and use NOWAIT too). With the locks held, DDL waits for
    // the copy to end.
    let partitions: Vec<String> = {
        let mut seen = std::collections::BTreeSet::new();
        ranges
            .iter()
            .filter(|r| seen.insert(r.partition.to_string()))
            .map(|r| r.partition.quoted())
            .collect()
    };
    for worker in &workers {
        let mut sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {};",
            crate::ident::quote_literal(&snapshot)
        );
        if !partitions.is_empty() {
            sql.push_str(&format!(
                " LOCK TABLE ONLY {} IN ACCESS SHARE MODE NOWAIT",
                partitions.join(", ")
            ));
        }
        if let Err(e) = worker.batch_execute(&sql).await.pg_context(|| {
            format!(
                "importing the snapshot of {table_name} into a reader and locking its partitions"
            )
        }) {
            if e.sqlstate() == Some("55P03") {
                locker
                    .batch_execute("ROLLBACK")
                    .await
                    .pg_context(|| format!("releasing the lock on {table_name}"))?;
                return Ok(SnapshotRead::LockQueued(e));
            }
            return Err(e);
        }
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
    // text_select reads a column of a shared table that PostgreSQL lacks as NULL.
    let columns = shape
        .columns
        .iter()
        .zip(&select)
        .map(|(c, read)| {
            if read == MISSING_COLUMN {
                "NULL".to_owned()
            } else {
                crate::ident::quote_ident(&c.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let queue = Arc::new(Mutex::new(ranges));
    let shape = Arc::new(shape.clone());
    let types: Arc<[ColumnType]> = types.into();
    let (batches, mut received) =
        tokio::sync::mpsc::channel::<Vec<CellRow>>(readers * BATCHES_PER_READER);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in workers {
        let job = ReaderJob {
            client: worker,
            queue: queue.clone(),
            columns: columns.clone(),
            types: types.clone(),
            shape: shape.clone(),
            batches: batches.clone(),
        };
        tasks.spawn(job.run());
    }
    drop(batches);

    let mut copied: u64 = 0;
    let mut last_report = Instant::now();
    let estimate = (estimate > 0).then_some(estimate as u64);
    // Ends when every reader has dropped its sender: all ranges read, or one failed
    // (and emptied the queue so that the others stop soon; its error comes below).
    while let Some(rows) = received.recv().await {
        copied += rows.len() as u64;
        sink.write(rows).await?;
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            progress(CopyProgress {
                rows: copied,
                estimate,
            });
            let _ = sync_registry::record_rows_copied(client, table_name, copied as i64).await;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Error::Operator(format!("a snapshot reader failed: {e}")))??;
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

/// One reader: takes ranges off the queue until none is left.
struct ReaderJob {
    client: Client,
    queue: Arc<Mutex<VecDeque<PageRange>>>,
    /// The shape's columns, quoted, in its order.
    columns: String,
    types: Arc<[ColumnType]>,
    shape: Arc<TableShape>,
    batches: tokio::sync::mpsc::Sender<Vec<CellRow>>,
}

impl ReaderJob {
    async fn run(self) -> Result<()> {
        let outcome = self.read_all().await;
        if outcome.is_err() {
            self.queue.lock().expect("range queue").clear();
        }
        outcome
    }

    async fn read_all(&self) -> Result<()> {
        loop {
            let Some(range) = self.queue.lock().expect("range queue").pop_front() else {
                break;
            };
            self.read_range(&range).await?;
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .pg_context(|| "ending a snapshot reader's transaction".into())
    }

    async fn read_range(&self, range: &PageRange) -> Result<()> {
        let what = || match range.pages {
            Some((first, _)) => format!("reading {} from page {first}", range.partition),
            None => format!("reading {}", range.partition),
        };
        // COPY takes no bind parameters: the page numbers are lakets' own integers.
        let bounds = match range.pages {
            None => String::new(),
            Some((first, None)) => format!(" WHERE ctid >= '({first},0)'::tid"),
            Some((first, Some(end))) => {
                format!(" WHERE ctid >= '({first},0)'::tid AND ctid < '({end},0)'::tid")
            }
        };
        // Binary COPY: the server's cheapest output (no float or time formatting) and
        // the decoder's cheapest input, streamed as it is consumed.
        let sql = format!(
            "COPY (SELECT {} FROM ONLY {}{bounds}) TO STDOUT (FORMAT binary)",
            self.columns,
            range.partition.quoted()
        );
        let stream = self.client.copy_out(&sql).await.pg_context(what)?;
        futures_util::pin_mut!(stream);
        let mut parser = BinaryCopy::default();
        let mut batch = Vec::with_capacity(FETCH_ROWS);
        while let Some(data) = stream.try_next().await.pg_context(what)? {
            parser.feed(&data, self.types.len(), |fields| {
                batch.push(binary_row_cells(fields, &self.types, &self.shape)?);
                Ok(())
            })?;
            if batch.len() >= FETCH_ROWS && !self.hand_over(&mut batch).await {
                return Ok(());
            }
        }
        parser.finish()?;
        if !batch.is_empty() {
            self.hand_over(&mut batch).await;
        }
        Ok(())
    }

    /// Sends the batch to the caller; false when the caller has stopped (it failed),
    /// and then no reader takes another range.
    async fn hand_over(&self, batch: &mut Vec<CellRow>) -> bool {
        let full = std::mem::replace(batch, Vec::with_capacity(FETCH_ROWS));
        let sent = self.batches.send(full).await.is_ok();
        if !sent {
            self.queue.lock().expect("range queue").clear();
        }
        sent
    }
}

/// The rows of `COPY ... TO STDOUT (FORMAT binary)` as they arrive, in pieces of any
/// size: the 19-byte header (signature, flags, extension length), then per row a field
/// count and each field's length (-1: NULL) and bytes, then a -1 trailer.
#[derive(Default)]
struct BinaryCopy {
    /// An incomplete row (or header) carried over to the next piece.
    pending: Vec<u8>,
    header_read: bool,
    ended: bool,
}

const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl BinaryCopy {
    fn feed(
        &mut self,
        data: &[u8],
        fields: usize,
        mut row: impl FnMut(&[Option<&[u8]>]) -> Result<()>,
    ) -> Result<()> {
        let joined;
        let data = if self.pending.is_empty() {
            data
        } else {
            self.pending.extend_from_slice(data);
            joined = std::mem::take(&mut self.pending);
            &joined[..]
        };
        let mut at = 0;
        let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(fields);
        loop {
            if !self.header_read {
                let Some(header) = data.get(at..at + 19) else {
                    break;
                };
                if &header[..11] != COPY_SIGNATURE {
                    return Err(copy_format_error("no binary COPY signature"));
                }
                let extension = u32::from_be_bytes(header[15..19].try_into().expect("4 bytes"));
                let end = at + 19 + extension as usize;
                if data.len() < end {
                    break;
                }
                at = end;
                self.header_read = true;
            }
            let Some(count) = data.get(at..at + 2) else {
                break;
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.ended = true;
                at += 2;
                break;
            }
            if count as usize != fields {
                return Err(copy_format_error(&format!(
                    "a row of {count} fields where {fields} were selected"
                )));
            }
            values.clear();
            let mut p = at + 2;
            let mut complete = true;
            for _ in 0..fields {
                let Some(len) = data.get(p..p + 4) else {
                    complete = false;
                    break;
                };
                let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
                p += 4;
                if len == -1 {
                    values.push(None);
                    continue;
                }
                if len < 0 {
                    return Err(copy_format_error(&format!("a field of length {len}")));
                }
                let Some(value) = data.get(p..p + len as usize) else {
                    complete = false;
                    break;
                };
                values.push(Some(value));
                p += len as usize;
            }
            if !complete {
                break;
            }
            row(&values)?;
            at = p;
        }
        self.pending.extend_from_slice(&data[at..]);
        Ok(())
    }

    /// Checks that the copy ended where a row ends, with its trailer.
    fn finish(&self) -> Result<()> {
        if self.ended && self.pending.is_empty() {
            Ok(())
        } else {
            Err(copy_format_error(
                "the COPY ended inside a row or without its trailer",
            ))
        }
    }
}

fn copy_format_error(why: &str) -> Error {
    Error::Operator(format!("reading the snapshot's binary COPY: {why}"))
}

/// A binary COPY row as cells in the shape's order.
fn binary_row_cells(
    fields: &[Option<&[u8]>],
    types: &[ColumnType],
    shape: &TableShape,
) -> Result<CellRow> {
    shape
        .columns
        .iter()
        .zip(fields)
        .zip(types)
        .map(|((column, field), ty)| match field {
            None => Ok(Cell::Null),
            Some(bytes) => Cell::from_value(&decode_binary(*ty, bytes)?, column),
        })
        .collect()
}

/// The heap-page ranges of every partition holding rows (the table itself when it has
/// none), sizes as of now: a row the snapshot sees lies on a page that exists, and the
/// last range of each partition is open-ended all the same. Largest partitions first, so
/// that the last ranges to finish are small ones.
async fn page_ranges(
    client: &impl GenericClient,
    table_name: &TableName,
) -> Result<VecDeque<PageRange>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    CASE WHEN c.relkind = 'r'
                         THEN pg_relation_size(c.oid) / current_setting('block_size')::bigint
                    END
               FROM pg_partition_tree($1::text::regclass) t
               JOIN pg_class c ON c.oid = t.relid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.isleaf
              ORDER BY 3 DESC NULLS LAST",
            &[&table_name.quoted()],
        )
        .await
        .pg_context(|| format!("listing the partitions of {table_name}"))?;
    let mut ranges = VecDeque::new();
    for row in rows {
        let partition = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let Some(pages) = row.get::<_, Option<i64>>(2) else {
            ranges.push_back(PageRange {
                partition,
                pages: None,
            });
            continue;
        };
        let mut first = 0;
        while first + PAGES_PER_RANGE < pages {
            ranges.push_back(PageRange {
                partition: partition.clone(),
                pages: Some((first, Some(first + PAGES_PER_RANGE))),
            });
            first += PAGES_PER_RANGE;
        }
        ranges.push_back(PageRange {
            partition,
            pages: Some((first, None)),
        });
    }
    Ok(ranges)
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

/// How [`text_select`] reads a column of a shared Delta table that this cluster's table
/// lacks.
const MISSING_COLUMN: &str = "NULL::pg_catalog.text";

/// The select list's items (each column as its type's output function prints it, in the shape's
/// order) and the columns' types. Not `col::text`: that cast prints a boolean as `true`
/// and strips a `char(n)`'s padding, where the stream (and the binary copy) carry `t` and
/// the padded value. The functions are named with their schema, so that nothing in a
/// user's search path can stand in for them.
pub(crate) async fn text_select(
    client: &impl GenericClient,
    table_name: &TableName,
    shape: &TableShape,
) -> Result<(Vec<String>, Vec<ColumnType>)> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::oid, n.nspname::text, p.proname::text
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               JOIN pg_proc p ON p.oid = t.typoutput
               JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table_name.quoted()],
        )
        .await
        .pg_context(|| format!("reading the columns of {table_name}"))?;
    let mut types = Vec::with_capacity(shape.columns.len());
    let mut select = Vec::with_capacity(shape.columns.len());
    for column in &shape.columns {
        let Some(row) = rows.iter().find(|r| r.get::<_, &str>(0) == column.name) else {
            // A column of a shared Delta table that another cluster added: NULL here.
            if shape.source.is_some() {
                types.push(ColumnType::from_oid(25));
                select.push(MISSING_COLUMN.into());
                continue;
            }
            return Err(Error::Conflict(format!(
                "{table_name} has no column {:?}",
                column.name
            )));
        };
        types.push(ColumnType::from_oid(row.get(1)));
        select.push(format!(
            "pg_catalog.textin({}.{}({}))",
            crate::ident::quote_ident(row.get(2)),
            crate::ident::quote_ident(row.get(3)),
            crate::ident::quote_ident(&column.name)
        ));
    }
    Ok((select, types))
}

/// A row selected through [`text_select`] (in [`TEXT_SESSION`]) as cells.
pub(crate) fn text_row_cells(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of `rows` (fields as bytes, None for NULL).
    fn copy_stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = COPY_SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes()); // flags
        out.extend_from_slice(&4u32.to_be_bytes()); // extension area
        out.extend_from_slice(b"ext!");
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn parse_in_pieces(stream: &[u8], piece: usize) -> Result<Vec<Vec<Option<Vec<u8>>>>> {
        let mut parser = BinaryCopy::default();
        let mut rows = Vec::new();
        for chunk in stream.chunks(piece) {
            parser.feed(chunk, 2, |fields| {
                rows.push(fields.iter().map(|f| f.map(<[u8]>::to_vec)).collect());
                Ok(())
            })?;
        }
        parser.finish()?;
        Ok(rows)
    }

    #[test]
    fn rows_split_anywhere_across_pieces_read_whole() {
        let rows = vec![
            vec![Some(&b"first"[..]), None],
            vec![Some(&b""[..]), Some(&b"\xff\x00\x01"[..])],
            vec![None, Some(&b"last row"[..])],
        ];
        let stream = copy_stream(&rows);
        let expected: Vec<Vec<Option<Vec<u8>>>> = rows
            .iter()
            .map(|r| r.iter().map(|f| f.map(<[u8]>::to_vec)).collect())
            .collect();
        for piece in 1..=stream.len() {
            assert_eq!(
                parse_in_pieces(&stream, piece).unwrap(),
                expected,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_cut_stream_or_a_wrong_row_width_is_an_error() {
        let stream = copy_stream(&[vec![Some(&b"a"[..]), Some(&b"b"[..])]]);
        let cut = &stream[..stream.len() - 3];
        let err = parse_in_pieces(cut, 7).unwrap_err().to_string();
        assert!(err.contains("ended inside a row"), "{err}");
        let wide = copy_stream(&[vec![Some(&b"a"[..]), None, None]]);
        let err = parse_in_pieces(&wide, 64).unwrap_err().to_string();
        assert!(err.contains("3 fields where 2"), "{err}");
        let mut forged = stream.clone();
        forged[0] = b'X';
        assert!(parse_in_pieces(&forged, 64).is_err());
    }
}
