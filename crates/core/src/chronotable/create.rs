//! `create_chronotable`: converts an existing table into a time-partitioned one, in place
//! and in one transaction (any failure leaves the table exactly as it was).
//!
//! Steps: check everything first (refusing what cannot be carried over), capture the
//! definition, rename the old table aside, create the partitioned table under the original
//! name from the captured columns, create chunks covering the data and the rolling window,
//! copy the rows, move sequences over, drop the old table, then recreate constraints,
//! indexes, statistics, replica identity, owner, grants and comments, and register it all.

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Transaction};
use tracing::{info, warn};

use super::bounds::{self, ChunkRange};
use super::introspect::{self, ColumnDef, TableDef};
use super::partitions::{self, DDL_LOCK_TIMEOUT};
use crate::catalog::registry::{self, ChronoTable, TimeType};
use crate::error::{Error, PgResultExt, Result};
use crate::ident::{TableName, parse_identifier, quote_ident, quote_literal};
use crate::interval::Interval;

/// The spec's default chunk interval.
pub const DEFAULT_CHUNK_INTERVAL: Interval = Interval::days(7);
/// Future chunks kept ahead of the current one unless configured otherwise.
pub const DEFAULT_PREMAKE: i32 = 4;
const MAX_PREMAKE: i32 = 1000;

#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub time_column: String,
    pub chunk_interval: Interval,
    pub premake: i32,
    /// The "now" the rolling window is placed around; the database clock when `None`.
    pub at: Option<DateTime<Utc>>,
}

impl CreateOptions {
    pub fn new(time_column: impl Into<String>) -> Self {
        CreateOptions {
            time_column: time_column.into(),
            chunk_interval: DEFAULT_CHUNK_INTERVAL,
            premake: DEFAULT_PREMAKE,
            at: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CreateReport {
    pub table: TableName,
    pub time_column: String,
    pub chunk_interval: Interval,
    pub rows_copied: u64,
    pub chunks: Vec<String>,
}

/// Characters that may not appear in a column default: it is raw SQL that cannot be bound
/// as a parameter (spec: "any default containing ;, -- or /* is rejected").
const FORBIDDEN_IN_DEFAULTS: [&str; 3] = [";", "--", "/*"];

pub async fn create_chronotable(
    client: &mut Client,
    table: &str,
    options: &CreateOptions,
) -> Result<CreateReport> {
    if !(0..=MAX_PREMAKE).contains(&options.premake) {
        return Err(Error::invalid(format!(
            "premake {} is out of range: it must be between 0 and {MAX_PREMAKE}",
            options.premake
        )));
    }
    let time_column = parse_identifier(&options.time_column)?;
    let tx = client
        .transaction()
        .await
        .pg_context(|| "starting the conversion transaction".into())?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'; SET LOCAL standard_conforming_strings = on;"
    ))
    .await
    .pg_context(|| "preparing the conversion session".into())?;
    crate::catalog::check_installed(&tx).await?;

    let name = introspect::resolve_table(&tx, table).await?;
    bounds::validate_table_name_for_chunks(&name.name)?;
    if registry::get_chronotable(&tx, &name).await?.is_some() {
        return Err(Error::Conflict(format!("{name} is already a ChronoTable")));
    }
    tx.batch_execute(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        name.quoted()
    ))
    .await
    .pg_context(|| {
        format!("locking {name} for the conversion (a lock timeout means other sessions are using it: try again)")
    })?;

    let def = introspect::read_table(&tx, &name).await?;
    let time = check_convertible(&tx, &def, &time_column).await?;
    bounds::validate_chunk_interval(options.chunk_interval, time.1)?;
    let ct = ChronoTable {
        table: name.clone(),
        time_column: time_column.clone(),
        time_type: time.1,
        chunk_interval: options.chunk_interval,
        premake: options.premake,
        tiering_enabled: false,
        sync_enabled: false,
    };

    let ranges = plan_chunks(&tx, &def, &ct, options.at).await?;
    let old = name.sibling(format!("_lakets_old_{}", def.oid));
    // Registered first: the chunk rows written by `rebuild` reference this entry.
    registry::insert_chronotable(&tx, &ct).await?;
    let report = rebuild(&tx, &def, &ct, &old, &ranges).await?;
    // Every consumer streams the new ChronoTable from this very commit on.
    crate::catalog::replication::publish_new_table(&tx, &name).await?;
    tx.commit()
        .await
        .pg_context(|| format!("committing the conversion of {name}"))?;
    info!(table = %name, rows = report.rows_copied, chunks = report.chunks.len(), "created ChronoTable");
    Ok(report)
}

/// Everything that would make the conversion lose or break something is refused here,
/// before any change.
async fn check_convertible(
    tx: &Transaction<'_>,
    def: &TableDef,
    time_column: &str,
) -> Result<(i16, TimeType)> {
    let name = &def.table;
    let refuse = |why: String| Err(Error::invalid(format!("cannot convert {name}: {why}")));
    match def.relkind.as_str() {
        "r" => {}
        "p" => return refuse("it is already a partitioned table".into()),
        "v" | "m" => return refuse("it is a view".into()),
        "f" => return refuse("it is a foreign table".into()),
        other => return refuse(format!("it is not an ordinary table (relkind {other})")),
    }
    if def.persistence != "p" {
        return refuse("unlogged and temporary tables cannot be partitioned (and unlogged tables are not in the WAL)".into());
    }
    if def.is_partition || def.in_inheritance {
        return refuse("it takes part in table inheritance or partitioning".into());
    }
    if def.is_typed {
        return refuse("it is a typed table (CREATE TABLE ... OF type)".into());
    }
    if def.row_security {
        return refuse("row-level security is enabled on it".into());
    }
    if def.replica_identity == "n" {
        return refuse(
            "its REPLICA IDENTITY is NOTHING, so its updates and deletes could not be streamed; \
             set REPLICA IDENTITY DEFAULT (with a primary key) or FULL first"
                .into(),
        );
    }

    let Some(column) = def.columns.iter().find(|c| c.name == time_column) else {
        return refuse(format!("it has no column {time_column:?}"));
    };
    let Some(time_type) = TimeType::from_type_oid(column.type_oid) else {
        return refuse(format!(
            "the time column {time_column:?} has type {}; it must be timestamptz, timestamp or date",
            column.type_sql
        ));
    };
    if column.generated == "s" {
        return refuse(format!(
            "the time column {time_column:?} is a generated column"
        ));
    }

    for c in &def.columns {
        if let Some(expr) = &c.default_expr
            && let Some(bad) = FORBIDDEN_IN_DEFAULTS.iter().find(|t| expr.contains(**t))
        {
            return refuse(format!(
                "the {} of column {:?} contains {bad:?}, which is not allowed in a column \
                     default (it is raw SQL that cannot be bound safely): {expr}",
                if c.generated == "s" {
                    "generation expression"
                } else {
                    "default"
                },
                c.name
            ));
        }
    }
    for k in &def.constraints {
        match k.kind.as_str() {
            "p" | "u" if !k.columns.contains(&column.attnum) => {
                return refuse(format!(
                    "{} constraint {:?} ({}) does not include the time column {time_column:?}; \
                     on a partitioned table every primary key and unique constraint must",
                    if k.kind == "p" {
                        "primary key"
                    } else {
                        "unique"
                    },
                    k.name,
                    k.definition
                ));
            }
            "x" => {
                return refuse(format!(
                    "exclusion constraint {:?} is not supported on partitioned tables",
                    k.name
                ));
            }
            _ => {}
        }
    }
    for ix in &def.indexes {
        if ix.unique && !ix.key_columns.contains(&column.attnum) {
            return refuse(format!(
                "unique index {:?} does not include the time column {time_column:?} as a plain \
                 key column; on a partitioned table every unique index must",
                ix.name
            ));
        }
    }

    let deps = introspect::read_dependents(tx, def.oid).await?;
    let blockers = [
        ("views depend on it", &deps.views),
        (
            "foreign keys of other tables reference it",
            &deps.referencing_foreign_keys,
        ),
        ("it has triggers", &deps.triggers),
        ("it has row security policies", &deps.policies),
        ("it has rules", &deps.rules),
        ("it is in publications", &deps.publications),
    ];
    for (what, list) in blockers {
        if !list.is_empty() {
            return refuse(format!(
                "{what} ({}); remove them first and recreate them after the conversion",
                list.join(", ")
            ));
        }
    }

    let nulls: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE {} IS NULL",
                name.quoted(),
                quote_ident(time_column)
            ),
            &[],
        )
        .await
        .pg_context(|| format!("checking {name} for NULL times"))?
        .get(0);
    if nulls > 0 {
        return refuse(format!(
            "{nulls} rows have no value in the time column {time_column:?}; a chunk is chosen by \
             time, so fill or delete them first"
        ));
    }
    Ok((column.attnum, time_type))
}

/// Chunks covering the existing rows (contiguously, so late rows in between have a home)
/// and the rolling window around now.
async fn plan_chunks(
    tx: &Transaction<'_>,
    def: &TableDef,
    ct: &ChronoTable,
    at: Option<DateTime<Utc>>,
) -> Result<Vec<ChunkRange>> {
    let col = quote_ident(&ct.time_column);
    let row = tx
        .query_one(
            &format!(
                "SELECT bool_or(NOT isfinite({col})),
                        (extract(epoch FROM min({col})) * 1000000)::bigint,
                        (extract(epoch FROM max({col})) * 1000000)::bigint
                   FROM {}",
                def.table.quoted()
            ),
            &[],
        )
        .await
        .pg_context(|| format!("reading the time range of {}", def.table))?;
    if row.get::<_, Option<bool>>(0) == Some(true) {
        return Err(Error::invalid(format!(
            "cannot convert {}: the time column holds infinity, which no chunk can cover",
            def.table
        )));
    }
    let now = partitions::now_or_db(tx, at).await?;
    let window = bounds::window(now, ct.chunk_interval, ct.premake);
    let (mut from, mut to) = (window.start, window.end);
    if let (Some(min), Some(max)) = (row.get::<_, Option<i64>>(1), row.get::<_, Option<i64>>(2)) {
        from = from.min(bounds::align_down(min, ct.chunk_interval));
        to = to.max(max + 1);
    }
    // Counted before anything is allocated: one outlier row from 1990 with 1-second chunks
    // must be a clear error, not a memory exhaustion.
    let count = bounds::count_covering(from, to, ct.chunk_interval);
    if count > bounds::MAX_CHUNKS_PER_OPERATION as u64 {
        return Err(Error::invalid(format!(
            "cannot convert {}: its data from {} to {} would need {} chunks of {} (at most {}); \
             choose a larger --chunk-interval",
            def.table,
            bounds::to_datetime(from)?,
            bounds::to_datetime(to)?,
            count,
            ct.chunk_interval,
            bounds::MAX_CHUNKS_PER_OPERATION
        )));
    }
    Ok(bounds::chunks_covering(from, to, ct.chunk_interval))
}

fn column_sql(c: &ColumnDef, time_column: &str) -> String {
    let mut sql = format!("{} {}", quote_ident(&c.name), c.type_sql);
    if let Some(collation) = &c.collation_sql {
        sql.push_str(&format!(" COLLATE {collation}"));
    }
    if let ("a" | "d", Some(seq)) = (c.identity.as_str(), &c.sequence) {
        sql.push_str(&format!(
            " GENERATED {} AS IDENTITY ({})",
            if c.identity == "a" {
                "ALWAYS"
            } else {
                "BY DEFAULT"
            },
            seq.identity_options()
        ))
    }
    if c.not_null || c.name == time_column {
        sql.push_str(" NOT NULL");
    }
    if let Some(expr) = &c.default_expr {
        if c.generated == "s" {
            sql.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"));
        } else {
            sql.push_str(&format!(" DEFAULT {expr}"));
        }
    }
    sql
}

async fn rebuild(
    tx: &Transaction<'_>,
    def: &TableDef,
    ct: &ChronoTable,
    old: &TableName,
    ranges: &[ChunkRange],
) -> Result<CreateReport> {
    let name = &def.table;
    let exec =
        |sql: String, what: String| async move { tx.batch_execute(&sql).await.pg_context(|| what) };

    exec(
        format!(
            "ALTER TABLE {} RENAME TO {}",
            name.quoted(),
            quote_ident(&old.name)
        ),
        format!("moving {name} aside"),
    )
    .await?;

    let mut elements: Vec<String> = def
        .columns
        .iter()
        .map(|c| column_sql(c, &ct.time_column))
        .collect();
    for k in def.constraints.iter().filter(|k| k.kind == "c") {
        let check = k.definition.trim_end_matches(" NOT VALID");
        elements.push(format!("CONSTRAINT {} {check}", quote_ident(&k.name)));
    }
    exec(
        format!(
            "CREATE TABLE {} (\n  {}\n) PARTITION BY RANGE ({})",
            name.quoted(),
            elements.join(",\n  "),
            quote_ident(&ct.time_column)
        ),
        format!("creating the partitioned table {name}"),
    )
    .await?;

    let mut chunks = Vec::with_capacity(ranges.len());
    for range in ranges {
        chunks.push(partitions::create_chunk(tx, ct, *range, false).await?);
    }

    // Copy the rows. Generated columns are recomputed; identity values are kept.
    let copy_columns: Vec<String> = def
        .columns
        .iter()
        .filter(|c| c.generated != "s")
        .map(|c| quote_ident(&c.name))
        .collect();
    let column_list = copy_columns.join(", ");
    let overriding = if def.columns.iter().any(|c| c.identity == "a") {
        "OVERRIDING SYSTEM VALUE "
    } else {
        ""
    };
    let copied = tx
        .execute(
            &format!(
                "INSERT INTO {} ({column_list}) {overriding}SELECT {column_list} FROM {}",
                name.quoted(),
                old.quoted()
            ),
            &[],
        )
        .await
        .pg_context(|| format!("copying the rows of {name} into its chunks"))?;
    let original: i64 = tx
        .query_one(&format!("SELECT count(*) FROM {}", old.quoted()), &[])
        .await
        .pg_context(|| format!("counting the rows of {name}"))?
        .get(0);
    if copied != original as u64 {
        return Err(Error::Conflict(format!(
            "copied {copied} rows of {name} but it has {original}; nothing was changed"
        )));
    }

    // Sequences: identity sequences are recreated with the new table, so carry their
    // position over; serial sequences are kept and handed to the new column.
    for c in &def.columns {
        let Some(seq) = &c.sequence else { continue };
        if c.identity.is_empty() {
            exec(
                format!(
                    "ALTER SEQUENCE {} OWNED BY {}.{}",
                    seq.table_name().quoted(),
                    name.quoted(),
                    quote_ident(&c.name)
                ),
                format!("handing sequence {} to the new table", seq.name),
            )
            .await?;
        } else {
            tx.execute(
                "SELECT setval(pg_get_serial_sequence($1, $2), $3, $4)",
                &[&name.quoted(), &c.name, &seq.last_value, &seq.is_called],
            )
            .await
            .pg_context(|| format!("carrying over the identity position of {:?}", c.name))?;
        }
    }

    exec(
        format!("DROP TABLE {}", old.quoted()),
        format!("dropping the original {name}"),
    )
    .await?;

    for c in def.columns.iter().filter(|c| !c.identity.is_empty()) {
        let Some(seq) = &c.sequence else { continue };
        let current: String = tx
            .query_one(
                "SELECT c.relname::text FROM pg_class c
                  WHERE c.oid = pg_get_serial_sequence($1, $2)::regclass",
                &[&name.quoted(), &c.name],
            )
            .await
            .pg_context(|| format!("reading the new identity sequence of {:?}", c.name))?
            .get(0);
        if current != seq.name {
            exec(
                format!(
                    "ALTER SEQUENCE {} RENAME TO {}",
                    name.sibling(current).quoted(),
                    quote_ident(&seq.name)
                ),
                format!("restoring the name of sequence {}", seq.name),
            )
            .await?;
        }
    }

    // Keys and indexes after the copy: one build per index instead of row-by-row upkeep.
    for k in def
        .constraints
        .iter()
        .filter(|k| matches!(k.kind.as_str(), "p" | "u" | "f"))
    {
        exec(
            format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {}",
                name.quoted(),
                quote_ident(&k.name),
                // Partitioned tables take no NOT VALID foreign keys: validate (a violating
                // row fails the conversion, which then changes nothing).
                k.definition.trim_end_matches(" NOT VALID")
            ),
            format!("recreating constraint {}", k.name),
        )
        .await?;
    }
    for ix in &def.indexes {
        exec(
            ix.definition.clone(),
            format!("recreating index {}", ix.name),
        )
        .await?;
    }
    for stat in &def.statistics {
        exec(stat.clone(), "recreating extended statistics".into()).await?;
    }

    // Replica identity: updates and deletes must carry the old row's key in the WAL. A
    // table without a primary key gets FULL, as the spec's mirror uses.
    let has_pk = def.constraints.iter().any(|k| k.kind == "p");
    let identity = match def.replica_identity.as_str() {
        "f" => Some("FULL".to_owned()),
        "i" => def
            .replica_identity_index
            .as_ref()
            .map(|ix| format!("USING INDEX {}", quote_ident(ix))),
        _ if !has_pk => {
            warn!(table = %name, "table has no primary key: setting REPLICA IDENTITY FULL so updates and deletes can be streamed");
            Some("FULL".to_owned())
        }
        _ => None,
    };
    if let Some(clause) = identity {
        exec(
            format!("ALTER TABLE {} REPLICA IDENTITY {clause}", name.quoted()),
            format!("setting the replica identity of {name}"),
        )
        .await?;
    }
    for chunk in &chunks {
        partitions::apply_replica_identity(tx, name, chunk).await?;
    }

    let owner_differs: bool = tx
        .query_one("SELECT $1 <> current_user::text", &[&def.owner])
        .await
        .pg_context(|| "reading the current user".into())?
        .get(0);
    if owner_differs {
        exec(
            format!(
                "ALTER TABLE {} OWNER TO {}",
                name.quoted(),
                quote_ident(&def.owner)
            ),
            format!("restoring the owner of {name}"),
        )
        .await?;
        for chunk in &chunks {
            exec(
                format!(
                    "ALTER TABLE {} OWNER TO {}",
                    chunk.quoted(),
                    quote_ident(&def.owner)
                ),
                format!("giving chunk {chunk} to {}", def.owner),
            )
            .await?;
        }
    }
    for g in &def.grants {
        let target = match &g.column {
            Some(col) => format!("{} ({})", g.privilege, quote_ident(col)),
            None => g.privilege.clone(),
        };
        exec(
            format!(
                "GRANT {target} ON {} TO {}{}",
                name.quoted(),
                g.grantee,
                if g.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                }
            ),
            format!("restoring the {} privilege of {}", g.privilege, g.grantee),
        )
        .await?;
    }
    if let Some(comment) = &def.comment {
        exec(
            format!(
                "COMMENT ON TABLE {} IS {}",
                name.quoted(),
                quote_literal(comment)
            ),
            "restoring the table comment".into(),
        )
        .await?;
    }
    for c in &def.columns {
        if let Some(comment) = &c.comment {
            exec(
                format!(
                    "COMMENT ON COLUMN {}.{} IS {}",
                    name.quoted(),
                    quote_ident(&c.name),
                    quote_literal(comment)
                ),
                format!("restoring the comment of column {:?}", c.name),
            )
            .await?;
        }
    }

    Ok(CreateReport {
        table: name.clone(),
        time_column: ct.time_column.clone(),
        chunk_interval: ct.chunk_interval,
        rows_copied: copied,
        chunks: chunks.into_iter().map(|c| c.name).collect(),
    })
}
