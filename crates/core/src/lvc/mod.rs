//! The Last Value Cache: the latest row per key of a ChronoTable (spec: `enable_lvc`).
//!
//! `lakets.lvc_<table>` holds, per key, the time column, the chosen value columns and the
//! LSN of the transaction that set them; the WAL operator in
//! [`crate::lvc::operator`] keeps it current (no trigger on the write path).
//! Reading the latest price is a primary-key lookup.

pub mod operator;
pub mod view;

use serde_json::Value as Json;
use tokio_postgres::{Client, GenericClient};
use tracing::info;

use crate::catalog::announce::{Announcement, announce};
use crate::catalog::lvc_registry;
pub use crate::catalog::lvc_registry::{LvcConfig, list_lvc};
use crate::catalog::registry;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::{TableName, parse_identifier, quote_ident};
use crate::wal::lsn::Lsn;

pub fn cache_table_name(table: &TableName) -> TableName {
    TableName::new("lakets", format!("lvc_{}", table.name))
}

/// `enable_lvc`: creates the cache table, fills it from the table as it is now, and
/// registers it. Writers are held off (SHARE lock) for the length of the initial fill, so
/// the fill and the stream meet exactly at the recorded position.
pub async fn enable_lvc(
    client: &mut Client,
    table: &str,
    key_columns: &[String],
    value_columns: &[String],
) -> Result<LvcConfig> {
    crate::catalog::check_installed(&*client).await?;
    let ct = registry::find_chronotable(&*client, table).await?;
    let parse_all = |cols: &[String]| -> Result<Vec<String>> {
        cols.iter().map(|c| parse_identifier(c.trim())).collect()
    };
    let keys = parse_all(key_columns)?;
    let values = parse_all(value_columns)?;
    if keys.is_empty() {
        return Err(Error::invalid("the cache needs at least one --key column"));
    }
    let mut all: Vec<&String> = keys.iter().chain(values.iter()).collect();
    all.sort();
    all.dedup();
    if all.len() != keys.len() + values.len() {
        return Err(Error::invalid(
            "a column is named twice in --key and --columns",
        ));
    }
    if keys.contains(&ct.time_column) || values.contains(&ct.time_column) {
        return Err(Error::invalid(format!(
            "the time column {:?} is always cached; do not list it in --key or --columns",
            ct.time_column
        )));
    }

    // Every check that needs no slot comes first: a refused request changes nothing.
    crate::chronotable::replica_identity::require_chunks_match(
        &*client,
        &ct.table,
        "the Last Value Cache",
    )
    .await?;
    // Column types, NOT NULL, and whether the key travels with updates and deletes.
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    a.attnum = ANY (coalesce((SELECT i.indkey::int2[] FROM pg_index i
                                               WHERE i.indrelid = c.oid
                                                 AND (i.indisreplident OR (c.relreplident = 'd' AND i.indisprimary))), '{}')),
                    c.relreplident::text
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[&ct.table.quoted()],
        )
        .await
        .pg_context(|| format!("reading the columns of {}", ct.table))?;
    let column = |name: &str| rows.iter().find(|r| r.get::<_, String>(0) == name);
    let mut definitions = Vec::new();
    for (name, is_key) in keys
        .iter()
        .map(|k| (k, true))
        .chain(std::iter::once((&ct.time_column, false)))
        .chain(values.iter().map(|v| (v, false)))
    {
        let row = column(name)
            .ok_or_else(|| Error::invalid(format!("{} has no column {name:?}", ct.table)))?;
        let sql_type: String = row.get(1);
        if is_key {
            if !row.get::<_, bool>(2) {
                return Err(Error::invalid(format!(
                    "key column {name:?} of {} may be NULL; a cache key must be NOT NULL \
                     (ALTER TABLE ... ALTER COLUMN {name} SET NOT NULL)",
                    ct.table
                )));
            }
            let identity: String = row.get(4);
            if identity != "f" && !row.get::<_, bool>(3) {
                return Err(Error::invalid(format!(
                    "key column {name:?} is not part of the replica identity of {}, so an \
                     update moving a row to another key could not be followed; include it \
                     in the primary key or set REPLICA IDENTITY FULL on the table and its \
                     chunks (`lakets chronotable replica-identity {} full`)",
                    ct.table, ct.table
                )));
            }
        }
        definitions.push(format!("{} {sql_type}", quote_ident(name)));
    }
    // The cache is filled as of a WAL position; every change after it must be in a slot.
    crate::catalog::replication::ensure_default_consumer(&*client).await?;
    let tx = client
        .transaction()
        .await
        .pg_context(|| "starting a transaction".into())?;
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")
        .await
        .pg_context(|| "setting lock_timeout".into())?;
    if lvc_registry::is_registered(&tx, &ct.table).await? {
        return Err(Error::Conflict(format!(
            "{} already has a Last Value Cache",
            ct.table
        )));
    }

    definitions.push("lsn pg_lsn NOT NULL".into());
    let cache = cache_table_name(&ct.table);
    let key_list = keys
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    tx.batch_execute(&format!(
        "CREATE TABLE {cache} ({}, PRIMARY KEY ({key_list}))",
        definitions.join(", "),
        cache = cache.quoted()
    ))
    .await
    .pg_context(|| format!("creating the cache table {cache}"))?;
    let cache_columns: Vec<&str> = keys
        .iter()
        .chain(std::iter::once(&ct.time_column))
        .chain(values.iter())
        .map(String::as_str)
        .collect();
    let (filled, start) = fill_as_of_now(
        &tx,
        &ct.table,
        &cache,
        &keys,
        &ct.time_column,
        &cache_columns,
    )
    .await?;
    lvc_registry::register(&tx, &ct.table, &keys, &values, &cache, &start).await?;
    announce(
        &tx,
        &Announcement::LvcEnabled {
            table: ct.table.clone(),
        },
    )
    .await?;
    tx.commit()
        .await
        .pg_context(|| "committing the cache".into())?;
    info!(table = %ct.table, keys = filled, "Last Value Cache enabled");
    Ok(LvcConfig {
        table: ct.table,
        time_column: ct.time_column,
        key_columns: keys,
        value_columns: values,
        cache_table: cache,
        start_lsn: start.parse()?,
    })
}

/// Holds writes to `source` off (a SHARE lock, to the end of `tx`), reads the WAL position,
/// and fills `cache` with the latest row per key as of it: the stream takes over from that
/// position exactly. Returns the keys filled and the position.
async fn fill_as_of_now(
    tx: &tokio_postgres::Transaction<'_>,
    source: &TableName,
    cache: &TableName,
    key_columns: &[String],
    time_column: &str,
    cache_columns: &[&str],
) -> Result<(u64, String)> {
    tx.batch_execute(&format!("LOCK TABLE {} IN SHARE MODE", source.quoted()))
        .await
        .pg_context(|| format!("holding writes to {source} to fill its cache"))?;
    let start: String = tx
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .pg_context(|| "reading the WAL position".into())?
        .get(0);
    let keys: Vec<String> = key_columns.iter().map(|k| quote_ident(k)).collect();
    let columns: Vec<String> = cache_columns.iter().map(|c| quote_ident(c)).collect();
    let filled = tx
        .execute(
            &format!(
                "INSERT INTO {cache} ({columns}, lsn)
                 SELECT DISTINCT ON ({keys}) {columns}, $1::text::pg_lsn
                   FROM {source} ORDER BY {keys}, {time} DESC",
                cache = cache.quoted(),
                columns = columns.join(", "),
                keys = keys.join(", "),
                source = source.quoted(),
                time = quote_ident(time_column),
            ),
            &[&start],
        )
        .await
        .pg_context(|| format!("filling the cache of {source}"))?;
    Ok((filled, start))
}

/// `"k1" = $1::text::<type> AND ...` for a key given as text (one part per key column,
/// cast to its column's type: compared as typed values, whatever the session's TimeZone
/// or float formatting), and the matching parameters.
pub fn key_predicate<'a>(
    key_columns: &[String],
    key_types: &[String],
    key: &'a [String],
) -> (String, Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>) {
    let predicate = key_columns
        .iter()
        .zip(key_types)
        .enumerate()
        .map(|(i, (k, ty))| format!("{} = ${}::text::{ty}", quote_ident(k), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let params = key
        .iter()
        .map(|k| k as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    (predicate, params)
}

/// The SQL types of a cache's key columns.
async fn key_types(client: &impl GenericClient, config: &LvcConfig) -> Result<Vec<String>> {
    let mut types = Vec::with_capacity(config.key_columns.len());
    for key in &config.key_columns {
        let ty: String = client
            .query_one(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                  WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
                &[&config.cache_table.quoted(), key],
            )
            .await
            .pg_context(|| format!("reading the type of key column {key:?}"))?
            .get(0);
        types.push(ty);
    }
    Ok(types)
}

/// `lakets lvc disable`: drops a table's Last Value Cache. The stream stops keeping it at
/// exactly this transaction.
pub async fn disable_lvc(client: &mut Client, table: &str) -> Result<()> {
    crate::catalog::check_installed(&*client).await?;
    let ct = registry::find_chronotable(&*client, table).await?;
    let tx = client
        .transaction()
        .await
        .pg_context(|| "starting a transaction".into())?;
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")
        .await
        .pg_context(|| "setting lock_timeout".into())?;
    let Some(cache) = lvc_registry::unregister(&tx, &ct.table).await? else {
        return Err(Error::NotFound {
            kind: "Last Value Cache of",
            name: ct.table.to_string(),
        });
    };
    tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", cache.quoted()))
        .await
        .pg_context(|| format!("dropping the cache table of {}", ct.table))?;
    announce(
        &tx,
        &Announcement::LvcDisabled {
            table: ct.table.clone(),
        },
    )
    .await?;
    tx.commit()
        .await
        .pg_context(|| "committing the end of the cache".into())?;
    info!(table = %ct.table, "Last Value Cache disabled");
    Ok(())
}

/// Refills a registered cache from its table, as of a WAL position recorded while writers
/// are held off (`lakets resync`: the stream missed changes, so the cache cannot be
/// trusted). The stream then applies only changes after that position. One transaction.
pub async fn refill(client: &mut Client, config: &LvcConfig) -> Result<(u64, Lsn)> {
    let tx = client
        .transaction()
        .await
        .pg_context(|| "starting a transaction".into())?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '10s'; DELETE FROM {}",
        config.cache_table.quoted()
    ))
    .await
    .pg_context(|| format!("emptying the cache of {}", config.table))?;
    let (filled, start) = fill_as_of_now(
        &tx,
        &config.table,
        &config.cache_table,
        &config.key_columns,
        &config.time_column,
        &config.cache_columns(),
    )
    .await?;
    lvc_registry::record_refill(&tx, &config.table, &start).await?;
    announce(
        &tx,
        &Announcement::LvcRefilled {
            table: config.table.clone(),
        },
    )
    .await?;
    tx.commit()
        .await
        .pg_context(|| format!("committing the refill of {}", config.table))?;
    info!(table = %config.table, keys = filled, start_lsn = %start, "Last Value Cache refilled");
    Ok((filled, start.parse()?))
}

/// `lakets lvc get`: the cached row for a key (one value per key column, as text), as JSON.
pub async fn get_lvc(
    client: &impl GenericClient,
    table: &str,
    key: &[String],
) -> Result<Option<Json>> {
    let ct = registry::find_chronotable(client, table).await?;
    let config = list_lvc(client)
        .await?
        .into_iter()
        .find(|c| c.table == ct.table)
        .ok_or_else(|| Error::NotFound {
            kind: "Last Value Cache of",
            name: ct.table.to_string(),
        })?;
    if key.len() != config.key_columns.len() {
        return Err(Error::invalid(format!(
            "the cache of {} is keyed by {} column(s) ({}); {} value(s) given",
            ct.table,
            config.key_columns.len(),
            config.key_columns.join(", "),
            key.len()
        )));
    }
    let types = key_types(client, &config).await?;
    let (predicate, params) = key_predicate(&config.key_columns, &types, key);
    let row = client
        .query_opt(
            &format!(
                "SELECT row_to_json(c)::text FROM {} c WHERE {predicate}",
                config.cache_table.quoted()
            ),
            &params,
        )
        .await
        .pg_context(|| format!("reading the cache of {}", ct.table))?;
    row.map(|r| {
        serde_json::from_str(&r.get::<_, String>(0))
            .map_err(|e| Error::Protocol(format!("cache row is not JSON: {e}")))
    })
    .transpose()
}
