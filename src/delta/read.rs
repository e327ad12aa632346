//! Reading a Delta table back as rows of cells: for `lakets verify` and the tests, which
//! compare it with the PostgreSQL table row for row.

use deltalake::DeltaTable;
use futures_util::TryStreamExt;

use super::batch::{CellRow, cell_at};
use super::schema::{Cell, TableShape};
use super::table;
use crate::error::{DeltaResultExt, Result};

/// Every row of the table's current version, in the shape's column order (the partition
/// column left out), in no particular order.
pub async fn scan(delta: &DeltaTable, shape: &TableShape) -> Result<Vec<CellRow>> {
    let location = table::display_location(delta.table_url());
    let views: Vec<_> = delta
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await
        .delta_context(|| format!("listing the files of {location}"))?;
    let mut rows = Vec::new();
    for view in views {
        let path = view.object_store_path().to_string();
        for batch in table::read_file(delta, &path).await? {
            let columns: Vec<_> = shape
                .columns
                .iter()
                .map(|c| batch.column_by_name(&c.name))
                .collect();
            for r in 0..batch.num_rows() {
                rows.push(
                    columns
                        .iter()
                        .map(|c| c.map_or(Ok(Cell::Null), |a| cell_at(a.as_ref(), r)))
                        .collect::<Result<_>>()?,
                );
            }
        }
    }
    Ok(rows)
}
