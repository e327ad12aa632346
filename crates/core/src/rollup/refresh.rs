//! Refreshing rollups (spec: `refresh_rollup_cascade`).
//!
//! One rollup's refresh is one SQL transaction (READ COMMITTED, so every statement reads
//! what is committed when it starts):
//! 1. lock the rollup's registry row (concurrent refreshes of one rollup queue up) and
//!    self-gate on `refresh_lag`;
//! 2. take the new watermark: the start of the current bucket, or for a rollup over a
//!    rollup, of the bucket holding its source's watermark, never going back;
//! 3. delete (and so consume) the rollup's invalidations; the ones below the old watermark
//!    name buckets to re-aggregate, coalesced per group key; the others lie in buckets
//!    materialized later anyway. The source is read after this delete, so it holds at
//!    least every change those invalidations stand for;
//! 4. re-aggregate the invalidated buckets and the buckets between the old and the new
//!    watermark (delete, insert from the source);
//! 5. log the re-aggregated ranges as invalidations of the rollups that read this one;
//! 6. store the watermark, commit.
//!
//! The cost is proportional to the buckets re-aggregated, not to the table.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;
use tracing::debug;

use super::sql::BucketType;
use super::{Rollup, bound_text, ceil, dag, find_rollup, floor, format_micros, list_rollups};
use crate::catalog::rollup_registry::{self, Reader, RefreshLock};
use crate::error::{Error, PgResultExt, Result};
use crate::ident::quote_ident;

/// What one refresh did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RefreshReport {
    pub rollup: String,
    /// Why nothing was done (refreshed less than refresh_lag ago).
    pub skipped: Option<String>,
    pub watermark_before: Option<String>,
    pub watermark_after: Option<String>,
    pub invalidations_consumed: u64,
    /// Coalesced (range, group) items re-aggregated below the old watermark.
    pub ranges_recomputed: u64,
    /// Rows inserted into the rollup's table.
    pub rows_written: u64,
    pub duration_ms: f64,
}

/// A range of whole buckets, `[lo, hi)` in microseconds; `i64::MIN`/`i64::MAX` stand for
/// -infinity/infinity.
type Range = (i64, i64);

/// A group key: one value per group-by column, as PostgreSQL text (None: NULL).
type GroupKey = Vec<Option<String>>;

/// Refreshes `name` alone, `name` and every rollup reading it (`cascade`), or every
/// rollup (`name` None), sources before readers, each self-gating on its refresh_lag
/// unless `force`.
pub async fn refresh(
    client: &mut Client,
    name: Option<&str>,
    cascade: bool,
    force: bool,
) -> Result<Vec<RefreshReport>> {
    crate::catalog::check_installed(&*client).await?;
    let all = list_rollups(&*client).await?;
    let names = match name {
        None => dag::topological(&all)?,
        Some(n) => {
            let rollup = find_rollup(&*client, n).await?;
            if cascade {
                dag::with_readers(&all, &rollup.name)?
            } else {
                vec![rollup.name]
            }
        }
    };
    let mut reports = Vec::with_capacity(names.len());
    for n in names {
        reports.push(refresh_one(client, &n, force).await?);
    }
    Ok(reports)
}

/// Merges overlapping and adjacent ranges.
fn coalesce(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Refreshes one rollup, named as the registry names it, in one transaction.
pub async fn refresh_one(client: &mut Client, name: &str, force: bool) -> Result<RefreshReport> {
    let started = Instant::now();
    let tx = client
        .transaction()
        .await
        .pg_context(|| format!("starting the refresh of {name}"))?;
    let RefreshLock {
        now_micros: now,
        gated,
    } = rollup_registry::lock_for_refresh(&tx, name)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "rollup",
            name: name.to_owned(),
        })?;
    let rollup = super::find_registered(&tx, name).await?;
    let mut report = RefreshReport {
        rollup: rollup.name.clone(),
        watermark_before: rollup.watermark.map(format_micros),
        ..Default::default()
    };
    if gated && !force {
        report.skipped = Some(format!(
            "refreshed less than its refresh_lag ({}) ago",
            rollup.refresh_lag
        ));
        report.watermark_after = report.watermark_before.clone();
        tx.commit()
            .await
            .pg_context(|| format!("ending the refresh of {name}"))?;
        return Ok(report);
    }

    let width = rollup.width_micros;
    let limit = match rollup.source_rollup() {
        None => Some(now),
        Some(source) => rollup_registry::watermark(&tx, source)
            .await?
            .map(|w| w.min(now)),
    };
    let old = rollup.watermark;
    let new = match (old, limit.map(|l| floor(l, width))) {
        (Some(o), Some(t)) => Some(o.max(t)),
        (o, t) => o.or(t),
    };

    // Consume every invalidation; keep what lies below the old watermark.
    let consumed = rollup_registry::consume_invalidations(&tx, &rollup.name).await?;
    report.invalidations_consumed = consumed.len() as u64;
    let below = old.unwrap_or(i64::MIN);
    let mut whole: Vec<Range> = Vec::new();
    let mut grouped: HashMap<GroupKey, Vec<Range>> = HashMap::new();
    for invalidation in &consumed {
        let lo = floor(invalidation.lo.unwrap_or(i64::MIN), width);
        let hi = ceil(invalidation.hi.unwrap_or(i64::MAX), width).min(below);
        if lo >= hi {
            continue;
        }
        match group_key(&rollup, invalidation.group_key.as_deref()) {
            Some(key) => grouped.entry(key).or_default().push((lo, hi)),
            None => whole.push((lo, hi)),
        }
    }
    let whole = coalesce(whole);
    // Grouped ranges inside a whole range are done by it; the rest, by range.
    let mut by_range: BTreeMap<Range, Vec<GroupKey>> = BTreeMap::new();
    for (key, ranges) in grouped {
        for r in coalesce(ranges) {
            if !whole.iter().any(|w| w.0 <= r.0 && r.1 <= w.1) {
                by_range.entry(r).or_default().push(key.clone());
            }
        }
    }
    let group_types = group_types(&tx, &rollup).await?;
    let mut recomputed: Vec<(Range, Option<GroupKey>)> = Vec::new();
    for r in &whole {
        report.rows_written += recompute(&tx, &rollup, *r, None, &group_types).await?;
        recomputed.push((*r, None));
    }
    for (r, keys) in &by_range {
        report.rows_written += recompute(&tx, &rollup, *r, Some(keys), &group_types).await?;
        recomputed.extend(keys.iter().map(|k| (*r, Some(k.clone()))));
    }
    report.ranges_recomputed = recomputed.len() as u64;

    // Advance over the buckets between the watermarks.
    if let Some(new) = new
        && old.is_none_or(|o| o < new)
    {
        report.rows_written += recompute(&tx, &rollup, (below, new), None, &group_types).await?;
    }

    log_for_readers(&tx, &rollup, &recomputed).await?;
    rollup_registry::store_watermark(&tx, &rollup.name, new.map(bound_text).as_deref()).await?;
    tx.commit()
        .await
        .pg_context(|| format!("committing the refresh of {name}"))?;
    report.watermark_after = new.map(format_micros);
    report.duration_ms = started.elapsed().as_secs_f64() * 1e3;
    metrics::counter!("lakets_rollup_refreshes_total", "rollup" => rollup.name.clone())
        .increment(1);
    metrics::counter!("lakets_rollup_invalidations_consumed_total", "rollup" => rollup.name.clone())
        .increment(report.invalidations_consumed);
    if let Some(new) = new {
        metrics::gauge!("lakets_rollup_watermark_seconds", "rollup" => rollup.name.clone())
            .set(new as f64 / 1e6);
    }
    debug!(rollup = %rollup.name, ?report, "refreshed rollup");
    Ok(report)
}

/// The group key of an invalidation, in the rollup's group-by order; None (all groups)
/// when absent or not covering every group column.
fn group_key(rollup: &Rollup, json: Option<&str>) -> Option<GroupKey> {
    if rollup.group_by.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json?).ok()?;
    rollup
        .group_by
        .iter()
        .map(|g| match map.get(g)? {
            serde_json::Value::Null => Some(None),
            serde_json::Value::String(s) => Some(Some(s.clone())),
            other => Some(Some(other.to_string())),
        })
        .collect()
}

/// The SQL types of the group columns (to compare keys given as text).
async fn group_types(tx: &tokio_postgres::Transaction<'_>, rollup: &Rollup) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[&rollup.table.quoted()],
        )
        .await
        .pg_context(|| format!("reading the columns of {}", rollup.table))?;
    rollup
        .group_by
        .iter()
        .map(|g| {
            rows.iter()
                .find(|r| r.get::<_, String>(0) == *g)
                .map(|r| r.get(1))
                .ok_or_else(|| {
                    Error::NotReady(format!(
                        "rollup table {} lost its column {g:?}",
                        rollup.table
                    ))
                })
        })
        .collect()
}

/// Replaces the rollup's rows of `range` (for `keys` only, when given) by the aggregates
/// recomputed from the source. Returns the rows inserted.
async fn recompute(
    tx: &tokio_postgres::Transaction<'_>,
    rollup: &Rollup,
    range: Range,
    keys: Option<&[GroupKey]>,
    group_types: &[String],
) -> Result<u64> {
    // Bounds are bound as typed values (not text cast in SQL), so that PostgreSQL prunes
    // the source's chunks when planning: refresh cost must not grow with the chunk count.
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut bounds: Vec<(&str, usize)> = Vec::new();
    for (t, op) in [(range.0, ">="), (range.1, "<")] {
        if t == i64::MIN || t == i64::MAX {
            continue; // infinite: no bound
        }
        let at = chrono::DateTime::from_timestamp_micros(t)
            .ok_or_else(|| Error::invalid(format!("bucket bound {t} µs is out of range")))?;
        match rollup.bucket_type {
            BucketType::Timestamptz => params.push(Box::new(at)),
            BucketType::Timestamp => params.push(Box::new(at.naive_utc())),
        }
        bounds.push((op, params.len()));
    }
    let range_filter = |column: &str| -> String {
        bounds
            .iter()
            .map(|(op, i)| format!(" AND {column} {op} ${i}::{}", rollup.bucket_type.as_str()))
            .collect()
    };
    let first_key = params.len() + 1;
    if let Some(keys) = keys {
        for i in 0..rollup.group_by.len() {
            let column: Vec<Option<String>> = keys.iter().map(|k| k[i].clone()).collect();
            params.push(Box::new(column));
        }
    }
    let key_filter = |alias: &str| -> String {
        if keys.is_none() {
            return String::new();
        }
        let columns: Vec<String> = (0..rollup.group_by.len())
            .map(|i| format!("k{i}"))
            .collect();
        let arrays: Vec<String> = (0..rollup.group_by.len())
            .map(|i| format!("${}::text[]", first_key + i))
            .collect();
        let matches: Vec<String> = rollup
            .group_by
            .iter()
            .enumerate()
            .map(|(i, g)| {
                format!(
                    "{alias}.{} IS NOT DISTINCT FROM k.k{i}::{}",
                    quote_ident(g),
                    group_types[i]
                )
            })
            .collect();
        format!(
            " AND EXISTS (SELECT 1 FROM unnest({}) AS k({}) WHERE {})",
            arrays.join(", "),
            columns.join(", "),
            matches.join(" AND ")
        )
    };
    let delete_keys = key_filter("m");
    let source_keys = key_filter("s");
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    tx.execute(
        &format!(
            "DELETE FROM {} m WHERE true{}{delete_keys}",
            rollup.table.quoted(),
            range_filter("m.bucket"),
        ),
        &refs,
    )
    .await
    .pg_context(|| format!("clearing buckets of rollup {}", rollup.name))?;
    let time = rollup.source_time();
    let select = rollup.select_from_source(
        &rollup.source_relation(),
        &format!("WHERE true{}{source_keys}", range_filter(&time)),
    );
    let columns: Vec<String> = rollup
        .column_list()
        .iter()
        .map(|c| quote_ident(c))
        .collect();
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO {} ({}) {select}",
                rollup.table.quoted(),
                columns.join(", ")
            ),
            &refs,
        )
        .await
        .pg_context(|| format!("re-aggregating buckets of rollup {}", rollup.name))?;
    Ok(inserted)
}

/// Logs the re-aggregated ranges as invalidations of the rollups reading this one, on
/// their bucket boundaries and group keys.
async fn log_for_readers(
    tx: &tokio_postgres::Transaction<'_>,
    rollup: &Rollup,
    recomputed: &[(Range, Option<GroupKey>)],
) -> Result<()> {
    if recomputed.is_empty() {
        return Ok(());
    }
    for Reader {
        name,
        width_micros: width,
        group_by: groups,
    } in rollup_registry::readers_with_buckets(tx, &rollup.name).await?
    {
        let mut per_key: HashMap<Option<String>, Vec<Range>> = HashMap::new();
        for ((lo, hi), key) in recomputed {
            let projected = match key {
                Some(key) if !groups.is_empty() => {
                    let mut map = serde_json::Map::new();
                    for g in &groups {
                        let i = rollup.group_by.iter().position(|x| x == g).ok_or_else(|| {
                            Error::NotReady(format!(
                                "rollup {name} groups by {g:?}, which its source {} lacks",
                                rollup.name
                            ))
                        })?;
                        map.insert(g.clone(), key[i].clone().into());
                    }
                    Some(serde_json::Value::Object(map).to_string())
                }
                _ => None,
            };
            per_key
                .entry(projected)
                .or_default()
                .push((floor(*lo, width), ceil(*hi, width)));
        }
        let (mut los, mut his, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        for (key, ranges) in per_key {
            for (lo, hi) in coalesce(ranges) {
                los.push(bound_text(lo));
                his.push(bound_text(hi));
                keys.push(key.clone());
            }
        }
        rollup_registry::invalidate_groups(tx, &name, &los, &his, &keys).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_math_and_coalescing() {
        assert_eq!(floor(-1, 60), -60);
        assert_eq!(floor(119, 60), 60);
        assert_eq!(ceil(61, 60), 120);
        assert_eq!(ceil(120, 60), 120);
        assert_eq!(ceil(i64::MAX, 60), i64::MAX);
        assert_eq!(
            coalesce(vec![(120, 180), (0, 60), (60, 120), (300, 360), (330, 340)]),
            [(0, 180), (300, 360)]
        );
        assert_eq!(bound_text(i64::MIN), "-infinity");
        assert_eq!(bound_text(0), "1970-01-01 00:00:00+00");
    }

    #[test]
    fn bucket_type_bounds() {
        use super::super::sql::BucketType;
        assert_eq!(
            BucketType::Timestamp.from_timestamptz("x"),
            "(x AT TIME ZONE 'UTC')"
        );
    }
}
