//! Delta table upkeep: checkpoints, compaction of small files per partition, and vacuum of
//! files no version references any more.
//!
//! The service runs these through each table's mirror, between two of its windows
//! ([`super::mirror::TableMirror::maintain`]), so the table's own writer never races its
//! compaction. Compaction commits with `dataChange = false`, so streaming readers of the
//! table skip it, and exactly on the version it read its files from: when another writer
//! committed meanwhile it reports `None` and the caller may try again.

use std::collections::HashMap;

use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::DeltaWriter;
use object_store::ObjectStoreExt as _;
use tracing::info;

use super::batch::{CellRow, build_batch};
use super::schema::TableShape;
use super::table;
use crate::error::{DeltaResultExt, Result};

/// Writes a checkpoint of the current version (readers then skip replaying the JSON log)
/// and removes log files past the table's log retention.
pub async fn checkpoint(table: &DeltaTable) -> Result<usize> {
    let location = table::display_location(table.table_url());
    deltalake::checkpoints::create_checkpoint(table, None)
        .await
        .delta_context(|| format!("writing a checkpoint of {location}"))?;
    deltalake::checkpoints::cleanup_metadata(table, None)
        .await
        .delta_context(|| format!("cleaning the log of {location}"))
}

/// What a compaction did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CompactionOutcome {
    pub partitions: usize,
    pub files_removed: usize,
    pub files_added: usize,
    pub rows: usize,
    pub version: Option<i64>,
}

/// Rewrites, in each partition holding at least `min_files` files smaller than
/// `small_bytes`, those files into as few files as the target size allows; one commit,
/// on the version `table` holds. `None`: another writer committed since (nothing changed;
/// refresh and try again).
pub async fn compact(
    table: &mut DeltaTable,
    shape: &TableShape,
    min_files: usize,
    small_bytes: i64,
) -> Result<Option<CompactionOutcome>> {
    let location = table::display_location(table.table_url());
    let views = super::read::files_of(table, shape).await?;
    let mut groups: HashMap<Vec<(String, Option<String>)>, Vec<_>> = HashMap::new();
    // Partitions holding a file mostly deleted by its deletion vector: rewritten whatever
    // their file count (the vector goes with the rewrite).
    let mut worn: std::collections::HashSet<Vec<(String, Option<String>)>> = Default::default();
    for view in views {
        let deleted = deleted_fraction(&view);
        if view.size() >= small_bytes && deleted < REWRITE_DELETED_FRACTION {
            continue;
        }
        let mut key: Vec<(String, Option<String>)> =
            view.partition_values_map().into_iter().collect();
        key.sort();
        if deleted >= REWRITE_DELETED_FRACTION {
            worn.insert(key.clone());
        }
        groups.entry(key).or_default().push(view);
    }
    let mut outcome = CompactionOutcome::default();
    let mut actions = Vec::new();
    let mut writer = table::writer(table)?;
    for (_, files) in groups
        .into_iter()
        .filter(|(key, f)| f.len() >= min_files || worn.contains(key))
    {
        outcome.partitions += 1;
        for view in &files {
            let path = view.object_store_path().to_string();
            // Batch by batch: a whole file decoded at once is several times its size.
            let mut batches = table::open_live(table, &table::DataFile::of(view), None).await?;
            while let Some(batch) = batches.next().await? {
                if let Some(column) = super::read::unmirrored_values(&batch, shape) {
                    // Rewriting from the mirror's columns would drop that column's values.
                    tracing::warn!(table = %location, file = %path, column, "compaction skipped: the file holds values in a column another writer added, which lakets does not mirror");
                    for add in writer.flush().await.unwrap_or_default() {
                        table::delete_uncommitted(table, &add.path).await;
                    }
                    return Ok(Some(CompactionOutcome::default()));
                }
                let rows = super::read::batch_rows(&batch, shape)?;
                outcome.rows += rows.len();
                let refs: Vec<&CellRow> = rows.iter().collect();
                table::write_batch(&mut writer, build_batch(shape, &refs)?)
                    .await
                    .delta_context(|| format!("compacting {location}"))?;
            }
            actions.push(Action::Remove(view.remove_action(false)));
            outcome.files_removed += 1;
        }
    }
    if actions.is_empty() {
        return Ok(Some(outcome));
    }
    let mut written = Vec::new();
    for mut add in writer
        .flush()
        .await
        .delta_context(|| format!("compacting {location}"))?
    {
        add.data_change = false;
        outcome.files_added += 1;
        written.push(add.path.clone());
        actions.push(Action::Add(add));
    }
    let committed = table::try_commit(
        table,
        actions,
        DeltaOperation::Optimize {
            predicate: None,
            target_size: table::TARGET_FILE_BYTES as i64,
        },
        None,
    )
    .await?;
    let Some(version) = committed else {
        for path in written {
            table::delete_uncommitted(table, &path).await;
        }
        return Ok(None);
    };
    outcome.version = Some(version);
    info!(table = %location, ?outcome, "compacted small files");
    Ok(Some(outcome))
}

/// A file whose deletion vector deletes at least this share of its rows is rewritten by
/// compaction (its readers skip those rows one by one).
pub const REWRITE_DELETED_FRACTION: f64 = 0.25;

/// The share of a file's rows its deletion vector deletes.
fn deleted_fraction(view: &deltalake::kernel::LogicalFileView) -> f64 {
    match (super::read::vector_rows(view), view.num_records()) {
        (0, _) => 0.0,
        (deleted, Some(n)) if n > 0 => deleted as f64 / n as f64,
        _ => 1.0,
    }
}

/// Deletes data files that no version within `retention` references; with `orphans`, also
/// files no version ever committed (a window's files left by a crash before its commit),
/// older than `retention`. That lists the whole table's storage, so it runs seldom.
/// Returns how many went.
pub async fn vacuum(
    table: &mut DeltaTable,
    retention: chrono::Duration,
    orphans: bool,
) -> Result<usize> {
    let location = table::display_location(table.table_url());
    let mode = if orphans {
        deltalake::operations::vacuum::VacuumMode::Full
    } else {
        deltalake::operations::vacuum::VacuumMode::Lite
    };
    // A dry run, then the deletes: deltalake's own vacuum logs VACUUM START/END commits
    // through its protocol check, which refuses tables with Change Data Feed. Vacuum needs
    // no commit (readers never see the files it deletes).
    let (_, plan) = table
        .clone()
        .vacuum()
        .with_mode(mode)
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_dry_run(true)
        .await
        .delta_context(|| format!("vacuuming {location}"))?;
    let store = table.object_store();
    let mut deleted = 0;
    for path in &plan.files_deleted {
        let object = deltalake::Path::parse(path)
            .delta_context(|| format!("vacuuming {location}: file path {path}"))?;
        match store.delete(&object).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => {
                return Err(e).delta_context(|| format!("vacuuming {location}: deleting {path}"));
            }
        }
    }
    Ok(deleted)
}
