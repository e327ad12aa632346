//! `lakets._rollup_registry` and `lakets._rollup_invalidation_log`: the rollups (their
//! source, buckets, groups, aggregates and watermark) and the bucket ranges each must
//! re-aggregate. The rollup itself (its table, view and refresh) is
//! [`crate::rollup`]'s, which builds its [`crate::rollup::Rollup`] from these rows.

use tokio_postgres::GenericClient;

use crate::error::{PgResultExt, Result};
use crate::ident::TableName;

/// A row of `lakets._rollup_registry`, with the count of its pending invalidations.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRecord {
    pub name: String,
    /// The schema of the rollup's table and view.
    pub schema: String,
    /// The table (a ChronoTable, or a rollup's table) it reads.
    pub source: TableName,
    /// The rollup it reads, when it reads one.
    pub source_rollup: Option<String>,
    pub source_time_column: String,
    pub source_time_type: String,
    /// The ChronoTable at the bottom of the chain.
    pub root: TableName,
    pub root_time_column: String,
    pub root_time_type: String,
    pub bucket_type: String,
    /// Bucket width, microseconds.
    pub width_micros: i64,
    pub group_by: Vec<String>,
    pub aggregate: String,
    /// The output columns, as JSON text.
    pub columns: String,
    /// Microseconds.
    pub refresh_lag_micros: i64,
    /// Microseconds since the epoch (None: nothing materialized yet).
    pub watermark: Option<i64>,
    /// Microseconds since the epoch.
    pub last_refresh_at: Option<i64>,
    /// Rows of the invalidation log naming the rollup.
    pub pending_invalidations: i64,
}

const ROLLUP_COLUMNS: &str = "r.rollup_name, r.schema_name, r.source_schema, r.source_name, \
    r.source_rollup, r.source_time_column, r.source_time_type, r.root_schema, r.root_name, \
    r.root_time_column, r.root_time_type, r.bucket_type, \
    (extract(epoch FROM r.bucket_width) * 1000000)::bigint, r.group_by, r.aggregate, \
    r.columns::text, (extract(epoch FROM r.refresh_lag) * 1000000)::bigint, \
    (extract(epoch FROM r.watermark) * 1000000)::bigint, \
    (extract(epoch FROM r.last_refresh_at) * 1000000)::bigint, \
    (SELECT count(*) FROM lakets._rollup_invalidation_log l WHERE l.rollup_name = r.rollup_name)";

fn record_from_row(row: &tokio_postgres::Row) -> RollupRecord {
    RollupRecord {
        name: row.get(0),
        schema: row.get(1),
        source: TableName::new(row.get::<_, String>(2), row.get::<_, String>(3)),
        source_rollup: row.get(4),
        source_time_column: row.get(5),
        source_time_type: row.get(6),
        root: TableName::new(row.get::<_, String>(7), row.get::<_, String>(8)),
        root_time_column: row.get(9),
        root_time_type: row.get(10),
        bucket_type: row.get(11),
        width_micros: row.get(12),
        group_by: row.get(13),
        aggregate: row.get(14),
        columns: row.get(15),
        refresh_lag_micros: row.get(16),
        watermark: row.get(17),
        last_refresh_at: row.get(18),
        pending_invalidations: row.get(19),
    }
}

/// Every rollup, by name.
pub async fn list_rollups(client: &impl GenericClient) -> Result<Vec<RollupRecord>> {
    Ok(client
        .query(
            &format!("SELECT {ROLLUP_COLUMNS} FROM lakets._rollup_registry r ORDER BY 1"),
            &[],
        )
        .await
        .pg_context(|| "reading the rollup registry".into())?
        .iter()
        .map(record_from_row)
        .collect())
}

/// The rollup named exactly `name`.
pub async fn find_rollup(client: &impl GenericClient, name: &str) -> Result<Option<RollupRecord>> {
    Ok(client
        .query_opt(
            &format!(
                "SELECT {ROLLUP_COLUMNS} FROM lakets._rollup_registry r WHERE r.rollup_name = $1"
            ),
            &[&name],
        )
        .await
        .pg_context(|| format!("looking up rollup {name}"))?
        .as_ref()
        .map(record_from_row))
}

/// Whether a rollup named `name` is registered.
pub async fn rollup_exists(client: &impl GenericClient, name: &str) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM lakets._rollup_registry WHERE rollup_name = $1",
            &[&name],
        )
        .await
        .pg_context(|| "reading the rollup registry".into())?
        .is_some())
}

/// Registers a new rollup (its watermark, last refresh and pending invalidations are
/// ignored: it starts with none).
pub async fn register_rollup(client: &impl GenericClient, r: &RollupRecord) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._rollup_registry
                (rollup_name, schema_name, source_schema, source_name, source_rollup,
                 source_time_column, source_time_type, root_schema, root_name, root_time_column,
                 root_time_type, bucket_type, bucket_width, group_by, aggregate, columns, refresh_lag)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                     $13::bigint * interval '1 microsecond', $14, $15, $16::text::jsonb,
                     $17::bigint * interval '1 microsecond')",
            &[
                &r.name,
                &r.schema,
                &r.source.schema,
                &r.source.name,
                &r.source_rollup,
                &r.source_time_column,
                &r.source_time_type,
                &r.root.schema,
                &r.root.name,
                &r.root_time_column,
                &r.root_time_type,
                &r.bucket_type,
                &r.width_micros,
                &r.group_by,
                &r.aggregate,
                &r.columns,
                &r.refresh_lag_micros,
            ],
        )
        .await
        .pg_context(|| format!("registering rollup {}", r.name))?;
    Ok(())
}

/// Removes the registry row of `name` (its invalidations go with it, ON DELETE CASCADE).
pub async fn unregister_rollup(client: &impl GenericClient, name: &str) -> Result<()> {
    client
        .execute(
            "DELETE FROM lakets._rollup_registry WHERE rollup_name = $1",
            &[&name],
        )
        .await
        .pg_context(|| format!("unregistering rollup {name}"))?;
    Ok(())
}

/// The names of the rollups reading rollup `name`, sorted.
pub async fn readers_of(client: &impl GenericClient, name: &str) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT rollup_name FROM lakets._rollup_registry WHERE source_rollup = $1 ORDER BY 1",
            &[&name],
        )
        .await
        .pg_context(|| "reading the rollup registry".into())?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A rollup reading another, as the source's refresh invalidates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub name: String,
    /// Bucket width, microseconds.
    pub width_micros: i64,
    pub group_by: Vec<String>,
}

/// The rollups reading rollup `name`, with their buckets and groups.
pub async fn readers_with_buckets(client: &impl GenericClient, name: &str) -> Result<Vec<Reader>> {
    Ok(client
        .query(
            "SELECT rollup_name, (extract(epoch FROM bucket_width) * 1000000)::bigint, group_by
               FROM lakets._rollup_registry WHERE source_rollup = $1",
            &[&name],
        )
        .await
        .pg_context(|| format!("reading the rollups that read {name}"))?
        .iter()
        .map(|r| Reader {
            name: r.get(0),
            width_micros: r.get(1),
            group_by: r.get(2),
        })
        .collect())
}

/// What a refresh reads under the lock on its rollup's registry row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshLock {
    /// The transaction's `now()`, microseconds since the epoch.
    pub now_micros: i64,
    /// Refreshed less than `refresh_lag` ago.
    pub gated: bool,
}

/// Locks the registry row of `name` (FOR NO KEY UPDATE, to the end of the caller's
/// transaction: concurrent refreshes of one rollup queue up). None: no such rollup.
pub async fn lock_for_refresh(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<RefreshLock>> {
    Ok(client
        .query_opt(
            "SELECT (extract(epoch FROM now()) * 1000000)::bigint,
                    coalesce(last_refresh_at + refresh_lag > now(), false)
               FROM lakets._rollup_registry WHERE rollup_name = $1 FOR NO KEY UPDATE",
            &[&name],
        )
        .await
        .pg_context(|| format!("locking rollup {name} for its refresh"))?
        .map(|r| RefreshLock {
            now_micros: r.get(0),
            gated: r.get(1),
        }))
}

/// The watermark of rollup `name`, microseconds since the epoch (None: none, or no such
/// rollup).
pub async fn watermark(client: &impl GenericClient, name: &str) -> Result<Option<i64>> {
    Ok(client
        .query_opt(
            "SELECT (extract(epoch FROM watermark) * 1000000)::bigint
               FROM lakets._rollup_registry WHERE rollup_name = $1",
            &[&name],
        )
        .await
        .pg_context(|| format!("reading the watermark of {name}"))?
        .and_then(|r| r.get::<_, Option<i64>>(0)))
}

/// The SQL expression a real-time view reads rollup `name`'s current watermark with
/// (`-infinity` before the first refresh), as timestamptz.
pub fn watermark_expression(name: &str) -> String {
    format!(
        "coalesce((SELECT w.watermark FROM lakets._rollup_registry w WHERE w.rollup_name = {}), '-infinity')",
        crate::ident::quote_literal(name)
    )
}

/// Stores the watermark (timestamptz text; None: none) and the time of the refresh.
pub async fn store_watermark(
    client: &impl GenericClient,
    name: &str,
    watermark: Option<&str>,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._rollup_registry
                SET watermark = $2::text::timestamptz, last_refresh_at = now()
              WHERE rollup_name = $1",
            &[&name, &watermark],
        )
        .await
        .pg_context(|| format!("storing the watermark of {name}"))?;
    Ok(())
}

/// A consumed invalidation: microseconds since the epoch (None: infinite), and the group
/// key as JSON text (None: all groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    pub lo: Option<i64>,
    pub hi: Option<i64>,
    pub group_key: Option<String>,
}

/// Deletes every invalidation of rollup `name` and returns them.
pub async fn consume_invalidations(
    client: &impl GenericClient,
    name: &str,
) -> Result<Vec<Invalidation>> {
    Ok(client
        .query(
            "DELETE FROM lakets._rollup_invalidation_log WHERE rollup_name = $1
             RETURNING CASE WHEN isfinite(lo) THEN (extract(epoch FROM lo) * 1000000)::bigint END,
                       CASE WHEN isfinite(hi) THEN (extract(epoch FROM hi) * 1000000)::bigint END,
                       group_key::text",
            &[&name],
        )
        .await
        .pg_context(|| format!("consuming the invalidations of {name}"))?
        .iter()
        .map(|r| Invalidation {
            lo: r.get(0),
            hi: r.get(1),
            group_key: r.get(2),
        })
        .collect())
}

/// How many invalidations of rollup `name` are pending.
pub async fn count_invalidations(client: &impl GenericClient, name: &str) -> Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM lakets._rollup_invalidation_log WHERE rollup_name = $1",
            &[&name],
        )
        .await
        .pg_context(|| "counting invalidations".into())?
        .get(0))
}

/// Invalidates rollup `name` over the ranges `[los[i], his[i])` (timestamptz text), for
/// the group key `keys[i]` (JSON text; None: all groups).
pub async fn invalidate_groups(
    client: &impl GenericClient,
    name: &str,
    los: &[String],
    his: &[String],
    keys: &[Option<String>],
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._rollup_invalidation_log (rollup_name, lo, hi, group_key)
             SELECT $1, u.lo::timestamptz, u.hi::timestamptz, u.k::jsonb
               FROM unnest($2::text[], $3::text[], $4::text[]) AS u(lo, hi, k)",
            &[&name, &los, &his, &keys],
        )
        .await
        .pg_context(|| format!("invalidating buckets of {name}"))?;
    Ok(())
}

/// Invalidates rollup `name` over the hot chunks' ranges `[los[i], his[i])` (timestamptz
/// text), every group.
pub async fn invalidate_hot_ranges(
    client: &impl GenericClient,
    name: &str,
    los: &[String],
    his: &[String],
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._rollup_invalidation_log (rollup_name, lo, hi, group_key)
             SELECT $1, u.lo::timestamptz, u.hi::timestamptz, NULL
               FROM unnest($2::text[], $3::text[]) AS u(lo, hi)",
            &[&name, &los, &his],
        )
        .await
        .pg_context(|| format!("invalidating rollup {name} over the hot chunks"))?;
    Ok(())
}

/// The invalidation operator's writes: rollup `rollups[i]` over `[los[i], his[i])`
/// (timestamptz text) for group key `keys[i]` (JSON text; None: all groups). Rollups no
/// longer registered are skipped.
pub async fn invalidate_registered(
    client: &impl GenericClient,
    rollups: &[String],
    los: &[String],
    his: &[String],
    keys: &[Option<String>],
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._rollup_invalidation_log (rollup_name, lo, hi, group_key)
             SELECT u.r, u.lo::timestamptz, u.hi::timestamptz, u.k::jsonb
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(r, lo, hi, k)
              WHERE EXISTS (SELECT 1 FROM lakets._rollup_registry g WHERE g.rollup_name = u.r)",
            &[&rollups, &los, &his, &keys],
        )
        .await
        .pg_context(|| "writing rollup invalidations".into())?;
    Ok(())
}
