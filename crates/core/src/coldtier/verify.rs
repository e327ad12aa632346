//! `lakets verify TABLE`: checks that what lakets keeps agrees with the table.
//!
//! - Cold tier: for every chunk still in PostgreSQL (active or tiered), the rows of its
//!   range in the Delta table and in the chunk: count and an order-independent content
//!   hash (the sum of per-row hashes), so duplicates and changed values show too. Rows of
//!   dropped chunks live only in Delta and are not compared.
//! - Last Value Cache: the cache table against the latest row per key recomputed.
//! - Rollups built on the table: their materialized buckets (below the watermark) against
//!   the same aggregation recomputed from scratch from the table.
//!
//! A user can run it at any time. [`wait_for_streams`] first lets every streaming slot
//! store what was committed before verify began, so a row written just before is not a
//! difference; rows written while it reads may still show as differences (run it again, or
//! when writes pause).

use std::hash::{Hash, Hasher};

use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

use crate::catalog::registry::{self, ChunkStatus};
use crate::delta::batch::CellRow;
use crate::error::{PgResultExt, Result};
use crate::ident::{TableName, quote_ident};
use crate::wal::lsn::Lsn;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChunkCheck {
    pub chunk: String,
    pub postgres_rows: u64,
    pub delta_rows: u64,
    pub postgres_hash: String,
    pub delta_hash: String,
    pub ok: bool,
    /// When the chunk differs: rows PostgreSQL has and Delta lacks (up to five, rendered
    /// `column=value`), and the other way round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub only_in_postgres: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub only_in_delta: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub table: String,
    pub ok: bool,
    /// Per chunk, when the table is synced.
    pub chunks: Vec<ChunkCheck>,
    /// Rows of the Last Value Cache that differ from the recomputed latest rows (when the
    /// table has one).
    pub lvc_differences: Option<i64>,
    /// Every rollup built on the table.
    pub rollups: Vec<crate::rollup::check::RollupCheck>,
    /// What disagrees, first things first.
    pub differences: Vec<String>,
    /// How far each of lakets' slots had stored when the comparison began (when verify
    /// waited for them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamCatchUp>,
}

/// One of lakets' slots against the WAL position where verify began.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamCatchUp {
    pub slot: String,
    /// A service streams from it (an inactive slot is compared as stored).
    pub active: bool,
    /// The position every operator of the slot had made durable.
    pub confirmed_lsn: Option<String>,
    /// The WAL insert position when verify began.
    pub target_lsn: String,
    pub reached: bool,
}

/// Waits (at most `timeout`) until every active slot of lakets in this database has
/// confirmed the WAL position where this call began: the position each of its operators
/// (Delta, cache, rollup log, chunk tracker) made durable, so that what was committed
/// before verify started is in what verify compares. A message in the WAL moves idle
/// slots past the position; a slot with no service streaming is not waited for.
pub async fn wait_for_streams(
    client: &Client,
    timeout: std::time::Duration,
) -> Result<Vec<StreamCatchUp>> {
    crate::catalog::check_installed(client).await?;
    let target = Lsn::from(
        client
            .query_one("SELECT pg_current_wal_insert_lsn()", &[])
            .await
            .pg_context(|| "reading the WAL position".into())?
            .get::<_, PgLsn>(0),
    );
    // Starts after `target`: a slot that confirms it has confirmed `target`. Where the role
    // may not emit (a hardened install revokes it), heartbeats or writes move the slot.
    if let Err(e) = crate::wal::pipeline::emit_heartbeat(client).await {
        tracing::debug!(error = %e, "verify could not emit a WAL message; idle slots move with heartbeats");
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let streams: Vec<StreamCatchUp> = crate::catalog::progress::tracked_slots(client)
            .await?
            .into_iter()
            .map(|s| StreamCatchUp {
                reached: s.confirmed_flush_lsn.is_some_and(|c| c >= target),
                slot: s.slot,
                active: s.active,
                confirmed_lsn: s.confirmed_flush_lsn.map(|l| l.to_string()),
                target_lsn: target.to_string(),
            })
            .collect();
        if streams.iter().all(|s| s.reached || !s.active) || tokio::time::Instant::now() >= deadline
        {
            return Ok(streams);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An order-independent digest of a multiset of rows: (count, wrapping sum of row hashes).
#[derive(Default, Clone, Copy)]
struct Digest {
    rows: u64,
    sum: u64,
}

impl Digest {
    fn add(&mut self, row: &CellRow) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(row_hash(row));
    }
}

fn row_hash(row: &CellRow) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    row.hash(&mut h);
    h.finish()
}

/// Rows named per side when a chunk differs.
const EXAMPLE_ROWS: usize = 5;

/// Rows of the differing chunks that one side has and the other lacks (as multisets).
#[derive(Default)]
struct Examples {
    only_in_postgres: Vec<String>,
    only_in_delta: Vec<String>,
}

pub async fn verify(client: &Client, table: &str) -> Result<VerifyReport> {
    crate::catalog::check_installed(client).await?;
    let ct = registry::find_chronotable(client, table).await?;
    let mut report = VerifyReport {
        table: ct.table.to_string(),
        ..Default::default()
    };
    if let Some(sync) = crate::coldtier::sync::find_sync(client, &ct.table)
        .await?
        .filter(|s| s.state == crate::coldtier::sync::SyncState::Active)
    {
        let delta = crate::delta::table::open(&sync.location)
            .await?
            .ok_or_else(|| crate::Error::NotFound {
                kind: "Delta table at",
                name: crate::delta::table::display_location(&sync.location),
            })?;
        let shape = sync.shape(&delta)?;
        let chunks: Vec<_> = registry::list_chunks(client, &ct.table, false)
            .await?
            .into_iter()
            .filter(|c| c.status != ChunkStatus::Dropped)
            .collect();
        let ranges: Vec<(i64, i64)> = chunks
            .iter()
            .map(|c| (c.range_start_micros(), c.range_end_micros()))
            .collect();
        let is_date =
            shape.columns[shape.time_index].kind == crate::delta::schema::ColumnKind::Date;
        let bucket = |row: &CellRow| -> Option<usize> {
            let t = row.get(shape.time_index)?.as_int()?;
            let t = if is_date { t * 86_400_000_000 } else { t };
            let i = ranges.partition_point(|(start, _)| *start <= t);
            (i > 0 && t < ranges[i - 1].1).then(|| i - 1)
        };
        // Both sides stream: memory follows a batch, not the table.
        let mut cold = vec![Digest::default(); chunks.len()];
        crate::delta::read::for_each_row(&delta, &shape, |row| {
            if let Some(i) = bucket(&row) {
                cold[i].add(&row);
            }
        })
        .await?;
        let mut hot = vec![Digest::default(); chunks.len()];
        let mut outside = Vec::new();
        crate::coldtier::sync::for_each_postgres_row(
            client,
            &ct.table,
            &shape,
            |row| match bucket(&row) {
                Some(i) => hot[i].add(&row),
                None if outside.len() < 10 => outside.push(row),
                None => {}
            },
        )
        .await?;
        for row in outside {
            report.differences.push(format!(
                "a row of {} lies in no registered chunk: {row:?}",
                ct.table
            ));
        }
        let differing: Vec<bool> = (0..chunks.len())
            .map(|i| hot[i].rows != cold[i].rows || hot[i].sum != cold[i].sum)
            .collect();
        let mut examples: Vec<Examples> = (0..chunks.len()).map(|_| Examples::default()).collect();
        if differing.contains(&true) {
            // More passes, only when something differs: the net count per row hash
            // (memory: about 40 bytes a row of the differing chunks), then the rows behind
            // the hashes that do not cancel out.
            let in_differing = |row: &CellRow| bucket(row).filter(|&i| differing[i]);
            let mut net: std::collections::HashMap<u64, i64> = Default::default();
            crate::coldtier::sync::for_each_postgres_row(client, &ct.table, &shape, |row| {
                if in_differing(&row).is_some() {
                    *net.entry(row_hash(&row)).or_default() += 1;
                }
            })
            .await?;
            crate::delta::read::for_each_row(&delta, &shape, |row| {
                if in_differing(&row).is_some() {
                    *net.entry(row_hash(&row)).or_default() -= 1;
                }
            })
            .await?;
            net.retain(|_, n| *n != 0);
            let mut delta_net = net.clone();
            crate::coldtier::sync::for_each_postgres_row(client, &ct.table, &shape, |row| {
                if let Some(i) = in_differing(&row)
                    && let Some(n) = net.get_mut(&row_hash(&row))
                    && *n > 0
                    && examples[i].only_in_postgres.len() < EXAMPLE_ROWS
                {
                    *n -= 1;
                    examples[i].only_in_postgres.push(render_row(&shape, &row));
                }
            })
            .await?;
            crate::delta::read::for_each_row(&delta, &shape, |row| {
                if let Some(i) = in_differing(&row)
                    && let Some(n) = delta_net.get_mut(&row_hash(&row))
                    && *n < 0
                    && examples[i].only_in_delta.len() < EXAMPLE_ROWS
                {
                    *n += 1;
                    examples[i].only_in_delta.push(render_row(&shape, &row));
                }
            })
            .await?;
        }
        for (i, c) in chunks.iter().enumerate() {
            let ok = !differing[i];
            if !ok {
                let e = &examples[i];
                let mut line = format!(
                    "chunk {} ({} .. {}): PostgreSQL has {} rows (hash {:016x}), Delta {} (hash {:016x})",
                    c.chunk_name,
                    c.range_start,
                    c.range_end,
                    hot[i].rows,
                    hot[i].sum,
                    cold[i].rows,
                    cold[i].sum
                );
                if !e.only_in_postgres.is_empty() {
                    line += &format!("; only in PostgreSQL: {}", e.only_in_postgres.join(", "));
                }
                if !e.only_in_delta.is_empty() {
                    line += &format!("; only in Delta: {}", e.only_in_delta.join(", "));
                }
                report.differences.push(line);
            }
            report.chunks.push(ChunkCheck {
                chunk: c.chunk_name.clone(),
                postgres_rows: hot[i].rows,
                delta_rows: cold[i].rows,
                postgres_hash: format!("{:016x}", hot[i].sum),
                delta_hash: format!("{:016x}", cold[i].sum),
                ok,
                only_in_postgres: std::mem::take(&mut examples[i].only_in_postgres),
                only_in_delta: std::mem::take(&mut examples[i].only_in_delta),
            });
        }
    }
    if let Some(lvc) = crate::lvc::list_lvc(client)
        .await?
        .into_iter()
        .find(|l| l.table == ct.table)
    {
        let n = lvc_differences(client, &ct.table, &lvc).await?;
        if n > 0 {
            report.differences.push(format!(
                "the Last Value Cache {} differs from the latest row per key in {n} row(s)",
                lvc.cache_table
            ));
        }
        report.lvc_differences = Some(n);
    }
    for rollup in crate::rollup::list_rollups(client).await? {
        if rollup.root != ct.table {
            continue;
        }
        let check = crate::rollup::check::check_rollup(client, &rollup).await?;
        if !check.ok {
            report.differences.push(format!(
                "rollup {} differs from its recomputation in {} (bucket, group) row(s), first: {}{}",
                check.rollup,
                check.differing_rows,
                check.examples.join(", "),
                if check.pending_invalidations > 0 {
                    format!(
                        " ({} invalidations pending: run `lakets rollup refresh` and verify again)",
                        check.pending_invalidations
                    )
                } else {
                    String::new()
                }
            ));
        }
        report.rollups.push(check);
    }
    report.ok = report.differences.is_empty();
    Ok(report)
}

/// A row as `(column=value, ...)`, values as a person reads them.
fn render_row(shape: &crate::delta::schema::TableShape, row: &CellRow) -> String {
    use crate::delta::schema::{Cell, ColumnKind};
    let cells: Vec<String> = shape
        .columns
        .iter()
        .zip(row)
        .map(|(column, cell)| {
            let value = match (cell, column.kind) {
                (Cell::Null, _) => "NULL".to_owned(),
                (Cell::Int(us), ColumnKind::Timestamp) => {
                    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(*us)
                        .map_or_else(|| us.to_string(), |t| t.to_rfc3339())
                }
                (Cell::Int(days), ColumnKind::Date) => chrono::NaiveDate::default()
                    .checked_add_signed(chrono::TimeDelta::days(*days))
                    .map_or_else(|| days.to_string(), |d| d.to_string()),
                (Cell::Int(n), _) => n.to_string(),
                (Cell::Float(bits), _) => f64::from_bits(*bits).to_string(),
                (Cell::Decimal(v), ColumnKind::Decimal { scale, .. }) if scale > 0 => {
                    let unit = 10i128.pow(scale as u32);
                    let sign = if *v < 0 { "-" } else { "" };
                    format!(
                        "{sign}{}.{:0width$}",
                        (v / unit).abs(),
                        (v % unit).abs(),
                        width = scale as usize
                    )
                }
                (Cell::Decimal(v), _) => v.to_string(),
                (Cell::Bool(b), _) => b.to_string(),
                (Cell::Bytes(bytes), _) => {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    format!("\\x{hex}")
                }
                (Cell::Str(text), _) => format!("{text:?}"),
                (other, _) => format!("{other:?}"),
            };
            format!("{}={value}", column.name)
        })
        .collect();
    format!("({})", cells.join(", "))
}

async fn lvc_differences(
    client: &Client,
    table: &TableName,
    lvc: &crate::lvc::LvcConfig,
) -> Result<i64> {
    let cols: Vec<String> = lvc.cache_columns().iter().map(|c| quote_ident(c)).collect();
    let cols = cols.join(", ");
    let keys: Vec<String> = lvc.key_columns.iter().map(|c| quote_ident(c)).collect();
    let keys = keys.join(", ");
    let time = quote_ident(&lvc.time_column);
    // Rows of one key may share the latest time; the cache holds one of them (the last
    // committed), and any of them is right.
    let latest = format!(
        "SELECT {cols} FROM {table} WHERE ({keys}, {time}) IN
           (SELECT {keys}, max({time}) FROM {table} GROUP BY {keys})",
        table = table.quoted()
    );
    let cache = format!("SELECT {cols} FROM {}", lvc.cache_table.quoted());
    Ok(client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM ({cache} EXCEPT ALL ({latest})) wrong)
                      + (SELECT count(*) FROM (SELECT DISTINCT {keys} FROM ({latest}) l
                                               EXCEPT SELECT {keys} FROM ({cache}) c) missing)"
            ),
            &[],
        )
        .await
        .pg_context(|| format!("comparing the Last Value Cache of {table}"))?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::schema::{Cell, ColumnKind, DataColumn, Partitioning, TableShape};

    #[test]
    fn a_differing_row_reads_as_its_values() {
        let column = |name: &str, kind| DataColumn {
            name: name.into(),
            kind,
        };
        let shape = TableShape {
            columns: vec![
                column("time", ColumnKind::Timestamp),
                column("symbol", ColumnKind::Utf8),
                column(
                    "price",
                    ColumnKind::Decimal {
                        precision: 12,
                        scale: 4,
                    },
                ),
                column("ratio", ColumnKind::Float64),
                column("note", ColumnKind::Utf8),
                column("day", ColumnKind::Date),
            ],
            time_index: 0,
            partitioning: Partitioning::Day,
            partition_column: None,
            source: None,
        };
        let row = vec![
            Cell::Int(1_700_000_000_000_001),
            Cell::Str("S\"1".into()),
            Cell::Decimal(-5_0025),
            Cell::Float(0.25f64.to_bits()),
            Cell::Null,
            Cell::Int(19_000),
        ];
        assert_eq!(
            render_row(&shape, &row),
            "(time=2023-11-14T22:13:20.000001+00:00, symbol=\"S\\\"1\", price=-5.0025, \
             ratio=0.25, note=NULL, day=2022-01-08)"
        );
    }
}
