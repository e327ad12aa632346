//! Creating chunks, and `_ensure_partitions`: keeping the rolling window provisioned.
//!
//! A chunk is created as a plain table shaped like the parent and then attached. ATTACH
//! PARTITION takes only a SHARE UPDATE EXCLUSIVE lock on the parent (CREATE TABLE ...
//! PARTITION OF takes ACCESS EXCLUSIVE), so provisioning never blocks the writers of the
//! current chunk. Every chunk gets the parent's replica identity, which the WAL consumer
//! needs to see the old row of updates and deletes.

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient};
use tracing::info;

use super::bounds::{self, ChunkRange};
use crate::catalog::migrations::TABLE_LOCK_NAMESPACE;
use crate::catalog::registry::{self, ChronoTable};
use crate::error::{Error, PgResultExt, Result};
use crate::ident::{TableName, quote_ident};

/// How long DDL may wait for a lock before giving up (and retrying on the next run).
pub const DDL_LOCK_TIMEOUT: &str = "5s";

/// The current time according to the database, in microseconds since the epoch.
pub async fn db_now(client: &impl GenericClient) -> Result<i64> {
    Ok(client
        .query_one(
            "SELECT (extract(epoch FROM statement_timestamp()) * 1000000)::bigint",
            &[],
        )
        .await
        .pg_context(|| "reading the database clock".into())?
        .get(0))
}

/// `now` as given, or the database's clock.
pub async fn now_or_db(client: &impl GenericClient, at: Option<DateTime<Utc>>) -> Result<i64> {
    match at {
        Some(t) => Ok(t.timestamp_micros()),
        None => db_now(client).await,
    }
}

/// Serializes partition DDL per table across sessions (transaction-scoped).
pub async fn lock_table_ddl(client: &impl GenericClient, table: &TableName) -> Result<()> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&TABLE_LOCK_NAMESPACE, &table.quoted()],
        )
        .await
        .pg_context(|| format!("taking the partition lock of {table}"))?;
    Ok(())
}

/// A transaction for partition DDL on `table`: bounded lock waits and the table's advisory
/// lock, so that DDL on one table never runs twice at once nor stalls behind writers.
pub async fn ddl_transaction<'a>(
    client: &'a mut Client,
    table: &TableName,
) -> Result<tokio_postgres::Transaction<'a>> {
    let tx = client
        .transaction()
        .await
        .pg_context(|| "starting a transaction".into())?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
        .await
        .pg_context(|| "setting lock_timeout".into())?;
    lock_table_ddl(&tx, table).await?;
    Ok(tx)
}

/// Creates, attaches and registers one chunk. With `with_identity`, also applies the
/// parent's replica identity (the conversion does that once its indexes exist).
pub async fn create_chunk(
    client: &impl GenericClient,
    ct: &ChronoTable,
    range: ChunkRange,
    with_identity: bool,
) -> Result<TableName> {
    let name = bounds::chunk_name(&ct.table.name, range.start)?;
    let chunk = ct.table.sibling(name);
    let from = bounds::bound_literal(ct.time_type, range.start)?;
    let to = bounds::bound_literal(ct.time_type, range.end)?;
    let sql = format!(
        "CREATE TABLE {chunk} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS \
             INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION);
         ALTER TABLE {parent} ATTACH PARTITION {chunk} FOR VALUES FROM ({from}) TO ({to});",
        chunk = chunk.quoted(),
        parent = ct.table.quoted(),
    );
    client
        .batch_execute(&sql)
        .await
        .pg_context(|| format!("creating chunk {chunk} for [{from}, {to})"))?;
    match_parent_owner(client, &ct.table, &chunk).await?;
    if with_identity {
        apply_replica_identity(client, &ct.table, &chunk).await?;
    }
    registry::insert_chunk(
        client,
        &ct.table,
        &chunk.name,
        bounds::to_datetime(range.start)?,
        bounds::to_datetime(range.end)?,
    )
    .await?;
    Ok(chunk)
}

async fn match_parent_owner(
    client: &impl GenericClient,
    parent: &TableName,
    chunk: &TableName,
) -> Result<()> {
    let owner: Option<String> = client
        .query_one(
            "SELECT CASE WHEN c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
                         THEN pg_get_userbyid(c.relowner)::text END
               FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&parent.quoted()],
        )
        .await
        .pg_context(|| format!("reading the owner of {parent}"))?
        .get(0);
    if let Some(owner) = owner {
        client
            .batch_execute(&format!(
                "ALTER TABLE {} OWNER TO {}",
                chunk.quoted(),
                quote_ident(&owner)
            ))
            .await
            .pg_context(|| format!("giving chunk {chunk} to the table owner {owner}"))?;
    }
    Ok(())
}

/// Gives a chunk the replica identity of its parent. Logical decoding logs old rows per
/// leaf table, so the chunk's setting is the one that counts.
pub async fn apply_replica_identity(
    client: &impl GenericClient,
    parent: &TableName,
    chunk: &TableName,
) -> Result<()> {
    let row = client
        .query_one(
            "SELECT p.relreplident::text,
                    (SELECT ci.relname::text
                       FROM pg_index pi
                       JOIN pg_inherits inh ON inh.inhparent = pi.indexrelid
                       JOIN pg_index chi ON chi.indexrelid = inh.inhrelid
                       JOIN pg_class ci ON ci.oid = chi.indexrelid
                      WHERE pi.indrelid = p.oid AND pi.indisreplident AND chi.indrelid = $2::text::regclass)
               FROM pg_class p WHERE p.oid = $1::text::regclass",
            &[&parent.quoted(), &chunk.quoted()],
        )
        .await
        .pg_context(|| format!("reading the replica identity of {parent}"))?;
    let identity: String = row.get(0);
    let clause = match identity.as_str() {
        "f" => "FULL".to_owned(),
        "n" => "NOTHING".to_owned(),
        "i" => {
            let index: Option<String> = row.get(1);
            let index = index.ok_or_else(|| {
                Error::NotReady(format!(
                    "{parent} uses a replica identity index that chunk {chunk} has no copy of"
                ))
            })?;
            format!("USING INDEX {}", quote_ident(&index))
        }
        _ => "DEFAULT".to_owned(), // the chunk's primary key, created by ATTACH
    };
    client
        .batch_execute(&format!(
            "ALTER TABLE {} REPLICA IDENTITY {clause}",
            chunk.quoted()
        ))
        .await
        .pg_context(|| format!("setting the replica identity of chunk {chunk}"))?;
    Ok(())
}

/// What `ensure_partitions` did for one table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnsureReport {
    pub table: TableName,
    pub created: Vec<String>,
}

/// `_ensure_partitions`: pre-creates the window of chunks ahead of `at` (default: the
/// database clock) for one ChronoTable, or for all when `table` is `None`. Idempotent and
/// safe to run concurrently: each table is handled under its advisory lock.
pub async fn ensure_partitions(
    client: &mut Client,
    table: Option<&str>,
    at: Option<DateTime<Utc>>,
) -> Result<Vec<EnsureReport>> {
    crate::catalog::check_installed(&*client).await?;
    let tables = match table {
        Some(name) => vec![registry::find_chronotable(&*client, name).await?],
        None => registry::list_chronotables(&*client).await?,
    };
    let mut reports = Vec::new();
    for ct in tables {
        reports.push(ensure_table_partitions(client, &ct.table, at).await?);
    }
    Ok(reports)
}

async fn ensure_table_partitions(
    client: &mut Client,
    table: &TableName,
    at: Option<DateTime<Utc>>,
) -> Result<EnsureReport> {
    let tx = ddl_transaction(client, table).await?;
    // Re-read under the lock: the interval may have changed, another run may have finished.
    let ct = registry::get_chronotable(&tx, table)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "ChronoTable",
            name: table.to_string(),
        })?;
    let newest_end = registry::chunk_ranges(&tx, table)
        .await?
        .iter()
        .map(|c| c.end_micros)
        .max();
    let now = now_or_db(&tx, at).await?;
    let plan = bounds::plan_window_chunks(newest_end, now, ct.chunk_interval, ct.premake);
    if plan.len() > bounds::MAX_CHUNKS_PER_OPERATION {
        return Err(Error::invalid(format!(
            "provisioning {table} would create {} chunks at once (more than {}); raise the \
             chunk interval",
            plan.len(),
            bounds::MAX_CHUNKS_PER_OPERATION
        )));
    }
    let mut created = Vec::new();
    for range in plan {
        let chunk = create_chunk(&tx, &ct, range, true).await?;
        created.push(chunk.name);
    }
    tx.commit()
        .await
        .pg_context(|| format!("committing new chunks of {table}"))?;
    if !created.is_empty() {
        info!(table = %table, chunks = created.len(), "pre-created chunks");
    }
    Ok(EnsureReport {
        table: table.clone(),
        created,
    })
}
