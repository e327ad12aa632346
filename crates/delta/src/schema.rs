//! How PostgreSQL columns map to Delta Lake (and Arrow) columns, and the cell values rows
//! are held in between the WAL and a Parquet file.
//!
//! | PostgreSQL | Delta | Arrow |
//! |---|---|---|
//! | boolean | boolean | Boolean |
//! | smallint / integer / bigint | short / integer / long | Int16 / Int32 / Int64 |
//! | real / double precision | float / double | Float32 / Float64 |
//! | numeric(p, s), p <= 38 | decimal(p, s) | Decimal128(p, s) |
//! | numeric (no precision, or p > 38) | string (exact decimal text) | Utf8 |
//! | text, varchar, char, name | string | Utf8 |
//! | uuid | string (canonical 8-4-4-4-12 form) | Utf8 |
//! | json, jsonb | string (the JSON text) | Utf8 |
//! | bytea | binary | Binary |
//! | timestamptz | timestamp (UTC, microseconds) | Timestamp(us, "UTC") |
//! | timestamp (no zone) | timestamp (the wall clock read as UTC) | Timestamp(us, "UTC") |
//! | date | date | Date32 |
//!
//! `timestamp` without zone would map to Delta's `timestamp_ntz`, but that needs reader
//! version 3 (a table feature older Databricks runtimes cannot read), so the wall clock is
//! stored as if it were UTC. Every column is nullable in Delta, so that ALTER TABLE on the
//! PostgreSQL side (dropping NOT NULL) never breaks the mirror. The partition column is
//! derived from the time column: `<time>_day` (a date) by default, `<time>_month` (the
//! first day of the month) or none.

use std::sync::Arc;

use arrow::datatypes::{DataType as ArrowType, Field, Schema, TimeUnit};
use deltalake::kernel::{DataType as DeltaType, StructField};

use crate::error::{Error, Result};
use crate::wal::value::{ColumnType, Value};

/// Arrow's time zone for Delta's `timestamp`.
pub const UTC: &str = "UTC";

/// The type of a Delta column, as far as lakets writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal {
        precision: u8,
        scale: i8,
    },
    Utf8,
    Binary,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
    /// Days since the Unix epoch.
    Date,
}

impl ColumnKind {
    /// The Delta column for a PostgreSQL column, or why there is none.
    pub fn for_postgres(ty: ColumnType, type_modifier: i32) -> Result<Self> {
        Ok(match ty {
            ColumnType::Bool => ColumnKind::Bool,
            ColumnType::Int2 => ColumnKind::Int16,
            ColumnType::Int4 => ColumnKind::Int32,
            ColumnType::Int8 => ColumnKind::Int64,
            ColumnType::Float4 => ColumnKind::Float32,
            ColumnType::Float8 => ColumnKind::Float64,
            ColumnType::Numeric => match numeric_precision(type_modifier) {
                Some((precision, scale)) if (1..=38).contains(&precision) && scale >= 0 => {
                    ColumnKind::Decimal {
                        precision: precision as u8,
                        scale: scale as i8,
                    }
                }
                _ => ColumnKind::Utf8,
            },
            ColumnType::Text | ColumnType::Uuid | ColumnType::Json | ColumnType::Jsonb => {
                ColumnKind::Utf8
            }
            ColumnType::Bytea => ColumnKind::Binary,
            ColumnType::Timestamptz | ColumnType::Timestamp => ColumnKind::Timestamp,
            ColumnType::Date => ColumnKind::Date,
            ColumnType::Other(oid) => {
                return Err(Error::Unsupported(format!(
                    "type oid {oid} has no Delta Lake mapping (supported: boolean, integers, \
                     real, double precision, numeric, text types, uuid, json, jsonb, bytea, \
                     timestamptz, timestamp, date)"
                )));
            }
        })
    }

    pub fn arrow_type(self) -> ArrowType {
        match self {
            ColumnKind::Bool => ArrowType::Boolean,
            ColumnKind::Int16 => ArrowType::Int16,
            ColumnKind::Int32 => ArrowType::Int32,
            ColumnKind::Int64 => ArrowType::Int64,
            ColumnKind::Float32 => ArrowType::Float32,
            ColumnKind::Float64 => ArrowType::Float64,
            ColumnKind::Decimal { precision, scale } => ArrowType::Decimal128(precision, scale),
            ColumnKind::Utf8 => ArrowType::Utf8,
            ColumnKind::Binary => ArrowType::Binary,
            ColumnKind::Timestamp => ArrowType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            ColumnKind::Date => ArrowType::Date32,
        }
    }

    pub fn delta_type(self) -> Result<DeltaType> {
        Ok(match self {
            ColumnKind::Bool => DeltaType::BOOLEAN,
            ColumnKind::Int16 => DeltaType::SHORT,
            ColumnKind::Int32 => DeltaType::INTEGER,
            ColumnKind::Int64 => DeltaType::LONG,
            ColumnKind::Float32 => DeltaType::FLOAT,
            ColumnKind::Float64 => DeltaType::DOUBLE,
            ColumnKind::Decimal { precision, scale } => DeltaType::decimal(precision, scale as u8)
                .map_err(|e| Error::invalid(format!("decimal({precision}, {scale}): {e}")))?,
            ColumnKind::Utf8 => DeltaType::STRING,
            ColumnKind::Binary => DeltaType::BINARY,
            ColumnKind::Timestamp => DeltaType::TIMESTAMP,
            ColumnKind::Date => DeltaType::DATE,
        })
    }

    /// The kind of an existing Delta column (to check a table lakets did not just create).
    pub fn from_delta(ty: &DeltaType) -> Option<Self> {
        use deltalake::kernel::PrimitiveType as P;
        match ty {
            DeltaType::Primitive(p) => Some(match p {
                P::Boolean => ColumnKind::Bool,
                P::Short => ColumnKind::Int16,
                P::Integer => ColumnKind::Int32,
                P::Long => ColumnKind::Int64,
                P::Float => ColumnKind::Float32,
                P::Double => ColumnKind::Float64,
                P::Decimal(d) => ColumnKind::Decimal {
                    precision: d.precision(),
                    scale: d.scale() as i8,
                },
                P::String => ColumnKind::Utf8,
                P::Binary => ColumnKind::Binary,
                P::Timestamp => ColumnKind::Timestamp,
                P::Date => ColumnKind::Date,
                _ => return None,
            }),
            _ => None,
        }
    }
}

/// `numeric(p, s)` from a type modifier (-1: no precision given).
fn numeric_precision(type_modifier: i32) -> Option<(i32, i32)> {
    if type_modifier < 4 {
        return None;
    }
    let m = type_modifier - 4;
    let precision = (m >> 16) & 0xffff;
    // The scale is an 11-bit signed number since PostgreSQL 15 (negative scales exist).
    let mut scale = m & 0x7ff;
    if scale & 0x400 != 0 {
        scale -= 0x800;
    }
    Some((precision, scale))
}

/// How the Delta table is partitioned by the time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    Day,
    Month,
    None,
}

impl Partitioning {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "day" => Ok(Partitioning::Day),
            "month" => Ok(Partitioning::Month),
            "none" => Ok(Partitioning::None),
            other => Err(Error::invalid(format!(
                "unknown partitioning {other:?}: use day, month or none"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Partitioning::Day => "day",
            Partitioning::Month => "month",
            Partitioning::None => "none",
        }
    }

    /// The name of the derived partition column.
    pub fn column_name(self, time_column: &str) -> Option<String> {
        match self {
            Partitioning::Day => Some(format!("{time_column}_day")),
            Partitioning::Month => Some(format!("{time_column}_month")),
            Partitioning::None => None,
        }
    }

    /// The partition (days since the epoch) of a time in microseconds since the epoch.
    pub fn partition_of(self, micros: i64) -> Option<i32> {
        let day = micros.div_euclid(86_400_000_000);
        let day = i32::try_from(day).unwrap_or(if day < 0 { i32::MIN } else { i32::MAX });
        match self {
            Partitioning::Day => Some(day),
            Partitioning::Month => {
                let date = chrono::DateTime::from_timestamp(day as i64 * 86_400, 0)?.date_naive();
                let first = chrono::NaiveDate::from_ymd_opt(
                    chrono::Datelike::year(&date),
                    chrono::Datelike::month(&date),
                    1,
                )?;
                Some((first - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
            }
            Partitioning::None => None,
        }
    }
}

/// The partition column of a Delta table several PostgreSQL clusters share (fan-in): the
/// name of the cluster each row comes from. Each cluster's lakets reads, rewrites, counts
/// and compacts only the files of its own value.
pub const SOURCE_COLUMN: &str = "lakets_source";

/// Checks a source name: it is a partition value in paths and app ids, so it is kept to
/// lower-case letters, digits, `_` and `-`.
pub fn check_source_name(name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with(['_', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "source name {name:?}: use 1 to 63 lower-case letters, digits, '_' or '-', \
             starting with a letter or digit"
        )))
    }
}

/// One data column of a synced table.
#[derive(Debug, Clone, PartialEq)]
pub struct DataColumn {
    pub name: String,
    pub kind: ColumnKind,
}

/// The Delta shape of a synced table: the data columns in PostgreSQL order, then the
/// partition column, then (in a shared table) the source column.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    pub columns: Vec<DataColumn>,
    /// Index of the time column in `columns`.
    pub time_index: usize,
    pub partitioning: Partitioning,
    pub partition_column: Option<String>,
    /// This cluster's value of [`SOURCE_COLUMN`] in a table several clusters share.
    pub source: Option<String>,
}

impl TableShape {
    /// Builds the shape from PostgreSQL columns `(name, type, type modifier)`; refuses
    /// columns without a mapping, naming all of them.
    pub fn new(
        columns: &[(String, ColumnType, i32)],
        time_column: &str,
        partitioning: Partitioning,
    ) -> Result<Self> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for (name, ty, typmod) in columns {
            match ColumnKind::for_postgres(*ty, *typmod) {
                Ok(kind) => out.push(DataColumn {
                    name: name.clone(),
                    kind,
                }),
                Err(_) => bad.push(format!("{name} ({})", ty.name())),
            }
        }
        if !bad.is_empty() {
            return Err(Error::Unsupported(format!(
                "column(s) {} have no Delta Lake mapping; change their type or leave the \
                 table unsynced",
                bad.join(", ")
            )));
        }
        let time_index = out
            .iter()
            .position(|c| c.name == time_column)
            .ok_or_else(|| Error::invalid(format!("no time column {time_column:?}")))?;
        let partition_column = partitioning.column_name(time_column);
        if let Some(p) = &partition_column
            && out.iter().any(|c| &c.name == p)
        {
            return Err(Error::Conflict(format!(
                "the table already has a column {p:?}, the name of the Delta partition column; \
                 choose another partitioning (--partition-by)"
            )));
        }
        Ok(TableShape {
            columns: out,
            time_index,
            partitioning,
            partition_column,
            source: None,
        })
    }

    /// The shape of a table that several clusters share, this one as `source`.
    pub fn with_source(mut self, source: Option<&str>) -> Result<Self> {
        if let Some(name) = source {
            check_source_name(name)?;
            if self.columns.iter().any(|c| c.name == SOURCE_COLUMN) {
                return Err(Error::Conflict(format!(
                    "the table has a column {SOURCE_COLUMN:?}, the name of the Delta column \
                     that tells the clusters of a shared table apart; rename it to share \
                     the table"
                )));
            }
        }
        self.source = source.map(str::to_owned);
        Ok(self)
    }

    /// The Delta partition columns, outermost first: the source (each cluster's files
    /// under a prefix of their own), then the time partition.
    pub fn partition_columns(&self) -> Vec<String> {
        self.source
            .as_ref()
            .map(|_| SOURCE_COLUMN.to_owned())
            .into_iter()
            .chain(self.partition_column.clone())
            .collect()
    }

    /// Whether `name` is a column lakets derives (a partition or the source column).
    pub fn is_derived(&self, name: &str) -> bool {
        Some(name) == self.partition_column.as_deref()
            || (self.source.is_some() && name == SOURCE_COLUMN)
    }

    pub fn arrow_schema(&self) -> Arc<Schema> {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.kind.arrow_type(), true))
            .collect();
        if let Some(p) = &self.partition_column {
            fields.push(Field::new(p, ArrowType::Date32, true));
        }
        if self.source.is_some() {
            fields.push(Field::new(SOURCE_COLUMN, ArrowType::Utf8, true));
        }
        Arc::new(Schema::new(fields))
    }

    /// The partition of a row from its time cell (microseconds, or days for a date).
    pub fn partition_of_cell(&self, cell: &Cell) -> Option<i32> {
        let t = cell.as_int()?;
        let micros = if self.columns[self.time_index].kind == ColumnKind::Date {
            t.checked_mul(86_400_000_000)?
        } else {
            t
        };
        self.partitioning.partition_of(micros)
    }

    pub fn delta_fields(&self) -> Result<Vec<StructField>> {
        let mut fields = self
            .columns
            .iter()
            .map(|c| Ok(StructField::new(&c.name, c.kind.delta_type()?, true)))
            .collect::<Result<Vec<_>>>()?;
        if let Some(p) = &self.partition_column {
            fields.push(StructField::new(p, DeltaType::DATE, true));
        }
        if self.source.is_some() {
            fields.push(StructField::new(SOURCE_COLUMN, DeltaType::STRING, true));
        }
        Ok(fields)
    }
}

/// A value on its way to (or back from) a Parquet file, in Arrow's terms: rows are held
/// as cells, and replica identity keys are compared as cells on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cell {
    Null,
    /// An unchanged TOASTed value of an update: the old value stands.
    Unchanged,
    Bool(bool),
    /// Every integer width, timestamps (microseconds) and dates (days).
    Int(i64),
    /// A float's bits (so that cells hash and compare exactly).
    Float(u64),
    Decimal(i128),
    Str(String),
    Bytes(Vec<u8>),
}

impl Cell {
    /// The cell for a decoded WAL value in a column of `kind`.
    pub fn from_value(value: &Value, column: &DataColumn) -> Result<Cell> {
        let kind = column.kind;
        let mismatch = || {
            Error::Unsupported(format!(
                "column {:?}: a {value:?} cannot be stored in a Delta column of type {kind:?}",
                column.name
            ))
        };
        Ok(match value {
            Value::Null => Cell::Null,
            Value::UnchangedToast => Cell::Unchanged,
            Value::Bool(b) if kind == ColumnKind::Bool => Cell::Bool(*b),
            Value::Int2(v) => Cell::Int(*v as i64),
            Value::Int4(v) => Cell::Int(*v as i64),
            Value::Int8(v) => Cell::Int(*v),
            Value::Float4(v) if kind == ColumnKind::Float32 => Cell::Float((*v as f64).to_bits()),
            Value::Float8(v) if kind == ColumnKind::Float64 => Cell::Float(v.to_bits()),
            Value::Numeric(text) => match kind {
                ColumnKind::Decimal { precision, scale } => {
                    Cell::Decimal(parse_decimal(text, precision, scale).map_err(|why| {
                        Error::Unsupported(format!(
                            "column {:?}: numeric value {text} cannot be stored as \
                             decimal({precision}, {scale}): {why}",
                            column.name
                        ))
                    })?)
                }
                ColumnKind::Utf8 => Cell::Str(text.clone()),
                _ => return Err(mismatch()),
            },
            Value::Text(s) | Value::Json(s) => Cell::Str(s.clone()),
            Value::Uuid(bytes) => Cell::Str(format_uuid(bytes)),
            Value::Bytea(b) => Cell::Bytes(b.clone()),
            Value::Timestamptz(v) | Value::Timestamp(v) if kind == ColumnKind::Timestamp => {
                if !(DELTA_MIN_MICROS..=DELTA_MAX_MICROS).contains(v) {
                    return Err(out_of_delta_range(column, value));
                }
                Cell::Int(*v)
            }
            Value::Date(d) if kind == ColumnKind::Date => {
                if !(DELTA_MIN_DAYS..=DELTA_MAX_DAYS).contains(&i64::from(*d)) {
                    return Err(out_of_delta_range(column, value));
                }
                Cell::Int(*d as i64)
            }
            _ => return Err(mismatch()),
        })
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Cell::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// Approximate memory, for flush-by-bytes.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Cell>()
            + match self {
                Cell::Str(s) => s.len(),
                Cell::Bytes(b) => b.len(),
                _ => 0,
            }
    }
}

/// Delta's date and timestamp range: 0001-01-01 through 9999-12-31 (readers, and
/// deltalake's own statistics, fail outside it).
const DELTA_MIN_DAYS: i64 = -719_162;
const DELTA_MAX_DAYS: i64 = 2_932_896;
const DELTA_MIN_MICROS: i64 = DELTA_MIN_DAYS * 86_400_000_000;
const DELTA_MAX_MICROS: i64 = (DELTA_MAX_DAYS + 1) * 86_400_000_000 - 1;

fn out_of_delta_range(column: &DataColumn, value: &Value) -> Error {
    let shown = value.to_sql_text().unwrap_or_default();
    Error::Unsupported(format!(
        "column {:?}: {shown} lies outside the dates a Delta table holds (0001-01-01 through \
         9999-12-31, no infinity)",
        column.name
    ))
}

pub fn format_uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Exact decimal text to an unscaled integer at `scale`; refuses NaN, infinities, more
/// digits than `precision`, and digits below the scale (never rounds).
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> std::result::Result<i128, String> {
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("not a finite decimal number".into());
    }
    let scale_u = scale.max(0) as usize;
    let frac_trimmed = frac_part.trim_end_matches('0');
    if frac_trimmed.len() > scale_u {
        return Err(format!("more than {scale} digits after the point"));
    }
    let mut unscaled: i128 = 0;
    let int_trimmed = int_part.trim_start_matches('0');
    for b in int_trimmed.bytes().chain(
        frac_part
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(scale_u),
    ) {
        unscaled = unscaled
            .checked_mul(10)
            .and_then(|v| v.checked_add((b - b'0') as i128))
            .ok_or("too many digits")?;
    }
    let significant = int_trimmed.len() + scale_u;
    if significant > precision as usize && unscaled != 0 {
        return Err(format!("more than {precision} significant digits"));
    }
    Ok(if negative { -unscaled } else { unscaled })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_outside_what_delta_holds_are_refused_by_name() {
        let column = |kind| DataColumn {
            name: "at".into(),
            kind,
        };
        let date = column(ColumnKind::Date);
        let time = column(ColumnKind::Timestamp);
        assert_eq!(
            Cell::from_value(&Value::Date(-719_162), &date).unwrap(),
            Cell::Int(-719_162)
        );
        assert!(Cell::from_value(&Value::Date(2_932_896), &date).is_ok());
        let err = Cell::from_value(&Value::Date(i32::MIN), &date)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"at\"") && err.contains("-infinity") && err.contains("9999-12-31"),
            "{err}"
        );
        assert!(Cell::from_value(&Value::Date(2_932_897), &date).is_err());
        assert!(Cell::from_value(&Value::Timestamptz(i64::MAX), &time).is_err());
        assert!(Cell::from_value(&Value::Timestamp(DELTA_MAX_MICROS + 1), &time).is_err());
        assert!(Cell::from_value(&Value::Timestamp(DELTA_MAX_MICROS), &time).is_ok());
        assert!(Cell::from_value(&Value::Timestamptz(DELTA_MIN_MICROS), &time).is_ok());
    }

    #[test]
    fn decimals_are_exact_or_refused() {
        assert_eq!(parse_decimal("12.34", 10, 2), Ok(1234));
        assert_eq!(parse_decimal("-0.5", 10, 2), Ok(-50));
        assert_eq!(parse_decimal("7", 10, 2), Ok(700));
        assert_eq!(parse_decimal("12.3400", 10, 2), Ok(1234));
        assert!(parse_decimal("NaN", 10, 2).is_err());
        assert!(parse_decimal("Infinity", 10, 2).is_err());
        assert!(parse_decimal("1.234", 10, 2).is_err());
        assert!(parse_decimal("123456789012", 10, 2).is_err());
        assert_eq!(
            parse_decimal("99999999999999999999999999999999999999", 38, 0),
            Ok(99999999999999999999999999999999999999)
        );
    }

    #[test]
    fn numeric_typmods() {
        // numeric(10, 2)
        assert_eq!(numeric_precision((10 << 16 | 2) + 4), Some((10, 2)));
        assert_eq!(numeric_precision(-1), None);
        assert_eq!(
            ColumnKind::for_postgres(ColumnType::Numeric, -1).unwrap(),
            ColumnKind::Utf8
        );
        assert_eq!(
            ColumnKind::for_postgres(ColumnType::Numeric, (40 << 16) + 4).unwrap(),
            ColumnKind::Utf8
        );
    }

    #[test]
    fn partitions_by_day_and_month() {
        let t = 1_700_000_000_000_000; // 2023-11-14T22:13:20Z
        assert_eq!(Partitioning::Day.partition_of(t), Some(19675));
        // 2023-11-01
        assert_eq!(Partitioning::Month.partition_of(t), Some(19662));
        assert_eq!(Partitioning::Day.partition_of(-1), Some(-1));
        assert_eq!(Partitioning::None.partition_of(t), None);
    }

    #[test]
    fn uuids_print_canonically() {
        let mut b = [0u8; 16];
        b[0] = 0xab;
        b[15] = 0x01;
        assert_eq!(format_uuid(&b), "ab000000-0000-0000-0000-000000000001");
    }
}
