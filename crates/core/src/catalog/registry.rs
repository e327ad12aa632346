//! Rows of `lakets._chronotable_registry` and `lakets._chunk_metadata`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, PgResultExt, Result};
use crate::ident::{QualifiedName, TableName};
use crate::interval::Interval;

/// The SQL types a ChronoTable's time column may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeType {
    Timestamptz,
    Timestamp,
    Date,
}

impl TimeType {
    pub fn from_type_oid(oid: u32) -> Option<Self> {
        match oid {
            1184 => Some(TimeType::Timestamptz),
            1114 => Some(TimeType::Timestamp),
            1082 => Some(TimeType::Date),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TimeType::Timestamptz => "timestamptz",
            TimeType::Timestamp => "timestamp",
            TimeType::Date => "date",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "timestamptz" => Ok(TimeType::Timestamptz),
            "timestamp" => Ok(TimeType::Timestamp),
            "date" => Ok(TimeType::Date),
            other => Err(Error::NotReady(format!(
                "the registry holds an unknown time type {other:?}"
            ))),
        }
    }
}

/// A registered ChronoTable.
#[derive(Debug, Clone, Serialize)]
pub struct ChronoTable {
    pub table: TableName,
    pub time_column: String,
    pub time_type: TimeType,
    pub chunk_interval: Interval,
    /// Future chunks kept pre-created ahead of the current one.
    pub premake: i32,
    pub tiering_enabled: bool,
    pub sync_enabled: bool,
}

const CHRONOTABLE_COLUMNS: &str = "schema_name, table_name, time_column, time_type, \
     (extract(epoch FROM chunk_interval) * 1000000)::bigint AS chunk_interval_us, \
     premake, tiering_enabled, sync_enabled";

fn chronotable_from_row(row: &Row) -> Result<ChronoTable> {
    Ok(ChronoTable {
        table: TableName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
        time_column: row.get(2),
        time_type: TimeType::parse(row.get(3))?,
        chunk_interval: Interval::from_micros(row.get(4)),
        premake: row.get(5),
        tiering_enabled: row.get(6),
        sync_enabled: row.get(7),
    })
}

pub async fn get_chronotable(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<Option<ChronoTable>> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {CHRONOTABLE_COLUMNS} FROM lakets._chronotable_registry \
                 WHERE schema_name = $1 AND table_name = $2"
            ),
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| format!("reading the registry entry of {table}"))?;
    row.as_ref().map(chronotable_from_row).transpose()
}

/// Looks a ChronoTable up by the name a user typed: `schema.table`, or `table` resolved
/// along the search path like PostgreSQL would.
pub async fn find_chronotable(client: &impl GenericClient, input: &str) -> Result<ChronoTable> {
    let name = QualifiedName::parse(input)?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {CHRONOTABLE_COLUMNS} FROM lakets._chronotable_registry r
                  WHERE r.table_name = $2 AND r.schema_name = $1"
            ),
            &[&name.schema_or_default(), &name.name],
        )
        .await
        .pg_context(|| format!("looking up ChronoTable {input}"))?;
    match row {
        Some(row) => chronotable_from_row(&row),
        None => Err(Error::NotFound {
            kind: "ChronoTable",
            name: match &name.schema {
                Some(schema) => format!("{schema}.{}", name.name),
                None => name.name.clone(),
            },
        }),
    }
}

pub async fn list_chronotables(client: &impl GenericClient) -> Result<Vec<ChronoTable>> {
    let rows = client
        .query(
            &format!(
                "SELECT {CHRONOTABLE_COLUMNS} FROM lakets._chronotable_registry \
                 ORDER BY schema_name, table_name"
            ),
            &[],
        )
        .await
        .pg_context(|| "listing ChronoTables".into())?;
    rows.iter().map(chronotable_from_row).collect()
}

pub async fn insert_chronotable(client: &impl GenericClient, ct: &ChronoTable) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._chronotable_registry
                 (schema_name, table_name, time_column, time_type, chunk_interval, premake,
                  tiering_enabled, sync_enabled)
             VALUES ($1, $2, $3, $4, ($5::text)::interval, $6, $7, $8)",
            &[
                &ct.table.schema,
                &ct.table.name,
                &ct.time_column,
                &ct.time_type.as_str(),
                &ct.chunk_interval.to_postgres(),
                &ct.premake,
                &ct.tiering_enabled,
                &ct.sync_enabled,
            ],
        )
        .await
        .pg_context(|| format!("registering ChronoTable {}", ct.table))?;
    Ok(())
}

/// Changes the interval of the chunks `table` creates from now on.
pub async fn set_chunk_interval(
    client: &impl GenericClient,
    table: &TableName,
    interval: Interval,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._chronotable_registry SET chunk_interval = ($3::text)::interval
              WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name, &interval.to_postgres()],
        )
        .await
        .pg_context(|| format!("changing the chunk interval of {table}"))?;
    Ok(())
}

/// Records whether `table` is mirrored into Delta Lake.
pub async fn set_sync_enabled(
    client: &impl GenericClient,
    table: &TableName,
    enabled: bool,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._chronotable_registry SET sync_enabled = $3
              WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name, &enabled],
        )
        .await
        .pg_context(|| {
            if enabled {
                format!("marking {table} synced")
            } else {
                format!("marking {table} unsynced")
            }
        })?;
    Ok(())
}

/// Records whether `table`'s chunks are tiered into the cold tier.
pub async fn set_tiering_enabled(
    client: &impl GenericClient,
    table: &TableName,
    enabled: bool,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._chronotable_registry SET tiering_enabled = $3
              WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name, &enabled],
        )
        .await
        .pg_context(|| format!("marking {table} tiered"))?;
    Ok(())
}

/// Removes `table`'s registry row; its `_chunk_metadata` and `_lvc_registry` rows go with
/// it (ON DELETE CASCADE).
pub async fn unregister_chronotable(client: &impl GenericClient, table: &TableName) -> Result<()> {
    client
        .execute(
            "DELETE FROM lakets._chronotable_registry WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| format!("unregistering {table}"))?;
    Ok(())
}

/// One ChronoTable as `lakets status` summarizes it.
#[derive(Debug, Clone)]
pub struct TableSummary {
    /// `schema.table`.
    pub table: String,
    /// The chunk interval as PostgreSQL prints it.
    pub chunk_interval: String,
    /// A JSON object: chunk count by status.
    pub chunks: serde_json::Value,
    /// Chunks (not dropped) whose last tiering or drop was deferred.
    pub deferred: i64,
    /// The latest deferral: `chunk: reason`.
    pub last_deferral: Option<String>,
    pub synced: bool,
    /// Whether the table has a Last Value Cache.
    pub lvc: bool,
}

/// Every ChronoTable with its chunk counts, deferrals, sync and cache, by name.
pub async fn table_summaries(client: &impl GenericClient) -> Result<Vec<TableSummary>> {
    Ok(client
        .query(
            "SELECT r.schema_name || '.' || r.table_name, r.chunk_interval::text,
                    coalesce((SELECT jsonb_object_agg(status, n) FROM
                        (SELECT status, count(*) n FROM lakets._chunk_metadata m
                          WHERE m.schema_name = r.schema_name AND m.table_name = r.table_name
                          GROUP BY status) s), '{}'::jsonb),
                    (SELECT count(*) FROM lakets._chunk_metadata m
                      WHERE m.schema_name = r.schema_name AND m.table_name = r.table_name
                        AND m.deferred_reason IS NOT NULL AND m.status <> 'dropped'),
                    (SELECT m.chunk_name || ': ' || m.deferred_reason FROM lakets._chunk_metadata m
                      WHERE m.schema_name = r.schema_name AND m.table_name = r.table_name
                        AND m.deferred_reason IS NOT NULL AND m.status <> 'dropped'
                      ORDER BY m.deferred_at DESC NULLS LAST LIMIT 1),
                    r.sync_enabled,
                    EXISTS (SELECT 1 FROM lakets._lvc_registry l
                             WHERE l.schema_name = r.schema_name AND l.table_name = r.table_name)
               FROM lakets._chronotable_registry r ORDER BY 1",
            &[],
        )
        .await
        .pg_context(|| "reading the ChronoTables' chunks".into())?
        .iter()
        .map(|r| TableSummary {
            table: r.get(0),
            chunk_interval: r.get(1),
            chunks: r.get(2),
            deferred: r.get(3),
            last_deferral: r.get(4),
            synced: r.get(5),
            lvc: r.get(6),
        })
        .collect())
}

/// Lifecycle status of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkStatus {
    Active,
    Tiered,
    Dropped,
}

impl ChunkStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkStatus::Active => "active",
            ChunkStatus::Tiered => "tiered",
            ChunkStatus::Dropped => "dropped",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "active" => Ok(ChunkStatus::Active),
            "tiered" => Ok(ChunkStatus::Tiered),
            "dropped" => Ok(ChunkStatus::Dropped),
            other => Err(Error::NotReady(format!(
                "the chunk registry holds an unknown status {other:?}"
            ))),
        }
    }
}

/// A row of `lakets._chunk_metadata`; serialized with the table's column names.
#[derive(Debug, Clone, Serialize)]
pub struct Chunk {
    pub schema_name: String,
    pub table_name: String,
    pub chunk_name: String,
    pub range_start: DateTime<Utc>,
    pub range_end: DateTime<Utc>,
    pub status: ChunkStatus,
    pub row_count: Option<i64>,
    pub size_bytes: Option<i64>,
    pub last_write_lsn: Option<String>,
    pub created_at: DateTime<Utc>,
    pub tiered_at: Option<DateTime<Utc>>,
    pub dropped_at: Option<DateTime<Utc>>,
    /// Why the gate last deferred the chunk, until it moves.
    pub deferred_reason: Option<String>,
}

impl Chunk {
    pub fn chunk_table(&self) -> TableName {
        TableName::new(self.schema_name.clone(), self.chunk_name.clone())
    }

    pub fn range_start_micros(&self) -> i64 {
        self.range_start.timestamp_micros()
    }

    pub fn range_end_micros(&self) -> i64 {
        self.range_end.timestamp_micros()
    }
}

const CHUNK_COLUMNS: &str = "schema_name, table_name, chunk_name, range_start, range_end, status, \
     row_count, size_bytes, last_write_lsn::text, created_at, tiered_at, dropped_at, \
     deferred_reason";

fn chunk_from_row(row: &Row) -> Result<Chunk> {
    Ok(Chunk {
        schema_name: row.get(0),
        table_name: row.get(1),
        chunk_name: row.get(2),
        range_start: row.get(3),
        range_end: row.get(4),
        status: ChunkStatus::parse(row.get(5))?,
        row_count: row.get(6),
        size_bytes: row.get(7),
        last_write_lsn: row.get(8),
        created_at: row.get(9),
        tiered_at: row.get(10),
        dropped_at: row.get(11),
        deferred_reason: row.get(12),
    })
}

/// The chunks of a table in time order; dropped ones only when asked.
pub async fn list_chunks(
    client: &impl GenericClient,
    table: &TableName,
    include_dropped: bool,
) -> Result<Vec<Chunk>> {
    let rows = client
        .query(
            &format!(
                "SELECT {CHUNK_COLUMNS} FROM lakets._chunk_metadata
                  WHERE schema_name = $1 AND table_name = $2 AND ($3 OR status <> 'dropped')
                  ORDER BY range_start"
            ),
            &[&table.schema, &table.name, &include_dropped],
        )
        .await
        .pg_context(|| format!("listing the chunks of {table}"))?;
    rows.iter().map(chunk_from_row).collect()
}

/// The chunks of every ChronoTable (or of `table`), by table and time; dropped ones only
/// when asked.
pub async fn list_all_chunks(
    client: &impl GenericClient,
    table: Option<&TableName>,
    include_dropped: bool,
) -> Result<Vec<Chunk>> {
    let rows = client
        .query(
            &format!(
                "SELECT {CHUNK_COLUMNS} FROM lakets._chunk_metadata
                  WHERE ($1::text IS NULL OR (schema_name = $1 AND table_name = $2))
                    AND ($3 OR status <> 'dropped')
                  ORDER BY schema_name, table_name, range_start"
            ),
            &[
                &table.map(|t| t.schema.as_str()),
                &table.map(|t| t.name.as_str()),
                &include_dropped,
            ],
        )
        .await
        .pg_context(|| "listing the chunks".into())?;
    rows.iter().map(chunk_from_row).collect()
}

pub async fn insert_chunk(
    client: &impl GenericClient,
    table: &TableName,
    chunk_name: &str,
    range_start: DateTime<Utc>,
    range_end: DateTime<Utc>,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._chunk_metadata
                 (schema_name, table_name, chunk_name, range_start, range_end, status)
             VALUES ($1, $2, $3, $4, $5, 'active')",
            &[
                &table.schema,
                &table.name,
                &chunk_name,
                &range_start,
                &range_end,
            ],
        )
        .await
        .pg_context(|| format!("registering chunk {chunk_name}"))?;
    Ok(())
}

pub async fn update_chunk_stats(
    client: &impl GenericClient,
    chunk: &TableName,
    row_count: i64,
    size_bytes: i64,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._chunk_metadata
                SET row_count = $3, size_bytes = $4, stats_updated_at = now()
              WHERE schema_name = $1 AND chunk_name = $2",
            &[&chunk.schema, &chunk.name, &row_count, &size_bytes],
        )
        .await
        .pg_context(|| format!("recording statistics of chunk {chunk}"))?;
    Ok(())
}

pub async fn mark_chunk_dropped(
    client: &impl GenericClient,
    chunk: &TableName,
    row_count: Option<i64>,
    size_bytes: Option<i64>,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._chunk_metadata
                SET status = 'dropped', dropped_at = now(),
                    row_count = coalesce($3, row_count), size_bytes = coalesce($4, size_bytes),
                    stats_updated_at = CASE WHEN $3 IS NULL THEN stats_updated_at ELSE now() END
              WHERE schema_name = $1 AND chunk_name = $2",
            &[&chunk.schema, &chunk.name, &row_count, &size_bytes],
        )
        .await
        .pg_context(|| format!("marking chunk {chunk} dropped"))?;
    Ok(())
}

/// A chunk's time range (microseconds since the epoch) and whether it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    pub start_micros: i64,
    pub end_micros: i64,
    pub dropped: bool,
}

/// The ranges of every chunk of `table`, dropped ones included, in time order.
pub async fn chunk_ranges(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<Vec<ChunkRange>> {
    let rows = client
        .query(
            "SELECT (extract(epoch FROM range_start) * 1000000)::bigint,
                    (extract(epoch FROM range_end) * 1000000)::bigint,
                    status = 'dropped'
               FROM lakets._chunk_metadata
              WHERE schema_name = $1 AND table_name = $2
              ORDER BY range_start",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| format!("reading the chunks of {table}"))?;
    Ok(rows
        .iter()
        .map(|r| ChunkRange {
            start_micros: r.get(0),
            end_micros: r.get(1),
            dropped: r.get(2),
        })
        .collect())
}

/// The time ranges (microseconds) of `table`'s dropped chunks.
pub async fn dropped_ranges(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<Vec<(i64, i64)>> {
    Ok(chunk_ranges(client, table)
        .await?
        .into_iter()
        .filter(|r| r.dropped)
        .map(|r| (r.start_micros, r.end_micros))
        .collect())
}

/// Raises each chunk's `last_write_lsn` to the given position (never lowers it): the
/// chunk tracker's stamps, `(schema, chunk, lsn)` in a stable order so that row locks are
/// taken in the same order by every writer.
pub async fn stamp_last_writes(
    client: &impl GenericClient,
    schemas: &[&str],
    chunks: &[&str],
    lsns: &[String],
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._chunk_metadata m
                SET last_write_lsn = greatest(coalesce(m.last_write_lsn, '0/0'::pg_lsn), u.lsn::pg_lsn)
               FROM unnest($1::text[], $2::text[], $3::text[]) AS u(schema_name, chunk_name, lsn)
              WHERE m.schema_name = u.schema_name AND m.chunk_name = u.chunk_name",
            &[&schemas, &chunks, &lsns],
        )
        .await
        .pg_context(|| "stamping last_write_lsn of chunks".into())?;
    Ok(())
}

/// The end LSN of the last transaction that wrote into `chunk`, as the tracker stamped it.
pub async fn last_write_lsn(
    client: &impl GenericClient,
    chunk: &TableName,
) -> Result<Option<tokio_postgres::types::PgLsn>> {
    Ok(client
        .query_one(
            "SELECT last_write_lsn FROM lakets._chunk_metadata WHERE schema_name = $1 AND chunk_name = $2",
            &[&chunk.schema, &chunk.name],
        )
        .await
        .pg_context(|| format!("reading the metadata of {chunk}"))?
        .get(0))
}

/// Records why the gate deferred `chunk` (shown by status until it moves).
pub async fn record_deferral(
    client: &impl GenericClient,
    chunk: &TableName,
    reason: &str,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._chunk_metadata SET deferred_reason = $3, deferred_at = now()
              WHERE schema_name = $1 AND chunk_name = $2",
            &[&chunk.schema, &chunk.name, &reason],
        )
        .await
        .pg_context(|| format!("recording why {} was deferred", chunk.name))?;
    Ok(())
}

/// Marks `chunk` tiered with the row count the gate verified, clearing any deferral.
pub async fn mark_chunk_tiered(
    client: &impl GenericClient,
    chunk: &TableName,
    rows: i64,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._chunk_metadata
                SET status = 'tiered', tiered_at = now(), row_count = $3,
                    deferred_reason = NULL, deferred_at = NULL
              WHERE schema_name = $1 AND chunk_name = $2",
            &[&chunk.schema, &chunk.name, &rows],
        )
        .await
        .pg_context(|| format!("marking {} tiered", chunk.name))?;
    Ok(())
}

/// How many chunks, of every ChronoTable, are tiered and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkCounts {
    pub tiered: i64,
    pub dropped: i64,
}

/// Counts the tiered and the dropped chunks of every ChronoTable.
pub async fn count_chunks(client: &impl GenericClient) -> Result<ChunkCounts> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'tiered'),
                    count(*) FILTER (WHERE status = 'dropped')
               FROM lakets._chunk_metadata",
            &[],
        )
        .await
        .pg_context(|| "counting chunks".into())?;
    Ok(ChunkCounts {
        tiered: row.get(0),
        dropped: row.get(1),
    })
}

/// The name of the earliest chunk, of any ChronoTable, whose range ended an hour ago or
/// more.
pub async fn chunk_ended_an_hour_ago(client: &impl GenericClient) -> Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT chunk_name FROM lakets._chunk_metadata
              WHERE range_end <= now() - interval '1 hour' ORDER BY range_start LIMIT 1",
            &[],
        )
        .await
        .pg_context(|| "finding an old chunk".into())?
        .map(|r| r.get(0)))
}

/// The registries of the features whose state the stream keeps exact (a synced table, a
/// cache, a rollup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureRegistry {
    Sync,
    Lvc,
    Rollup,
}

impl FeatureRegistry {
    /// The registry's table in schema `lakets` (a fixed name, never user input).
    pub fn table(self) -> &'static str {
        match self {
            FeatureRegistry::Sync => "_sync_registry",
            FeatureRegistry::Lvc => "_lvc_registry",
            FeatureRegistry::Rollup => "_rollup_registry",
        }
    }
}
