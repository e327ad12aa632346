//! The SQL a rollup is made of: its bucket expression, its aggregates (over a ChronoTable
//! or over another rollup), and time bounds in the bucket's type.
//!
//! Buckets are aligned on the Unix epoch (`date_bin(width, t, 1970-01-01)`), so a bucket
//! of a coarser rollup is always a whole number of buckets of the finer one it reads.

use super::spec::{Func, OutputColumn};
use super::{Rollup, Source};
use crate::ident::quote_ident;

/// The type of a rollup's `bucket` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketType {
    Timestamptz,
    /// For `timestamp` and `date` time columns (read as UTC).
    Timestamp,
}

impl BucketType {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketType::Timestamptz => "timestamptz",
            BucketType::Timestamp => "timestamp",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "timestamp" {
            BucketType::Timestamp
        } else {
            BucketType::Timestamptz
        }
    }

    /// A timestamptz expression (bounds and watermarks are stored as timestamptz) in this
    /// type.
    pub fn from_timestamptz(self, expr: &str) -> String {
        match self {
            BucketType::Timestamptz => expr.to_owned(),
            BucketType::Timestamp => format!("({expr} AT TIME ZONE 'UTC')"),
        }
    }
}

/// `date_bin` over the source's time column (a `date` is binned as a timestamp).
pub fn bucket_expr(width_micros: i64, time: &str, source_time_type: &str) -> String {
    let (value, origin) = match source_time_type {
        "timestamptz" => (time.to_owned(), "TIMESTAMPTZ '1970-01-01 00:00:00+00'"),
        "date" => (
            format!("{time}::timestamp"),
            "TIMESTAMP '1970-01-01 00:00:00'",
        ),
        _ => (time.to_owned(), "TIMESTAMP '1970-01-01 00:00:00'"),
    };
    format!("pg_catalog.date_bin(INTERVAL '{width_micros} microseconds', {value}, {origin})")
}

/// The aggregate computing `column` from rows of the rollup's direct source. Functions are
/// named with their schema: the SQL may run in a session whose search_path another role
/// controls (lakets' own sessions pin theirs), and the real-time views keep what they bind.
pub fn aggregate_expr(column: &OutputColumn, source_is_table: bool, time: &str) -> String {
    let input = |i: usize| quote_ident(&column.inputs[i]);
    let avg = |sum: String, count: String| {
        let cast = if column.float { "float8" } else { "numeric" };
        format!("({sum})::{cast} / nullif({count}, 0)")
    };
    if source_is_table {
        return match column.func {
            Func::First => format!(
                "(pg_catalog.array_agg({c} ORDER BY {time}, {c}) FILTER (WHERE {c} IS NOT NULL))[1]",
                c = input(0)
            ),
            Func::Last => format!(
                "(pg_catalog.array_agg({c} ORDER BY {time} DESC, {c} DESC) FILTER (WHERE {c} IS NOT NULL))[1]",
                c = input(0)
            ),
            Func::Min => format!("pg_catalog.min({})", input(0)),
            Func::Max => format!("pg_catalog.max({})", input(0)),
            Func::Sum | Func::AvgSum => format!("pg_catalog.sum({})", input(0)),
            Func::Count | Func::AvgCount => format!("pg_catalog.count({})", input(0)),
            Func::CountAll => "pg_catalog.count(*)".into(),
            Func::Avg => avg(
                format!("pg_catalog.sum({})", input(0)),
                format!("pg_catalog.count({})", input(0)),
            ),
        };
    }
    // Over a rollup: buckets are unique per group, so first/last need no tie-break.
    match column.func {
        Func::First => format!(
            "(pg_catalog.array_agg({c} ORDER BY {time}) FILTER (WHERE {c} IS NOT NULL))[1]",
            c = input(0)
        ),
        Func::Last => format!(
            "(pg_catalog.array_agg({c} ORDER BY {time} DESC) FILTER (WHERE {c} IS NOT NULL))[1]",
            c = input(0)
        ),
        Func::Min => format!("pg_catalog.min({})", input(0)),
        Func::Max => format!("pg_catalog.max({})", input(0)),
        Func::Sum | Func::AvgSum => format!("pg_catalog.sum({})", input(0)),
        Func::Count | Func::AvgCount | Func::CountAll => {
            format!("pg_catalog.sum({})::bigint", input(0))
        }
        Func::Avg => avg(
            format!("pg_catalog.sum({})", input(0)),
            format!("pg_catalog.sum({})", input(1)),
        ),
    }
}

/// The same aggregate computed from the ChronoTable's rows (for checks from scratch).
pub fn aggregate_from_base(column: &OutputColumn, time: &str) -> String {
    let mut raw = column.clone();
    raw.inputs = column.base.iter().cloned().collect();
    aggregate_expr(&raw, true, time)
}

impl Rollup {
    /// `SELECT bucket, groups, aggregates FROM source` without WHERE (`{where}` is
    /// spliced before GROUP BY).
    pub fn select_from_source(&self, relation: &str, filter: &str) -> String {
        let (time, time_type, is_table) = match &self.source {
            Source::Table {
                time_column,
                time_type,
                ..
            } => (quote_ident(time_column), time_type.as_str(), true),
            Source::Rollup { .. } => ("bucket".to_owned(), self.bucket_type.as_str(), false),
        };
        let aggregates = self.columns.iter().map(|c| {
            format!(
                "{} AS {}",
                aggregate_expr(c, is_table, &time),
                quote_ident(&c.name)
            )
        });
        self.select(relation, &time, time_type, aggregates, filter)
    }

    /// The same, computed from the root ChronoTable directly.
    pub fn select_from_root(&self, filter: &str) -> String {
        let time = quote_ident(&self.root_time_column);
        let aggregates = self.columns.iter().map(|c| {
            format!(
                "{} AS {}",
                aggregate_from_base(c, &time),
                quote_ident(&c.name)
            )
        });
        self.select(
            &self.root.quoted(),
            &time,
            &self.root_time_type,
            aggregates,
            filter,
        )
    }

    fn select(
        &self,
        relation: &str,
        time: &str,
        time_type: &str,
        aggregates: impl Iterator<Item = String>,
        filter: &str,
    ) -> String {
        let groups: Vec<String> = self.group_by.iter().map(|g| quote_ident(g)).collect();
        let mut list = vec![format!(
            "{} AS bucket",
            bucket_expr(self.width_micros, time, time_type)
        )];
        list.extend(groups.iter().cloned());
        list.extend(aggregates);
        let group_by: Vec<String> = (1..=groups.len() + 1).map(|i| i.to_string()).collect();
        format!(
            "SELECT {} FROM {relation} s {filter} GROUP BY {}",
            list.join(", "),
            group_by.join(", ")
        )
    }

    /// The source's time column, as the filters of [`Rollup::select_from_source`] see it.
    pub fn source_time(&self) -> String {
        match &self.source {
            Source::Table { time_column, .. } => format!("s.{}", quote_ident(time_column)),
            Source::Rollup { .. } => "s.bucket".into(),
        }
    }

    /// The relation the aggregates read: the ChronoTable or the source rollup's table.
    pub fn source_relation(&self) -> String {
        match &self.source {
            Source::Table { table, .. } => table.quoted(),
            Source::Rollup { table, .. } => table.quoted(),
        }
    }

    /// All materialized columns, in order.
    pub fn column_list(&self) -> Vec<String> {
        std::iter::once("bucket".to_owned())
            .chain(self.group_by.iter().cloned())
            .chain(self.columns.iter().map(|c| c.name.clone()))
            .collect()
    }
}
