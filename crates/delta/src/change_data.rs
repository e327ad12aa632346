//! Change data files (Change Data Feed): `_change_data/` Parquet files holding a commit's
//! changes, partitioned like the table, with each row's change type; the mirror writes
//! them in the commit whose changes they hold ([`super::mirror`]).

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::writer::RecordBatchWriter;

use crate::error::{DeltaResultExt, Error, Result};

/// The column of a change data file naming each row's change: `insert`, `delete`,
/// `update_preimage` or `update_postimage`.
pub const CHANGE_TYPE_COLUMN: &str = "_change_type";

/// Where change data files live, under the table's root.
pub const CHANGE_DATA_DIR: &str = "_change_data";

/// A writer of change data files (`_change_data/`, partitioned like the table): the
/// table's columns and [`CHANGE_TYPE_COLUMN`].
pub fn change_writer(table: &DeltaTable) -> Result<RecordBatchWriter> {
    let location = super::table::display_location(table.table_url());
    let data = super::table::writer(table)?;
    let mut fields: Vec<arrow::datatypes::FieldRef> =
        data.arrow_schema().fields().iter().cloned().collect();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        CHANGE_TYPE_COLUMN,
        arrow::datatypes::DataType::Utf8,
        false,
    )));
    let schema = Arc::new(arrow::datatypes::Schema::new(fields));
    let mut root = table.table_url().clone();
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    let root = root
        .join(&format!("{CHANGE_DATA_DIR}/"))
        .map_err(|e| Error::invalid(format!("the change data location of {location}: {e}")))?;
    if root.scheme() == "file"
        && let Ok(path) = root.to_file_path()
    {
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating the directory {}", path.display()), e))?;
    }
    let partitions = table
        .snapshot()
        .delta_context(|| format!("reading {location}"))?
        .metadata()
        .partition_columns()
        .to_vec();
    Ok(RecordBatchWriter::try_new(
        root.as_str(),
        schema,
        Some(partitions),
        Some(crate::store::options()),
    )
    .delta_context(|| format!("preparing a change data writer for {location}"))?
    .with_writer_properties(super::table::writer_properties())
    .with_target_file_size(super::table::TARGET_FILE_BYTES))
}

/// Writes `batch` (a shape's columns) with each row's change type through a
/// [`change_writer`].
pub async fn write_changes(
    writer: &mut RecordBatchWriter,
    batch: RecordBatch,
    change_types: Vec<&'static str>,
) -> std::result::Result<(), deltalake::DeltaTableError> {
    use deltalake::writer::DeltaWriter as _;
    let schema = writer.arrow_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == CHANGE_TYPE_COLUMN {
                Arc::new(arrow::array::StringArray::from(change_types.clone())) as _
            } else {
                batch.column_by_name(f.name()).cloned().unwrap_or_else(|| {
                    arrow::array::new_null_array(f.data_type(), batch.num_rows())
                })
            }
        })
        .collect();
    let batch = RecordBatch::try_new(schema, columns)
        .map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))?;
    writer.write(batch).await
}

/// The `cdc` action of a file a [`change_writer`] wrote.
pub fn change_file(add: deltalake::kernel::Add) -> Action {
    Action::Cdc(deltalake::kernel::AddCDCFile {
        path: format!("{CHANGE_DATA_DIR}/{}", add.path),
        size: add.size,
        partition_values: add.partition_values,
        data_change: false,
        tags: None,
    })
}
