//! `lakets._lvc_registry`: the Last Value Caches, their columns, and the WAL position each
//! was filled as of. (The caches themselves, `lakets.lvc_<table>`, are the feature's.)

use tokio_postgres::GenericClient;

use crate::error::{PgResultExt, Result};
use crate::ident::TableName;
use crate::wal::lsn::Lsn;

/// The schema of the cache tables (the registry stores their names alone).
const CACHE_SCHEMA: &str = "lakets";

/// A registered cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LvcConfig {
    pub table: TableName,
    pub time_column: String,
    pub key_columns: Vec<String>,
    pub value_columns: Vec<String>,
    pub cache_table: TableName,
    pub start_lsn: Lsn,
}

impl LvcConfig {
    /// Cache columns in order: keys, time, values (then `lsn`).
    pub fn cache_columns(&self) -> Vec<&str> {
        self.key_columns
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.time_column.as_str()))
            .chain(self.value_columns.iter().map(String::as_str))
            .collect()
    }
}

/// All registered caches.
pub async fn list_lvc(client: &impl GenericClient) -> Result<Vec<LvcConfig>> {
    let rows = client
        .query(
            "SELECT l.schema_name, l.table_name, r.time_column, l.key_columns, l.value_columns,
                    l.cache_table, l.start_lsn::text
               FROM lakets._lvc_registry l
               JOIN lakets._chronotable_registry r USING (schema_name, table_name)
              ORDER BY 1, 2",
            &[],
        )
        .await
        .pg_context(|| "reading the LVC registry".into())?;
    rows.iter()
        .map(|r| {
            Ok(LvcConfig {
                table: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                time_column: r.get(2),
                key_columns: r.get(3),
                value_columns: r.get(4),
                cache_table: TableName::new(CACHE_SCHEMA, r.get::<_, String>(5)),
                start_lsn: r.get::<_, String>(6).parse()?,
            })
        })
        .collect()
}

/// Whether `table` has a registered cache.
pub async fn is_registered(client: &impl GenericClient, table: &TableName) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM lakets._lvc_registry WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| "reading the LVC registry".into())?
        .is_some())
}

/// Whether `table`'s cache is still registered, holding its registry row (FOR KEY SHARE)
/// to the end of the caller's transaction: `lvc disable` waits for it.
pub async fn hold_registration(client: &impl GenericClient, table: &TableName) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM lakets._lvc_registry
              WHERE schema_name = $1 AND table_name = $2 FOR KEY SHARE",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| "reading the LVC registry".into())?
        .is_some())
}

/// Registers the cache of `table`, filled as of `start_lsn` (LSN text).
pub async fn register(
    client: &impl GenericClient,
    table: &TableName,
    key_columns: &[String],
    value_columns: &[String],
    cache_table: &TableName,
    start_lsn: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._lvc_registry
                 (schema_name, table_name, key_columns, value_columns, cache_table, start_lsn)
             VALUES ($1, $2, $3, $4, $5, $6::text::pg_lsn)",
            &[
                &table.schema,
                &table.name,
                &key_columns,
                &value_columns,
                &cache_table.name,
                &start_lsn,
            ],
        )
        .await
        .pg_context(|| "registering the cache".into())?;
    Ok(())
}

/// Forgets the cache of `table`; its cache table, if it had one.
pub async fn unregister(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<Option<TableName>> {
    Ok(client
        .query_opt(
            "DELETE FROM lakets._lvc_registry WHERE schema_name = $1 AND table_name = $2
             RETURNING cache_table",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| "unregistering the cache".into())?
        .map(|r| TableName::new(CACHE_SCHEMA, r.get::<_, String>(0))))
}

/// The cache table of `table`, if it has a cache.
pub async fn cache_table_of(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<Option<TableName>> {
    Ok(client
        .query_opt(
            "SELECT cache_table FROM lakets._lvc_registry WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| format!("looking up the Last Value Cache of {table}"))?
        .map(|r| TableName::new(CACHE_SCHEMA, r.get::<_, String>(0))))
}

/// Records that the cache of `table` was refilled as of `start_lsn` (LSN text).
pub async fn record_refill(
    client: &impl GenericClient,
    table: &TableName,
    start_lsn: &str,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._lvc_registry SET start_lsn = $3::text::pg_lsn
              WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name, &start_lsn],
        )
        .await
        .pg_context(|| "recording the refill position".into())?;
    Ok(())
}
