//! Opening, creating and committing to a Delta table, and reading its Parquet files back.
//!
//! Credentials for object stores come from the environment (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`, as each SDK reads them), never from the URI: a URI with a user, password or
//! query string is refused so that it cannot end up in a log line or `ps` output.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::RecordBatchWriter;
use futures_util::TryStreamExt;
use object_store::ObjectStoreExt as _;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
#[allow(deprecated)] // still the simplest reader over an object store in parquet 59
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use url::Url;

use super::protocol::Features;
use super::schema::{DataColumn, TableShape};
use crate::error::{DeltaResultExt, Error, Result};
use crate::wal::lsn::Lsn;

/// Rows per Parquet row group: large enough for good compression and statistics, small
/// enough that a reader can skip by row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Files are cut at about this size.
pub const TARGET_FILE_BYTES: u64 = 128 << 20;

/// Parses where a Delta table lives: a local path, `file://`, `s3://` (or `s3a://`),
/// `gs://`, `az://`, `abfs://` or `abfss://`. A relative local path is made absolute.
pub fn parse_location(uri: &str) -> Result<Url> {
    let uri = uri.trim();
    if uri.is_empty() {
        return Err(Error::invalid("the Delta table location is empty"));
    }
    if !uri.contains("://") {
        let path = std::path::Path::new(uri);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("reading the current directory", e))?
                .join(path)
        };
        return Url::from_directory_path(&absolute).map_err(|()| {
            Error::invalid(format!(
                "{uri:?} is not a usable local path for a Delta table"
            ))
        });
    }
    let url =
        Url::parse(uri).map_err(|e| Error::invalid(format!("{uri:?} is not a valid URI: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(Error::invalid(
            "the Delta table URI carries credentials or options; give credentials through \
             the environment (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, \
             AZURE_STORAGE_ACCOUNT_KEY, ...), never on the command line",
        ));
    }
    match url.scheme() {
        "file" => {
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(Error::invalid(format!(
                    "{uri:?}: a file:// URI cannot name a host"
                )));
            }
        }
        "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => {
            if let Some(feature) = missing_store_feature(url.scheme()) {
                return Err(Error::invalid(format!(
                    "{uri:?}: this lakets was built without the `{feature}` feature, so it \
                     cannot reach that store; build it with `--features {feature}` (on by \
                     default)"
                )));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(Error::invalid(format!(
                    "{uri:?} names no bucket or container"
                )));
            }
        }
        other => {
            return Err(Error::invalid(format!(
                "unsupported scheme {other:?} in {uri:?}: use a local path, file://, s3://, \
                 gs:// or az://"
            )));
        }
    }
    Ok(url)
}

/// The cargo feature a store's scheme needs, when this build lacks it.
fn missing_store_feature(scheme: &str) -> Option<&'static str> {
    match scheme {
        "s3" | "s3a" if !cfg!(feature = "s3") => Some("s3"),
        "gs" if !cfg!(feature = "gcs") => Some("gcs"),
        "az" | "abfs" | "abfss" if !cfg!(feature = "azure") => Some("azure"),
        _ => None,
    }
}

/// A location for display: never carries credentials (they are refused at parse time).
pub fn display_location(url: &Url) -> String {
    if url.scheme() == "file" {
        url.to_file_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|()| url.to_string())
    } else {
        url.to_string()
    }
}

/// Opens an existing table; `Ok(None)` when there is no Delta table at the location.
pub async fn open(url: &Url) -> Result<Option<DeltaTable>> {
    crate::store::meter();
    let mut table = deltalake::DeltaTableBuilder::from_url(url.clone())
        .delta_context(|| format!("opening the Delta table at {}", display_location(url)))?
        .with_storage_options(crate::store::options())
        .build()
        .delta_context(|| format!("opening the Delta table at {}", display_location(url)))?;
    if !table
        .verify_deltatable_existence()
        .await
        .delta_context(|| format!("looking for a Delta table at {}", display_location(url)))?
    {
        return Ok(None);
    }
    table
        .load()
        .await
        .delta_context(|| format!("loading the Delta table at {}", display_location(url)))?;
    Ok(Some(table))
}

/// Creates the table: protocol reader 1 / writer 2 (no table features, so every Delta
/// reader, old Databricks runtimes included, reads it); writer 4 with Change Data Feed
/// (readers stay at version 1); reader 3 / writer 7 with deletion vectors.
pub async fn create(
    url: &Url,
    shape: &TableShape,
    name: &str,
    features: Features,
) -> Result<DeltaTable> {
    crate::store::meter();
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating the directory {}", path.display()), e))?;
    }
    let mut builder = CreateBuilder::new()
        .with_location(url.to_string())
        .with_storage_options(crate::store::options())
        .with_table_name(name)
        .with_comment(format!("mirrored from PostgreSQL by lakets: {name}"))
        .with_columns(shape.delta_fields()?)
        .with_configuration([
            // One commit per flush (about a second under load): keep the log short.
            ("delta.checkpointInterval", Some("100")),
            ("delta.logRetentionDuration", Some("interval 2 days")),
            (
                "delta.deletedFileRetentionDuration",
                Some("interval 1 days"),
            ),
        ])
        .with_configuration(features.properties());
    let partition_columns = shape.partition_columns();
    if !partition_columns.is_empty() {
        builder = builder.with_partition_columns(partition_columns);
    }
    builder
        .await
        .delta_context(|| format!("creating the Delta table at {}", display_location(url)))
}

/// Adds `columns` to the table's schema (nullable: rows written before read NULL) in a
/// commit of its own, on the latest version, and returns the table at that version.
pub async fn add_columns(table: &DeltaTable, columns: &[DataColumn]) -> Result<DeltaTable> {
    let fields = columns
        .iter()
        .map(|c| {
            Ok(deltalake::kernel::StructField::new(
                &c.name,
                c.kind.delta_type()?,
                true,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let location = display_location(table.table_url());
    let mut table = table.clone();
    for _ in 0..MAX_REBASES {
        let state = table
            .snapshot()
            .delta_context(|| format!("reading {location}"))?;
        let metadata = super::protocol::with_columns(state, &fields)?;
        let operation = DeltaOperation::AddColumn {
            fields: fields.clone(),
        };
        if try_commit(
            &mut table,
            vec![Action::Metadata(metadata)],
            operation,
            None,
        )
        .await?
        .is_some()
        {
            return Ok(table);
        }
    }
    Err(Error::Delta {
        context: format!("adding columns to the Delta table at {location}"),
        message: "other writers kept changing the table's schema first".into(),
    })
}

/// Writes `batch` (a shape's columns) through `writer`, whose schema is the table's: a
/// column of the table that the batch lacks (another writer's, another cluster's of a
/// shared table) is written as NULL. (deltalake's own `MergeSchema` mode refuses
/// partitioned tables.)
pub async fn write_batch(
    writer: &mut RecordBatchWriter,
    batch: RecordBatch,
) -> std::result::Result<(), deltalake::DeltaTableError> {
    use deltalake::writer::DeltaWriter as _;
    let schema = writer.arrow_schema();
    let batch = if batch.num_columns() < schema.fields().len() {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                batch.column_by_name(f.name()).cloned().unwrap_or_else(|| {
                    arrow::array::new_null_array(f.data_type(), batch.num_rows())
                })
            })
            .collect();
        RecordBatch::try_new(schema, columns)
            .map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))?
    } else {
        batch
    };
    writer.write(batch).await
}

/// A writer for the table's current schema: zstd Parquet, statistics on the first 32
/// columns (Delta's default), files cut at [`TARGET_FILE_BYTES`].
pub fn writer(table: &DeltaTable) -> Result<RecordBatchWriter> {
    Ok(RecordBatchWriter::for_table(table)
        .delta_context(|| "preparing a Delta writer".into())?
        .with_writer_properties(writer_properties())
        .with_target_file_size(TARGET_FILE_BYTES))
}

/// zstd level 3, row groups of [`ROW_GROUP_ROWS`].
pub(crate) fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("zstd level 3 is valid"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// Commits `actions` as one new table version, with `txn` (app id, end LSN of the last
/// transaction the commit makes durable) in the same commit.
///
/// A commit that only adds files may land after commits of other writers (deltalake's
/// conflict check lets appends through). A commit that removes files chose them from
/// `table`'s snapshot, so it must land exactly on that version: another writer (a
/// Databricks OPTIMIZE, a second source) may have removed or rewritten the same files
/// since, and deltalake's check without DataFusion does not see every such conflict (it
/// ignores removes with `dataChange = false`). When the table moved on by commits that left
/// every file it removes in place (appends), it is moved onto the latest version; when a
/// file it removes is gone, it returns `Ok(None)`: reload ([`refresh`]), choose again, retry.
///
/// A commit the store applied but whose answer was lost (a 5xx, a timeout: the client's
/// retry then finds the version taken) is recognised by the id in its commitInfo and
/// returned as committed: choosing again, or deleting its files as uncommitted, would
/// write its changes twice or lose the files a version references.
///
/// A commit carrying a schema or protocol change is bound to its snapshot in the same way,
/// and so is any commit that removes files when another writer changed the table's
/// metadata or protocol since (turned Change Data Feed on, say: the commit then needs
/// change data it was not built with).
pub async fn try_commit(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    txn: Option<(&str, Lsn)>,
) -> Result<Option<i64>> {
    try_commit_with(table, actions, operation, txn, Vec::new()).await
}

/// [`try_commit`] with `info` added to the commit's commitInfo.
pub async fn try_commit_with(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    txn: Option<(&str, Lsn)>,
    info: Vec<(String, serde_json::Value)>,
) -> Result<Option<i64>> {
    use deltalake::kernel::transaction::TransactionError;
    let bound = actions.iter().any(|a| {
        matches!(
            a,
            Action::Remove(_) | Action::Metadata(_) | Action::Protocol(_)
        )
    });
    let location = display_location(table.table_url());
    // Names this commit in its commitInfo: a store that applied the commit file but
    // failed its answer (a 5xx, a timeout) makes the client's retry meet the file as
    // "version exists"; the id tells this commit from another writer's.
    let commit_id = uuid::Uuid::new_v4().to_string();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let base = table.version();
        let mut metadata = vec![(
            COMMIT_ID_KEY.to_string(),
            serde_json::Value::String(commit_id.clone()),
        )];
        if let Some(writer) = WRITER_NAME.get() {
            metadata.push((
                WRITER_KEY.to_string(),
                serde_json::Value::String(writer.clone()),
            ));
        }
        metadata.extend(info.iter().cloned());
        // Zero retries: the commit is written at snapshot version + 1 or not at all, and
        // every conflict comes back here, where the app ids it records are checked.
        let mut properties = CommitProperties::default()
            .with_metadata(metadata)
            .with_max_retries(0);
        if let Some((app_id, lsn)) = txn {
            properties =
                properties.with_application_transaction(Transaction::new(app_id, lsn.0 as i64));
        }
        let state = table
            .snapshot()
            .delta_context(|| format!("reading {location}"))?;
        let shape_before = (state.metadata().clone(), state.protocol().clone());
        let outcome = CommitBuilder::from(properties)
            .with_actions(actions.clone())
            .build(
                Some(&super::protocol::checked(state, &location)?),
                table.log_store(),
                operation.clone(),
            )
            .await;
        let conflict = match outcome {
            Ok(finalized) => {
                table.state = Some(finalized.snapshot());
                return Ok(Some(finalized.version() as i64));
            }
            Err(deltalake::DeltaTableError::Transaction {
                source:
                    e @ (TransactionError::CommitConflict(_) | TransactionError::MaxCommitAttempts(_)),
            }) => e,
            Err(e) => {
                return Err(e)
                    .delta_context(|| format!("committing to the Delta table at {location}"));
            }
        };
        // The version was taken: by this very commit (its answer was lost), or by another.
        // The app ids this commit records: the stream's, and any it carries among its
        // actions (a shared table's source claim).
        let app_ids: Vec<&str> = txn
            .map(|(app_id, _)| app_id)
            .into_iter()
            .chain(actions.iter().filter_map(|a| match a {
                Action::Txn(t) => Some(t.app_id.as_str()),
                _ => None,
            }))
            .collect();
        let mut before = Vec::with_capacity(app_ids.len());
        for app_id in &app_ids {
            before.push(txn_lsn(table, app_id).await?);
        }
        refresh(table).await?;
        if let Some(version) = landed(table, base, &commit_id).await? {
            tracing::info!(table = %location, version, "a commit whose answer the store lost had landed");
            return Ok(Some(version));
        }
        metrics::counter!("lakets_delta_commit_conflicts_total").increment(1);
        // A commit carrying one of these app ids landed since the snapshot: a second
        // writer of the same stream (an older process' commit arriving late), or another
        // database taking the same source name. Committing again would write the window
        // twice, or mix two sources; the restart reads the table's position and skips what
        // it holds.
        for (app_id, before) in app_ids.iter().zip(before) {
            let after = txn_lsn(table, app_id).await?;
            if after != before {
                return Err(Error::Delta {
                    context: format!("committing to the Delta table at {location}"),
                    message: format!(
                        "another commit of stream {app_id} landed since this commit's \
                         snapshot (position {} -> {}); not committing the same changes twice",
                        before.map_or("none".into(), |l| l.to_string()),
                        after.map_or("none".into(), |l| l.to_string())
                    ),
                });
            }
        }
        if bound {
            // Every file this commit removes still active and the table's metadata and
            // protocol as they were: no writer removed or rewrote them since (the other
            // commits only added files, another cluster's of a shared table say), so the
            // same actions stand on the new version. Choosing again would meet the next
            // commit the same way and never land.
            let state = table
                .snapshot()
                .delta_context(|| format!("reading {location}"))?;
            let unchanged = (state.metadata(), state.protocol())
                == (&shape_before.0, &shape_before.1)
                && !actions
                    .iter()
                    .any(|a| matches!(a, Action::Metadata(_) | Action::Protocol(_)));
            if attempt < MAX_REBASES && unchanged && still_active(table, &actions).await? {
                metrics::counter!("lakets_delta_commit_rebases_total").increment(1);
                tracing::debug!(table = %location, attempt, "rebasing a commit over another writer's appends");
                continue;
            }
            tracing::info!(table = %location, error = %conflict, "another writer committed to the Delta table since its snapshot; choosing the files again");
            return Ok(None);
        }
        // Added files depend on no snapshot: after another writer's commit that
        // deltalake's check refuses, the same adds land on the latest version.
        if attempt >= MAX_REBASES {
            return Err(Error::Delta {
                context: format!("committing to the Delta table at {location}"),
                message: format!("other writers kept committing first: {conflict}"),
            });
        }
    }
}

/// Times [`try_commit`] moves a commit onto a newer version (other writers committed first)
/// before it gives up (a commit that removes files: lets the caller choose them again).
const MAX_REBASES: usize = 50;

/// Whether every file `actions` remove is active in the table as loaded, with the same
/// deletion vector (a file whose vector another commit changed is another version of it:
/// re-adding it with ours would bring back the rows that commit deleted).
async fn still_active(table: &DeltaTable, actions: &[Action]) -> Result<bool> {
    let active: std::collections::HashMap<
        String,
        Option<deltalake::kernel::DeletionVectorDescriptor>,
    > = super::read::active_files(table)
        .await?
        .iter()
        .map(|f| (f.path().into_owned(), f.deletion_vector_descriptor()))
        .collect();
    Ok(actions.iter().all(|a| match a {
        Action::Remove(r) => active.get(&r.path) == Some(&r.deletion_vector),
        _ => true,
    }))
}

/// The commitInfo key naming the process that made a commit (its instance name, see
/// [`set_writer_name`]): a deposed leader's commits are then told from its successor's.
const WRITER_KEY: &str = "lakets.writer";

static WRITER_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process in the commitInfo of every commit it makes from now on (once; later
/// calls keep the first name).
pub fn set_writer_name(name: &str) {
    let _ = WRITER_NAME.set(name.to_owned());
}

/// The commitInfo key under which [`try_commit`] names each commit.
const COMMIT_ID_KEY: &str = "lakets.commitId";

/// The version after `base`, up to the table's loaded version, whose commitInfo carries
/// `commit_id`.
async fn landed(table: &DeltaTable, base: Option<u64>, commit_id: &str) -> Result<Option<i64>> {
    let Some(latest) = table.version() else {
        return Ok(None);
    };
    let location = display_location(table.table_url());
    for version in base.map_or(0, |b| b + 1)..=latest {
        let Some(bytes) = table
            .log_store()
            .read_commit_entry(version)
            .await
            .delta_context(|| format!("reading version {version} of {location}"))?
        else {
            continue;
        };
        let named = bytes
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .any(|action| {
                action
                    .get("commitInfo")
                    .and_then(|info| info.get(COMMIT_ID_KEY))
                    .and_then(|id| id.as_str())
                    == Some(commit_id)
            });
        if named {
            return Ok(Some(version as i64));
        }
    }
    Ok(None)
}

/// [`try_commit`] for callers that cannot choose again: a commit that removes files and
/// meets another writer's commit fails (transiently; the whole step is retried).
pub async fn commit(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    txn: Option<(&str, Lsn)>,
) -> Result<i64> {
    let location = display_location(table.table_url());
    try_commit(table, actions, operation, txn)
        .await?
        .ok_or_else(|| Error::Delta {
            context: format!("committing to the Delta table at {location}"),
            message: "another writer removed or rewrote files since this commit's snapshot, \
                      or kept committing first"
                .into(),
        })
}

/// Moves `table` to the latest version of its log.
pub async fn refresh(table: &mut DeltaTable) -> Result<()> {
    let location = display_location(table.table_url());
    table
        .update_incremental(None)
        .await
        .delta_context(|| format!("loading the latest version of {location}"))
}

/// The LSN recorded by the last commit of `app_id`, if any.
pub async fn txn_lsn(table: &DeltaTable, app_id: &str) -> Result<Option<Lsn>> {
    let location = display_location(table.table_url());
    let version = table
        .snapshot()
        .delta_context(|| format!("reading {location}"))?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .delta_context(|| format!("reading the transactions of {location}"))?;
    Ok(version.map(|v| Lsn(v as u64)))
}

/// Reads one data file of the table whole (files are bounded by [`TARGET_FILE_BYTES`]).
pub async fn read_file(table: &DeltaTable, path: &str) -> Result<Vec<RecordBatch>> {
    open_file(table, path)
        .await?
        .try_collect()
        .await
        .delta_context(|| format!("reading Delta file {path}"))
}

/// A data file's record batches, read one at a time.
#[allow(deprecated)] // ParquetObjectReader, as at the import
pub type FileBatches = parquet::arrow::async_reader::ParquetRecordBatchStream<ParquetObjectReader>;

/// A data file's record batches, one at a time (64k rows each): only one is in memory.
pub async fn open_file(table: &DeltaTable, path: &str) -> Result<FileBatches> {
    open_file_columns(table, path, None).await
}

/// As [`open_file`], decoding only the named columns when `columns` is given.
#[allow(deprecated)]
pub async fn open_file_columns(
    table: &DeltaTable,
    path: &str,
    columns: Option<&[&str]>,
) -> Result<FileBatches> {
    let store = table.object_store();
    let object_path = object_store::path::Path::parse(path)
        .delta_context(|| format!("Delta file path {path}"))?;
    let reader = ParquetObjectReader::new(Arc::clone(&store), object_path);
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .delta_context(|| format!("opening Delta file {path}"))?
        .with_batch_size(64 * 1024);
    if let Some(columns) = columns {
        let mask = parquet::arrow::ProjectionMask::columns(
            builder.parquet_schema(),
            columns.iter().copied(),
        );
        builder = builder.with_projection(mask);
    }
    builder
        .build()
        .delta_context(|| format!("reading Delta file {path}"))
}

/// A data file of the table: its path (from the table's root, as the object store names
/// it) and the deletion vector of its version, if any.
#[derive(Debug, Clone)]
pub struct DataFile {
    pub path: String,
    pub deletion_vector: Option<deltalake::kernel::DeletionVectorDescriptor>,
}

impl DataFile {
    /// A file of the table's current version.
    pub fn of(view: &deltalake::kernel::LogicalFileView) -> Self {
        DataFile {
            path: view.object_store_path().to_string(),
            deletion_vector: view.deletion_vector_descriptor(),
        }
    }

    /// A file written but not committed yet (it has no deletion vector).
    pub fn staged(path: String) -> Self {
        DataFile {
            path,
            deletion_vector: None,
        }
    }
}

/// The rows of a data file its deletion vector leaves, a batch at a time, with each row's
/// position in the file.
pub struct LiveBatches {
    batches: FileBatches,
    deleted: Option<roaring::RoaringTreemap>,
    /// Position in the file of the next row read.
    position: u64,
    path: String,
}

impl LiveBatches {
    /// The next batch of live rows.
    pub async fn next(&mut self) -> Result<Option<RecordBatch>> {
        Ok(self.next_with_positions().await?.map(|(batch, _)| batch))
    }

    /// The next batch of live rows and the position in the file of each.
    pub async fn next_with_positions(&mut self) -> Result<Option<(RecordBatch, Vec<u64>)>> {
        loop {
            let Some(batch) = self
                .batches
                .try_next()
                .await
                .delta_context(|| format!("reading Delta file {}", self.path))?
            else {
                return Ok(None);
            };
            let first = self.position;
            let rows = batch.num_rows() as u64;
            self.position += rows;
            let Some(deleted) = self
                .deleted
                .as_ref()
                .filter(|d| d.range_cardinality(first..first + rows) > 0)
            else {
                return Ok(Some((batch, (first..first + rows).collect())));
            };
            let keep: arrow::array::BooleanArray = (first..first + rows)
                .map(|p| Some(!deleted.contains(p)))
                .collect();
            let positions: Vec<u64> = (first..first + rows)
                .filter(|p| !deleted.contains(*p))
                .collect();
            if positions.is_empty() {
                continue;
            }
            let batch = arrow::compute::filter_record_batch(&batch, &keep)
                .map_err(|e| Error::Operator(format!("applying a deletion vector: {e}")))?;
            return Ok(Some((batch, positions)));
        }
    }
}

/// The live rows of `file` (its deletion vector applied), decoding only `columns` when
/// given.
pub async fn open_live(
    table: &DeltaTable,
    file: &DataFile,
    columns: Option<&[&str]>,
) -> Result<LiveBatches> {
    let deleted =
        super::deletion_vector::deleted_rows(table, file.deletion_vector.as_ref()).await?;
    Ok(LiveBatches {
        batches: open_file_columns(table, &file.path, columns).await?,
        deleted,
        position: 0,
        path: file.path.clone(),
    })
}

/// The rows of the data file at `path` at `positions` (ascending, physical: no deletion
/// vector applied), a batch at a time in that order: only the row groups holding one are
/// read, and in them only those rows decoded. A delete into a compacted 128 MB file reads a
/// row group, not the file.
#[allow(deprecated)] // ParquetObjectReader, as at the import
pub async fn open_rows(table: &DeltaTable, path: &str, positions: &[u64]) -> Result<FileBatches> {
    use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
    let object_path = object_store::path::Path::parse(path)
        .delta_context(|| format!("Delta file path {path}"))?;
    let reader = ParquetObjectReader::new(table.object_store(), object_path);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .delta_context(|| format!("opening Delta file {path}"))?;
    let (mut groups, mut selectors) = (Vec::new(), Vec::new());
    let (mut start, mut next) = (0u64, 0usize);
    for (g, group) in builder.metadata().row_groups().iter().enumerate() {
        let end = start + group.num_rows().max(0) as u64;
        let mut cursor = start;
        while next < positions.len() && positions[next] < end {
            let p = positions[next].max(cursor);
            if p > cursor {
                selectors.push(RowSelector::skip((p - cursor) as usize));
            }
            selectors.push(RowSelector::select(1));
            cursor = p + 1;
            next += 1;
        }
        if cursor > start {
            if cursor < end {
                selectors.push(RowSelector::skip((end - cursor) as usize));
            }
            groups.push(g);
        }
        start = end;
    }
    if next < positions.len() {
        return Err(Error::Diverged(format!(
            "Delta file {path} holds {start} rows, not row {}",
            positions[next]
        )));
    }
    builder
        .with_row_groups(groups)
        .with_row_selection(RowSelection::from(selectors))
        .with_batch_size(64 * 1024)
        .build()
        .delta_context(|| format!("reading Delta file {path}"))
}

/// Deletes a written but never committed file (best effort: vacuum also finds it).
pub async fn delete_uncommitted(table: &DeltaTable, path: &str) {
    if let Ok(p) = object_store::path::Path::from_url_path(path)
        && let Err(e) = table.object_store().delete(&p).await
    {
        tracing::debug!(path, error = %e, "could not delete an uncommitted file; vacuum will");
    }
}
