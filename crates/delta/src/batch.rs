//! Rows of cells to Arrow record batches (with the derived partition column) and back.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Array,
    Date32Builder, Decimal128Array, Decimal128Builder, Float32Array, Float32Builder, Float64Array,
    Float64Builder, Int16Array, Int16Builder, Int32Array, Int32Builder, Int64Array, Int64Builder,
    StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::record_batch::RecordBatch;

use super::schema::{Cell, ColumnKind, TableShape, UTC};
use crate::error::{Error, Result};

/// A row as cells, one per data column of its [`TableShape`].
pub type CellRow = Vec<Cell>;

/// Builds one record batch (data columns, then the partition column) from rows.
pub fn build_batch(shape: &TableShape, rows: &[&CellRow]) -> Result<RecordBatch> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(shape.columns.len() + 1);
    for (i, column) in shape.columns.iter().enumerate() {
        let cells = rows.iter().map(|r| r.get(i).unwrap_or(&Cell::Null));
        arrays.push(build_array(column.kind, cells).map_err(|why| {
            Error::Unsupported(format!(
                "column {:?}: {why}; the Delta table cannot hold this value, so \
                         streaming stops here (nothing after it is acknowledged)",
                column.name
            ))
        })?);
    }
    if shape.partition_column.is_some() {
        let mut b = Date32Builder::with_capacity(rows.len());
        for r in rows {
            b.append_option(
                r.get(shape.time_index)
                    .and_then(|c| shape.partition_of_cell(c)),
            );
        }
        arrays.push(Arc::new(b.finish()));
    }
    if let Some(source) = &shape.source {
        arrays.push(Arc::new(StringArray::from(vec![
            source.as_str();
            rows.len()
        ])));
    }
    RecordBatch::try_new(shape.arrow_schema(), arrays)
        .map_err(|e| Error::Operator(format!("building a record batch: {e}")))
}

fn build_array<'a>(
    kind: ColumnKind,
    cells: impl ExactSizeIterator<Item = &'a Cell>,
) -> std::result::Result<ArrayRef, String> {
    let n = cells.len();
    macro_rules! primitive {
        ($builder:ty, $variant:ident, $conv:expr) => {{
            let mut b = <$builder>::with_capacity(n);
            for c in cells {
                match c {
                    Cell::Null => b.append_null(),
                    Cell::$variant(v) => b.append_value($conv(v)?),
                    other => return Err(format!("unexpected value {other:?}")),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    let narrow = |v: &i64| -> std::result::Result<i64, String> { Ok(*v) };
    Ok(match kind {
        ColumnKind::Bool => primitive!(BooleanBuilder, Bool, |v: &bool| Ok::<_, String>(*v)),
        ColumnKind::Int16 => primitive!(Int16Builder, Int, |v: &i64| i16::try_from(*v)
            .map_err(|e| e.to_string())),
        ColumnKind::Int32 => primitive!(Int32Builder, Int, |v: &i64| i32::try_from(*v)
            .map_err(|e| e.to_string())),
        ColumnKind::Int64 => primitive!(Int64Builder, Int, narrow),
        ColumnKind::Float32 => primitive!(Float32Builder, Float, |v: &u64| Ok::<_, String>(
            f64::from_bits(*v) as f32
        )),
        ColumnKind::Float64 => primitive!(Float64Builder, Float, |v: &u64| Ok::<_, String>(
            f64::from_bits(*v)
        )),
        ColumnKind::Decimal { precision, scale } => {
            let mut b = Decimal128Builder::with_capacity(n);
            for c in cells {
                match c {
                    Cell::Null => b.append_null(),
                    Cell::Decimal(v) => b.append_value(*v),
                    other => return Err(format!("unexpected value {other:?}")),
                }
            }
            Arc::new(
                b.finish()
                    .with_precision_and_scale(precision, scale)
                    .map_err(|e| e.to_string())?,
            )
        }
        ColumnKind::Utf8 => {
            let mut b = StringBuilder::with_capacity(n, n * 8);
            for c in cells {
                match c {
                    Cell::Null => b.append_null(),
                    Cell::Str(s) => b.append_value(s),
                    other => return Err(format!("unexpected value {other:?}")),
                }
            }
            Arc::new(b.finish())
        }
        ColumnKind::Binary => {
            let mut b = BinaryBuilder::with_capacity(n, n * 8);
            for c in cells {
                match c {
                    Cell::Null => b.append_null(),
                    Cell::Bytes(v) => b.append_value(v),
                    other => return Err(format!("unexpected value {other:?}")),
                }
            }
            Arc::new(b.finish())
        }
        ColumnKind::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone(UTC);
            for c in cells {
                match c {
                    Cell::Null => b.append_null(),
                    Cell::Int(v) => b.append_value(*v),
                    other => return Err(format!("unexpected value {other:?}")),
                }
            }
            Arc::new(b.finish())
        }
        ColumnKind::Date => primitive!(Date32Builder, Int, |v: &i64| i32::try_from(*v)
            .map_err(|e| e.to_string())),
    })
}

/// The cell at `row` of an array written by [`build_batch`] (or a compatible writer).
pub fn cell_at(array: &dyn Array, row: usize) -> Result<Cell> {
    if array.is_null(row) {
        return Ok(Cell::Null);
    }
    let any = array.as_any();
    macro_rules! get {
        ($ty:ty) => {
            any.downcast_ref::<$ty>().map(|a| a.value(row))
        };
    }
    use arrow::datatypes::DataType as T;
    let cell = match array.data_type() {
        T::Boolean => get!(BooleanArray).map(Cell::Bool),
        T::Int16 => get!(Int16Array).map(|v| Cell::Int(v as i64)),
        T::Int32 => get!(Int32Array).map(|v| Cell::Int(v as i64)),
        T::Int64 => get!(Int64Array).map(Cell::Int),
        T::Float32 => get!(Float32Array).map(|v| Cell::Float((v as f64).to_bits())),
        T::Float64 => get!(Float64Array).map(|v| Cell::Float(v.to_bits())),
        T::Decimal128(_, _) => get!(Decimal128Array).map(Cell::Decimal),
        T::Utf8 => get!(StringArray).map(|v| Cell::Str(v.to_owned())),
        T::Binary => get!(BinaryArray).map(|v| Cell::Bytes(v.to_vec())),
        // Other writers' files (delta-rs' Python package writes views, Spark large
        // offsets on occasion) hold the same values in other layouts.
        T::Utf8View => get!(arrow::array::StringViewArray).map(|v| Cell::Str(v.to_owned())),
        T::LargeUtf8 => get!(arrow::array::LargeStringArray).map(|v| Cell::Str(v.to_owned())),
        T::BinaryView => get!(arrow::array::BinaryViewArray).map(|v| Cell::Bytes(v.to_vec())),
        T::LargeBinary => get!(arrow::array::LargeBinaryArray).map(|v| Cell::Bytes(v.to_vec())),
        T::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => {
            get!(TimestampMicrosecondArray).map(Cell::Int)
        }
        T::Date32 => get!(Date32Array).map(|v| Cell::Int(v as i64)),
        _ => None,
    };
    cell.ok_or_else(|| {
        Error::Unsupported(format!(
            "a Delta file holds a column of type {} that lakets does not write",
            array.data_type()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Partitioning;
    use crate::wal::value::ColumnType;

    #[test]
    fn other_writers_string_and_binary_layouts_read_as_the_same_cells() {
        let views: Vec<(ArrayRef, Cell)> = vec![
            (
                Arc::new(arrow::array::StringViewArray::from(vec![
                    "a long enough string value",
                ])),
                Cell::Str("a long enough string value".into()),
            ),
            (
                Arc::new(arrow::array::LargeStringArray::from(vec!["x"])),
                Cell::Str("x".into()),
            ),
            (
                Arc::new(arrow::array::BinaryViewArray::from(vec![&b"\x00\x01"[..]])),
                Cell::Bytes(vec![0, 1]),
            ),
            (
                Arc::new(arrow::array::LargeBinaryArray::from(vec![&b"\x02"[..]])),
                Cell::Bytes(vec![2]),
            ),
        ];
        for (array, want) in views {
            assert_eq!(
                cell_at(array.as_ref(), 0).unwrap(),
                want,
                "{}",
                array.data_type()
            );
        }
    }

    #[test]
    fn cells_round_trip_through_arrow() {
        let shape = TableShape::new(
            &[
                ("time".into(), ColumnType::Timestamptz, -1),
                ("symbol".into(), ColumnType::Text, -1),
                ("price".into(), ColumnType::Numeric, (12 << 16 | 4) + 4),
                ("volume".into(), ColumnType::Int4, -1),
                ("ok".into(), ColumnType::Bool, -1),
                ("raw".into(), ColumnType::Bytea, -1),
                ("f".into(), ColumnType::Float4, -1),
            ],
            "time",
            Partitioning::Day,
        )
        .unwrap();
        let rows = [
            vec![
                Cell::Int(1_700_000_000_000_001),
                Cell::Str("AAPL".into()),
                Cell::Decimal(1_234_500),
                Cell::Int(-7),
                Cell::Bool(true),
                Cell::Bytes(vec![0, 1, 2]),
                Cell::Float((1.5f32 as f64).to_bits()),
            ],
            vec![
                Cell::Int(0),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
            ],
        ];
        let refs: Vec<&CellRow> = rows.iter().collect();
        let batch = build_batch(&shape, &refs).unwrap();
        assert_eq!(batch.num_columns(), 8);
        for (r, row) in rows.iter().enumerate() {
            for (c, cell) in row.iter().enumerate() {
                assert_eq!(&cell_at(batch.column(c).as_ref(), r).unwrap(), cell);
            }
        }
        assert_eq!(
            cell_at(batch.column(7).as_ref(), 0).unwrap(),
            Cell::Int(19675)
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let shape = TableShape::new(
            &[
                ("time".into(), ColumnType::Timestamptz, -1),
                ("v".into(), ColumnType::Int2, -1),
            ],
            "time",
            Partitioning::None,
        )
        .unwrap();
        let row = vec![Cell::Int(0), Cell::Int(70_000)];
        let err = build_batch(&shape, &[&row]).unwrap_err().to_string();
        assert!(err.contains("\"v\""), "{err}");
    }
}
