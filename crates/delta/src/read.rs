//! Reading a Delta table back as rows of cells: for `lakets verify` and the tests, which
//! compare it with the PostgreSQL table row for row.

use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use futures_util::TryStreamExt;

use super::batch::{CellRow, cell_at};
use super::schema::{Cell, TableShape};
use super::table;
use crate::error::{DeltaResultExt, Result};

/// The files of the table's current version.
pub async fn active_files(delta: &DeltaTable) -> Result<Vec<deltalake::kernel::LogicalFileView>> {
    let location = table::display_location(delta.table_url());
    delta
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await
        .delta_context(|| format!("listing the files of {location}"))
}

/// The files of the table's current version that hold this cluster's rows: in a table
/// several clusters share, those of its own source; otherwise all.
pub async fn files_of(
    delta: &DeltaTable,
    shape: &TableShape,
) -> Result<Vec<deltalake::kernel::LogicalFileView>> {
    source_files(delta, shape.source.as_deref()).await
}

/// The files of the table's current version in `source`'s partition of a shared table
/// (`None`: every file).
pub async fn source_files(
    delta: &DeltaTable,
    source: Option<&str>,
) -> Result<Vec<deltalake::kernel::LogicalFileView>> {
    let mut files = active_files(delta).await?;
    if let Some(source) = source {
        files.retain(|f| {
            f.partition_values_map()
                .get(super::schema::SOURCE_COLUMN)
                .and_then(|v| v.as_deref())
                == Some(source)
        });
    }
    Ok(files)
}

/// What a table's current version holds, from its log alone (no data file is read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableSummary {
    pub version: i64,
    pub files: u64,
    pub bytes: u64,
    /// Rows by the files' statistics; `None` when a file was written without them.
    pub rows: Option<u64>,
}

/// The version, files, bytes and rows of the table as loaded: in a table several clusters
/// share, of `source`'s files (its partition) only.
pub async fn summary(delta: &DeltaTable, source: Option<&str>) -> Result<TableSummary> {
    let files = source_files(delta, source).await?;
    // A file's statistics count the rows it holds, its deletion vector those deleted.
    let rows = files
        .iter()
        .map(|f| {
            f.num_records()
                .map(|n| (n as u64).saturating_sub(vector_rows(f)))
        })
        .sum::<Option<u64>>();
    Ok(TableSummary {
        version: delta.version().map_or(-1, |v| v as i64),
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.size().max(0) as u64).sum(),
        rows,
    })
}

/// Rows of a file its deletion vector deletes (statistics count them, readers skip them).
pub fn vector_rows(file: &deltalake::kernel::LogicalFileView) -> u64 {
    file.deletion_vector_descriptor()
        .map_or(0, |d| d.cardinality.max(0) as u64)
}

/// The rows of a record batch read from a file of the table, as cells in the shape's
/// column order (columns the file predates read NULL).
pub fn batch_rows(batch: &RecordBatch, shape: &TableShape) -> Result<Vec<CellRow>> {
    let columns: Vec<_> = shape
        .columns
        .iter()
        .map(|c| batch.column_by_name(&c.name))
        .collect();
    (0..batch.num_rows())
        .map(|r| {
            columns
                .iter()
                .map(|c| c.map_or(Ok(Cell::Null), |a| cell_at(a.as_ref(), r)))
                .collect()
        })
        .collect()
}

/// The first column of `batch` outside the shape (added to the Delta table by another
/// writer, a Databricks `ADD COLUMNS` say) that holds a value in it.
pub fn unmirrored_values(batch: &RecordBatch, shape: &TableShape) -> Option<String> {
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .find(|(field, array)| {
            !shape.is_derived(field.name())
                && !shape.columns.iter().any(|c| c.name == *field.name())
                && array.null_count() < array.len()
        })
        .map(|(field, _)| field.name().clone())
}

/// [`batch_rows`] for a rewrite, which writes the rows again in the shape's columns:
/// refused when the file holds values in a column the shape lacks, which would be lost.
/// (Columns another cluster of a shared table added are NULL in this cluster's files.)
pub fn rows_to_rewrite(
    batch: &RecordBatch,
    shape: &TableShape,
    path: &str,
) -> Result<Vec<CellRow>> {
    if let Some(column) = unmirrored_values(batch, shape) {
        return Err(crate::error::Error::Unsupported(format!(
            "Delta file {path} holds values in column {column:?}, which the PostgreSQL \
             table lacks (another writer added it); a delete, update or TRUNCATE rewrites \
             the file from PostgreSQL's columns and would drop them. Add the column to the \
             PostgreSQL table too, or remove it from the Delta table"
        )));
    }
    batch_rows(batch, shape)
}

/// Every row of the table's current version, in the shape's column order (the partition
/// column left out), in no particular order.
pub async fn scan(delta: &DeltaTable, shape: &TableShape) -> Result<Vec<CellRow>> {
    let mut rows = Vec::new();
    for_each_row(delta, shape, |row| rows.push(row)).await?;
    Ok(rows)
}

/// Hands every row of the table's current version to `each`, a batch at a time: memory
/// follows a batch, not the table (or a compacted file).
pub async fn for_each_row(
    delta: &DeltaTable,
    shape: &TableShape,
    mut each: impl FnMut(CellRow),
) -> Result<()> {
    for view in files_of(delta, shape).await? {
        let mut batches = table::open_live(delta, &table::DataFile::of(&view), None).await?;
        while let Some(batch) = batches.next().await? {
            for row in batch_rows(&batch, shape)? {
                each(row);
            }
        }
    }
    Ok(())
}

/// Rows of the table's current version whose time (microseconds since the epoch) is in
/// `[start, end)`. Files wholly inside the range by their statistics count by their
/// `numRecords`; files the partition or statistics show outside are skipped; the others are
/// read.
pub async fn count_range(
    delta: &DeltaTable,
    shape: &TableShape,
    start: i64,
    end: i64,
) -> Result<u64> {
    let views = files_of(delta, shape).await?;
    let time_name = &shape.columns[shape.time_index].name;
    // A date time column holds days, not microseconds.
    let (start, end) = if shape.columns[shape.time_index].kind == super::schema::ColumnKind::Date {
        const DAY: i64 = 86_400_000_000;
        (start.div_euclid(DAY), end.div_euclid(DAY))
    } else {
        (start, end)
    };
    let mut total = 0u64;
    for view in views {
        let deleted = vector_rows(&view);
        if let Some(stats) = view.stats().and_then(|s| file_time_range(&s, time_name)) {
            let (min, max, records) = stats;
            if max < start || min >= end {
                continue;
            }
            if min >= start && max < end {
                // Its deletion vector's rows are in the range too.
                total += records.saturating_sub(deleted);
                continue;
            }
        }
        // A file straddling the range: its time column only, a batch at a time (a
        // compacted file decoded whole, every column, is several times its size).
        let mut batches = table::open_live(
            delta,
            &table::DataFile::of(&view),
            Some(&[time_name.as_str()]),
        )
        .await?;
        while let Some(batch) = batches.next().await? {
            let Some(times) = batch.column_by_name(time_name) else {
                continue;
            };
            for r in 0..batch.num_rows() {
                if let Cell::Int(t) = cell_at(times.as_ref(), r)?
                    && t >= start
                    && t < end
                {
                    total += 1;
                }
            }
        }
    }
    Ok(total)
}

/// `(min, max, numRecords)` of the time column from a file's statistics JSON. Timestamp
/// statistics may be truncated to milliseconds: the max is widened by one.
fn file_time_range(stats: &str, time: &str) -> Option<(i64, i64, u64)> {
    let v: serde_json::Value = serde_json::from_str(stats).ok()?;
    let records = v.get("numRecords")?.as_u64()?;
    let parse = |x: &serde_json::Value| -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(x.as_str()?)
            .ok()
            .map(|d| d.timestamp_micros())
    };
    let min = parse(v.get("minValues")?.get(time)?)?;
    let max = parse(v.get("maxValues")?.get(time)?)? + 999;
    if v.get("nullCount")?.get(time)?.as_u64()? != 0 {
        return None;
    }
    Some((min, max, records))
}
