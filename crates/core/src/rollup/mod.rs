//! RollUps: incrementally maintained aggregates of a ChronoTable, or of another rollup,
//! forming a DAG (spec: "Aggregation — the RollUp DAG and cascade refresh").
//!
//! - A rollup materializes `bucket`, its group-by columns and its aggregates into a table
//!   named like the rollup in its source's schema, keyed by (`bucket`, groups), plus a
//!   real-time view `<name>_realtime` (materialized buckets below the watermark, the rest
//!   computed from the source's own real-time view or table).
//! - The watermark marks how far buckets are materialized. A refresh advances it over
//!   closed buckets and re-aggregates the buckets named in
//!   `lakets._rollup_invalidation_log` (written by the WAL operator in
//!   [`crate::rollup::invalidations`] for ChronoTable sources, by the refresh of the
//!   source for rollup sources), clearing what it consumed in the same transaction.
//! - Registry changes emit a transactional logical message, so the WAL operator learns of
//!   a new rollup exactly at the position of its creation in the stream.

pub mod check;
pub mod dag;
pub mod invalidations;
pub mod refresh;
pub mod spec;
pub mod sql;

use std::collections::HashMap;

use tokio_postgres::{Client, GenericClient};
use tracing::info;

use crate::catalog::migrations::ADVISORY_NAMESPACE;
use crate::catalog::registry::{self, TimeType};
use crate::catalog::rollup_registry::{self, RollupRecord};
use crate::error::{Error, PgResultExt, Result};
use crate::ident::{MAX_IDENT_BYTES, QualifiedName, TableName, parse_identifier, quote_ident};
use crate::interval::Interval;
use spec::{ColumnInfo, Func, OutputColumn, SourceColumns};
use sql::BucketType;

/// Second key of the advisory lock that serializes registry changes (create, drop).
const REGISTRY_LOCK: i32 = 3;

/// Suffix of the real-time view's name.
pub const REALTIME_SUFFIX: &str = "_realtime";

/// Where a rollup reads from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    Table {
        table: TableName,
        time_column: String,
        #[serde(skip)]
        time_type: TimeType,
    },
    Rollup {
        name: String,
        table: TableName,
    },
}

/// A registered rollup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rollup {
    pub name: String,
    /// The materialized table.
    pub table: TableName,
    /// The real-time view.
    pub view: TableName,
    pub source: Source,
    /// The ChronoTable at the bottom of the chain.
    pub root: TableName,
    pub root_time_column: String,
    #[serde(skip)]
    pub root_time_type: String,
    pub bucket_type: BucketType,
    #[serde(rename = "bucket_micros")]
    pub width_micros: i64,
    pub group_by: Vec<String>,
    pub aggregate: String,
    pub columns: Vec<OutputColumn>,
    pub refresh_lag: Interval,
    /// Buckets before this (microseconds since the epoch) are materialized.
    pub watermark: Option<i64>,
    pub last_refresh_at: Option<i64>,
    pub pending_invalidations: i64,
}

impl Rollup {
    pub fn bucket(&self) -> Interval {
        Interval::from_micros(self.width_micros)
    }

    pub fn source_rollup(&self) -> Option<&str> {
        match &self.source {
            Source::Rollup { name, .. } => Some(name),
            Source::Table { .. } => None,
        }
    }
}

/// What `lakets rollup create` asks for.
#[derive(Debug, Clone)]
pub struct CreateRollup {
    pub name: String,
    pub source: String,
    pub bucket: Interval,
    pub group_by: Vec<String>,
    pub aggregate: String,
    pub refresh_lag: Interval,
}

fn rollup_from_record(record: RollupRecord) -> Result<Rollup> {
    let RollupRecord {
        name,
        schema,
        source: source_table,
        source_rollup,
        source_time_column,
        source_time_type,
        root,
        root_time_column,
        root_time_type,
        bucket_type,
        width_micros,
        group_by,
        aggregate,
        columns,
        refresh_lag_micros,
        watermark,
        last_refresh_at,
        pending_invalidations,
    } = record;
    let source = match source_rollup {
        Some(rollup) => Source::Rollup {
            name: rollup,
            table: source_table,
        },
        None => Source::Table {
            table: source_table,
            time_column: source_time_column,
            time_type: time_type(&source_time_type)?,
        },
    };
    let columns: Vec<OutputColumn> = serde_json::from_str(&columns).map_err(|e| {
        Error::NotReady(format!(
            "the registry row of rollup {name} is unreadable: {e}"
        ))
    })?;
    Ok(Rollup {
        table: TableName::new(schema.clone(), name.clone()),
        view: TableName::new(schema, format!("{name}{REALTIME_SUFFIX}")),
        name,
        source,
        root,
        root_time_column,
        root_time_type,
        bucket_type: BucketType::parse(&bucket_type),
        width_micros,
        group_by,
        aggregate,
        columns,
        refresh_lag: Interval::from_micros(refresh_lag_micros),
        watermark,
        last_refresh_at,
        pending_invalidations,
    })
}

fn time_type(text: &str) -> Result<TimeType> {
    match text {
        "timestamptz" => Ok(TimeType::Timestamptz),
        "timestamp" => Ok(TimeType::Timestamp),
        "date" => Ok(TimeType::Date),
        other => Err(Error::NotReady(format!(
            "the rollup registry holds an unknown time type {other:?}"
        ))),
    }
}

/// Every rollup, by name.
pub async fn list_rollups(client: &impl GenericClient) -> Result<Vec<Rollup>> {
    rollup_registry::list_rollups(client)
        .await?
        .into_iter()
        .map(rollup_from_record)
        .collect()
}

/// One rollup by name.
pub async fn find_rollup(client: &impl GenericClient, name: &str) -> Result<Rollup> {
    let name = parse_identifier(name.trim())?;
    match rollup_registry::find_rollup(client, &name).await? {
        Some(record) => rollup_from_record(record),
        None => Err(Error::NotFound {
            kind: "rollup",
            name,
        }),
    }
}

/// The rollup registered under exactly `name` (a name read from the registry, which
/// [`find_rollup`] would parse again: `"Candles"` would become `candles`).
pub(crate) async fn find_registered(client: &impl GenericClient, name: &str) -> Result<Rollup> {
    match rollup_registry::find_rollup(client, name).await? {
        Some(record) => rollup_from_record(record),
        None => Err(Error::NotFound {
            kind: "rollup",
            name: name.to_owned(),
        }),
    }
}

/// The columns of a table as the SPEC planner needs them.
struct TableColumns {
    /// name -> (info, NOT NULL)
    columns: HashMap<String, (ColumnInfo, bool)>,
}

impl SourceColumns for TableColumns {
    fn table_column(&self, name: &str) -> Option<ColumnInfo> {
        self.columns.get(name).map(|c| c.0)
    }
    fn rolled(&self) -> Option<&[OutputColumn]> {
        None
    }
}

struct RolledColumns<'a>(&'a [OutputColumn]);

impl SourceColumns for RolledColumns<'_> {
    fn table_column(&self, _: &str) -> Option<ColumnInfo> {
        None
    }
    fn rolled(&self) -> Option<&[OutputColumn]> {
        Some(self.0)
    }
}

async fn table_columns(client: &impl GenericClient, table: &TableName) -> Result<TableColumns> {
    let rows = client
        .query(
            "SELECT a.attname::text, t.typcategory = 'N', t.oid IN (700, 701), a.attnotnull
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.quoted()],
        )
        .await
        .pg_context(|| format!("reading the columns of {table}"))?;
    Ok(TableColumns {
        columns: rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (
                        ColumnInfo {
                            numeric: r.get(1),
                            float: r.get(2),
                        },
                        r.get(3),
                    ),
                )
            })
            .collect(),
    })
}

/// Refuses a table whose updates and deletes would not carry the time and group-by
/// columns of their old row (the invalidation operator needs the bucket the row left).
async fn check_identity(
    client: &impl GenericClient,
    table: &TableName,
    needed: &[&str],
) -> Result<()> {
    crate::chronotable::replica_identity::require_chunks_match(
        client,
        table,
        "the rollup invalidations",
    )
    .await?;
    let row = client
        .query_one(
            "SELECT c.relreplident::text,
                    coalesce((SELECT array_agg(a.attname::text)
                                FROM pg_index i JOIN pg_attribute a
                                  ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                               WHERE i.indrelid = c.oid
                                 AND (i.indisreplident OR (c.relreplident = 'd' AND i.indisprimary))),
                             '{}')
               FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&table.quoted()],
        )
        .await
        .pg_context(|| format!("reading the replica identity of {table}"))?;
    let identity: String = row.get(0);
    let key: Vec<String> = row.get(1);
    if identity == "f" {
        return Ok(());
    }
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !key.iter().any(|k| k == c))
        .collect();
    if missing.is_empty() && !key.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "the replica identity of {table} does not include {}, so an update or delete would not \
         say which bucket it left; set REPLICA IDENTITY FULL on the table and its chunks with \
         `lakets chronotable replica-identity {} full` (or put these columns in the primary \
         key)",
        missing
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        table
    )))
}

/// Creates a rollup: its table, its real-time view and its registry row, in one
/// transaction. Nothing is materialized until the first refresh.
pub async fn create_rollup(client: &mut Client, request: &CreateRollup) -> Result<Rollup> {
    crate::catalog::check_installed(&*client).await?;
    // Changes after the creation must reach the invalidation operator through a slot,
    // which cannot be made inside the creating transaction. When there is none yet, the
    // creation is rehearsed (and rolled back) first, so that a refused request leaves no
    // slot behind.
    if !crate::catalog::replication::has_consumer(&*client).await? {
        create_in_transaction(client, request, false).await?;
        crate::catalog::replication::ensure_default_consumer(&*client).await?;
    }
    create_in_transaction(client, request, true).await
}

/// The creation in one transaction, committed only when `commit`.
async fn create_in_transaction(
    client: &mut Client,
    request: &CreateRollup,
    commit: bool,
) -> Result<Rollup> {
    let name = parse_identifier(request.name.trim())?;
    if name.len() + REALTIME_SUFFIX.len() > MAX_IDENT_BYTES {
        return Err(Error::invalid(format!(
            "rollup name {name:?} is too long: at most {} bytes, so that {name}{REALTIME_SUFFIX} fits",
            MAX_IDENT_BYTES - REALTIME_SUFFIX.len()
        )));
    }
    if request.bucket.is_zero() {
        return Err(Error::invalid("--bucket must be longer than zero"));
    }
    let calls = spec::parse(&request.aggregate)?;
    let group_by: Vec<String> = request
        .group_by
        .iter()
        .map(|g| g.trim())
        .filter(|g| !g.is_empty())
        .map(parse_identifier)
        .collect::<Result<_>>()?;

    let tx = registry_transaction(client).await?;
    if rollup_registry::rollup_exists(&tx, &name).await? {
        return Err(Error::Conflict(format!("rollup {name} already exists")));
    }

    // The source: a rollup of that name, else a ChronoTable.
    let source_name = QualifiedName::parse(request.source.trim())?;
    let source_rollup = match &source_name.schema {
        None => match find_rollup(&tx, &source_name.name).await {
            Ok(r) => Some(r),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        },
        Some(_) => None,
    };
    if source_name.name == name && source_name.schema.is_none() {
        return Err(Error::invalid(format!(
            "rollup {name} cannot read itself (the rollups must form a graph without cycles)"
        )));
    }
    let (source, schema, root, root_time_column, root_time_type, bucket_type, columns) =
        match &source_rollup {
            Some(src) => {
                if request.bucket.as_micros() % src.width_micros != 0 {
                    return Err(Error::invalid(format!(
                        "--bucket {} is not a whole number of {}'s buckets ({}), so its buckets \
                         cannot be re-aggregated from {}",
                        request.bucket,
                        src.name,
                        src.bucket(),
                        src.name
                    )));
                }
                for g in &group_by {
                    if !src.group_by.contains(g) {
                        return Err(Error::invalid(format!(
                            "--group-by {g:?}: {} is not grouped by it (its groups: {}), so it \
                             cannot be re-aggregated by {g:?}",
                            src.name,
                            if src.group_by.is_empty() {
                                "none".into()
                            } else {
                                src.group_by.join(", ")
                            }
                        )));
                    }
                }
                let columns = spec::plan(&calls, &RolledColumns(&src.columns), &src.name)?;
                // first/last over a rollup order its buckets by time; buckets are unique
                // only within one of its groups.
                let merges_groups = src.group_by.iter().any(|g| !group_by.contains(g));
                if let Some(c) = columns
                    .iter()
                    .find(|c| merges_groups && matches!(c.func, Func::First | Func::Last))
                {
                    return Err(Error::invalid(format!(
                        "{} ({}) cannot be re-aggregated from {} across its groups: which group's \
                         value comes first is unknown at its level; group by {} as well",
                        c.name,
                        if c.func == Func::First {
                            "first"
                        } else {
                            "last"
                        },
                        src.name,
                        src.group_by.join(", ")
                    )));
                }
                (
                    Source::Rollup {
                        name: src.name.clone(),
                        table: src.table.clone(),
                    },
                    src.table.schema.clone(),
                    src.root.clone(),
                    src.root_time_column.clone(),
                    src.root_time_type.clone(),
                    src.bucket_type,
                    columns,
                )
            }
            None => {
                let ct = registry::find_chronotable(&tx, &request.source)
                    .await
                    .map_err(|e| match e {
                        Error::NotFound { .. } => Error::NotFound {
                            kind: "ChronoTable or rollup",
                            name: request.source.trim().to_owned(),
                        },
                        e => e,
                    })?;
                let info = table_columns(&tx, &ct.table).await?;
                for g in &group_by {
                    if !info.columns.contains_key(g) {
                        return Err(Error::invalid(format!(
                            "--group-by {g:?}: {} has no such column",
                            ct.table
                        )));
                    }
                    if *g == ct.time_column {
                        return Err(Error::invalid(format!(
                            "--group-by {g:?} is the time column; it is bucketed, not grouped"
                        )));
                    }
                }
                let mut needed: Vec<&str> = vec![ct.time_column.as_str()];
                needed.extend(group_by.iter().map(String::as_str));
                check_identity(&tx, &ct.table, &needed).await?;
                let columns = spec::plan(&calls, &info, &ct.table.to_string())?;
                (
                    Source::Table {
                        table: ct.table.clone(),
                        time_column: ct.time_column.clone(),
                        time_type: ct.time_type,
                    },
                    ct.table.schema.clone(),
                    ct.table.clone(),
                    ct.time_column.clone(),
                    ct.time_type.as_str().to_owned(),
                    if ct.time_type == TimeType::Timestamptz {
                        BucketType::Timestamptz
                    } else {
                        BucketType::Timestamp
                    },
                    columns,
                )
            }
        };
    let mut seen: Vec<&str> = vec!["bucket"];
    for c in group_by
        .iter()
        .map(String::as_str)
        .chain(columns.iter().map(|c| c.name.as_str()))
    {
        if seen.contains(&c) {
            return Err(Error::invalid(format!(
                "the rollup would have two columns named {c:?}; name each group-by column and \
                 aggregate once"
            )));
        }
        if c.len() > MAX_IDENT_BYTES {
            return Err(Error::invalid(format!("column name {c:?} is too long")));
        }
        seen.push(c);
    }

    let rollup = Rollup {
        table: TableName::new(schema.clone(), name.clone()),
        view: TableName::new(schema.clone(), format!("{name}{REALTIME_SUFFIX}")),
        name: name.clone(),
        source,
        root,
        root_time_column,
        root_time_type,
        bucket_type,
        width_micros: request.bucket.as_micros(),
        group_by,
        aggregate: request.aggregate.trim().to_owned(),
        columns,
        refresh_lag: request.refresh_lag,
        watermark: None,
        last_refresh_at: None,
        pending_invalidations: 0,
    };
    for relation in [&rollup.table, &rollup.view] {
        let taken: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&relation.quoted()])
            .await
            .pg_context(|| format!("looking up {relation}"))?
            .get(0);
        if taken {
            return Err(Error::Conflict(format!(
                "{relation} already exists; choose another rollup name"
            )));
        }
    }
    create_objects(&tx, &rollup).await?;
    let (source, source_time_column, source_time_type) = match &rollup.source {
        Source::Table {
            table,
            time_column,
            time_type,
        } => (
            table.clone(),
            time_column.clone(),
            time_type.as_str().to_owned(),
        ),
        Source::Rollup { table, .. } => (
            table.clone(),
            "bucket".to_owned(),
            rollup.bucket_type.as_str().to_owned(),
        ),
    };
    rollup_registry::register_rollup(
        &tx,
        &RollupRecord {
            name: rollup.name.clone(),
            schema: rollup.table.schema.clone(),
            source,
            source_rollup: rollup.source_rollup().map(str::to_owned),
            source_time_column,
            source_time_type,
            root: rollup.root.clone(),
            root_time_column: rollup.root_time_column.clone(),
            root_time_type: rollup.root_time_type.clone(),
            bucket_type: rollup.bucket_type.as_str().to_owned(),
            width_micros: rollup.width_micros,
            group_by: rollup.group_by.clone(),
            aggregate: rollup.aggregate.clone(),
            columns: serde_json::to_string(&rollup.columns).expect("columns serialize"),
            refresh_lag_micros: rollup.refresh_lag.as_micros(),
            watermark: None,
            last_refresh_at: None,
            pending_invalidations: 0,
        },
    )
    .await?;
    announce(&tx, &name).await?;
    if commit {
        tx.commit()
            .await
            .pg_context(|| format!("committing rollup {name}"))?;
        info!(rollup = %name, source = %request.source, bucket = %request.bucket, "created rollup");
    }
    Ok(rollup)
}

/// The materialized table (typed by PostgreSQL from the aggregate query itself) with its
/// key, and the real-time view.
async fn create_objects(tx: &tokio_postgres::Transaction<'_>, rollup: &Rollup) -> Result<()> {
    let table = rollup.table.quoted();
    let select = rollup.select_from_source(&rollup.source_relation(), "");
    let groups: Vec<String> = rollup.group_by.iter().map(|g| quote_ident(g)).collect();
    let key = std::iter::once("bucket".to_owned())
        .chain(groups.iter().cloned())
        .collect::<Vec<_>>()
        .join(", ");
    // Group columns that may be NULL in the ChronoTable make a unique key instead of a
    // primary key (NULLS NOT DISTINCT: one row per NULL group too).
    let root_columns = table_columns(tx, &rollup.root).await?;
    let nullable_group = rollup
        .group_by
        .iter()
        .any(|g| root_columns.columns.get(g).is_none_or(|c| !c.1));
    let key_ddl = if nullable_group {
        format!(
            "ALTER TABLE {table} ALTER COLUMN bucket SET NOT NULL;
             CREATE UNIQUE INDEX {index} ON {table} ({key}) NULLS NOT DISTINCT;",
            index = quote_ident(&format!("{}_key", rollup.name)),
        )
    } else {
        format!("ALTER TABLE {table} ADD PRIMARY KEY ({key});")
    };
    tx.batch_execute(&format!(
        "CREATE TABLE {table} AS {select} WITH NO DATA; {key_ddl}"
    ))
    .await
    .pg_context(|| format!("creating the table of rollup {}", rollup.name))?;

    // Real-time: the materialized buckets, then the newer ones computed from the source
    // (the source rollup's own real-time view, so the whole chain is current).
    let watermark = rollup
        .bucket_type
        .from_timestamptz(&rollup_registry::watermark_expression(&rollup.name));
    let live_source = match &rollup.source {
        Source::Table { table, .. } => table.quoted(),
        Source::Rollup { table, .. } => TableName::new(
            table.schema.clone(),
            format!("{}{REALTIME_SUFFIX}", table.name),
        )
        .quoted(),
    };
    let recent = rollup.select_from_source(
        &live_source,
        &format!("WHERE {} >= {watermark}", rollup.source_time()),
    );
    let columns = rollup
        .column_list()
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    tx.batch_execute(&format!(
        "CREATE VIEW {view} AS
         SELECT {columns} FROM {table} WHERE bucket < {watermark}
         UNION ALL
         {recent}",
        view = rollup.view.quoted(),
    ))
    .await
    .pg_context(|| format!("creating the real-time view of rollup {}", rollup.name))?;
    Ok(())
}

/// Tells the WAL operator, in stream order, that the registry changed.
async fn announce(client: &impl GenericClient, name: &str) -> Result<()> {
    crate::catalog::announce::announce(
        client,
        &crate::catalog::announce::Announcement::RollupsChanged {
            rollup: name.to_owned(),
        },
    )
    .await
}

/// A transaction holding the registry lock: creates and drops see a stable DAG.
async fn registry_transaction(client: &mut Client) -> Result<tokio_postgres::Transaction<'_>> {
    let tx = client
        .transaction()
        .await
        .pg_context(|| "starting a transaction".into())?;
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")
        .await
        .pg_context(|| "setting lock_timeout".into())?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&ADVISORY_NAMESPACE, &REGISTRY_LOCK],
    )
    .await
    .pg_context(|| "locking the rollup registry".into())?;
    Ok(tx)
}

/// Drops a rollup (its view, table, registry row and pending invalidations); refused while
/// another rollup reads it.
pub async fn drop_rollup(client: &mut Client, name: &str) -> Result<Rollup> {
    crate::catalog::check_installed(&*client).await?;
    let tx = registry_transaction(client).await?;
    let rollup = find_rollup(&tx, name).await?;
    let dependents = rollup_registry::readers_of(&tx, &rollup.name).await?;
    if !dependents.is_empty() {
        return Err(Error::Conflict(format!(
            "rollup {} is read by {}; drop {} first",
            rollup.name,
            dependents.join(", "),
            if dependents.len() == 1 { "it" } else { "them" }
        )));
    }
    drop_objects(&tx, &rollup).await?;
    tx.commit()
        .await
        .pg_context(|| format!("committing the drop of rollup {}", rollup.name))?;
    info!(rollup = %rollup.name, "dropped rollup");
    Ok(rollup)
}

async fn drop_objects(tx: &tokio_postgres::Transaction<'_>, rollup: &Rollup) -> Result<()> {
    tx.batch_execute(&format!(
        "DROP VIEW IF EXISTS {}; DROP TABLE IF EXISTS {};",
        rollup.view.quoted(),
        rollup.table.quoted()
    ))
    .await
    .pg_context(|| format!("dropping the objects of rollup {}", rollup.name))?;
    rollup_registry::unregister_rollup(tx, &rollup.name).await?;
    announce(tx, &rollup.name).await
}

/// Drops every rollup built on `table`, readers first (part of `drop_chronotable`).
pub async fn drop_rollups_of(
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableName,
) -> Result<Vec<String>> {
    let all = list_rollups(tx).await?;
    let order = dag::topological(&all)?;
    let mut dropped = Vec::new();
    for name in order.iter().rev() {
        let rollup = all.iter().find(|r| &r.name == name).expect("from the list");
        if &rollup.root == table {
            drop_objects(tx, rollup).await?;
            dropped.push(rollup.name.clone());
        }
    }
    Ok(dropped)
}

/// Formats microseconds since the epoch as an RFC 3339 UTC time.
pub fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.f+00").to_string())
        .unwrap_or_else(|| micros.to_string())
}

/// The start of the bucket holding `t` (infinities stay).
pub fn floor(t: i64, width: i64) -> i64 {
    if t == i64::MIN || t == i64::MAX {
        return t;
    }
    t.div_euclid(width) * width
}

/// The end of the bucket holding `t - 1`: `t` rounded up to a bucket boundary.
pub fn ceil(t: i64, width: i64) -> i64 {
    if t == i64::MIN || t == i64::MAX {
        return t;
    }
    let f = floor(t, width);
    if f == t { t } else { f.saturating_add(width) }
}

/// A bound as timestamptz input text; `i64::MIN`/`i64::MAX` are -infinity/infinity.
pub fn bound_text(t: i64) -> String {
    match t {
        i64::MIN => "-infinity".into(),
        i64::MAX => "infinity".into(),
        t => format_micros(t),
    }
}
