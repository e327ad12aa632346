//! `lakets._sync_registry`: which ChronoTables are mirrored into Delta Lake, where, and
//! how far their initial copy got.

use tokio_postgres::GenericClient;
use tokio_postgres::types::PgLsn;
use url::Url;

use crate::delta::schema::Partitioning;
use crate::delta::table;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::wal::lsn::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    Copying,
    Active,
}

/// A registered sync.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncConfig {
    pub table: TableName,
    pub time_column: String,
    #[serde(serialize_with = "serialize_location")]
    pub location: Url,
    pub partitioning: Partitioning,
    /// The name this cluster's rows carry in a Delta table several clusters share (its
    /// `lakets_source` partition column); `None`: the table is this cluster's alone.
    pub source: Option<String>,
    pub state: SyncState,
    pub start_lsn: Option<Lsn>,
    pub rows_copied: i64,
    pub rows_estimate: Option<i64>,
}

impl SyncConfig {
    /// The shape of the sync's Delta table as this cluster writes it.
    pub fn shape(&self, delta: &deltalake::DeltaTable) -> Result<crate::delta::schema::TableShape> {
        crate::delta::mirror::shape_for_source(
            delta,
            &self.time_column,
            self.partitioning,
            self.source.as_deref(),
        )
    }
}

fn serialize_location<S: serde::Serializer>(url: &Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&table::display_location(url))
}

const SELECT_SYNC: &str = "SELECT s.schema_name, s.table_name, c.time_column, s.location,
        s.partitioning, s.state, s.start_lsn, s.rows_copied, s.rows_estimate,
        s.source
   FROM lakets._sync_registry s
   JOIN lakets._chronotable_registry c USING (schema_name, table_name)";

fn sync_from_row(row: &tokio_postgres::Row) -> Result<SyncConfig> {
    let location: String = row.get(3);
    Ok(SyncConfig {
        table: TableName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
        time_column: row.get(2),
        location: Url::parse(&location)
            .map_err(|e| Error::invalid(format!("registered location {location:?}: {e}")))?,
        partitioning: Partitioning::parse(row.get(4))?,
        source: row.get(9),
        state: match row.get::<_, &str>(5) {
            "active" => SyncState::Active,
            _ => SyncState::Copying,
        },
        start_lsn: row.get::<_, Option<PgLsn>>(6).map(Lsn::from),
        rows_copied: row.get(7),
        rows_estimate: row.get(8),
    })
}

pub async fn list_syncs(client: &impl GenericClient) -> Result<Vec<SyncConfig>> {
    client
        .query(&format!("{SELECT_SYNC} ORDER BY 1, 2"), &[])
        .await
        .pg_context(|| "reading the sync registry".into())?
        .iter()
        .map(sync_from_row)
        .collect()
}

pub async fn find_sync(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<Option<SyncConfig>> {
    client
        .query_opt(
            &format!("{SELECT_SYNC} WHERE s.schema_name = $1 AND s.table_name = $2"),
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| format!("reading the sync registry for {table}"))?
        .as_ref()
        .map(sync_from_row)
        .transpose()
}

/// Registers a sync whose initial copy starts (`copying`); an interrupted one registered
/// before only has its `updated_at` touched.
pub async fn register_sync(
    client: &impl GenericClient,
    table: &TableName,
    location: &Url,
    partitioning: Partitioning,
    source: Option<&str>,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._sync_registry
                    (schema_name, table_name, location, partitioning, source, state)
             VALUES ($1, $2, $3, $4, $5, 'copying')
             ON CONFLICT (schema_name, table_name) DO UPDATE SET updated_at = now()",
            &[
                &table.schema,
                &table.name,
                &location.to_string(),
                &partitioning.as_str(),
                &source,
            ],
        )
        .await
        .pg_context(|| format!("registering the sync of {table}"))?;
    Ok(())
}

/// Marks the sync of `table` active: its initial copy is committed.
pub async fn activate_sync(client: &impl GenericClient, table: &TableName) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._sync_registry SET state = 'active', updated_at = now()
              WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| format!("activating the sync of {table}"))?;
    Ok(())
}

/// Records how many rows the copy of `table` holds so far.
pub async fn record_rows_copied(
    client: &impl GenericClient,
    table: &TableName,
    rows: i64,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._sync_registry SET rows_copied = $3, updated_at = now()
              WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name, &rows],
        )
        .await
        .pg_context(|| "recording the copy".into())?;
    Ok(())
}

/// Records the position of the copy's snapshot and the rows it is estimated to hold (the
/// copy starts from zero rows).
pub async fn record_snapshot(
    client: &impl GenericClient,
    table: &TableName,
    start_lsn: Lsn,
    rows_estimate: i64,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._sync_registry
                SET start_lsn = $3, rows_estimate = $4, rows_copied = 0, updated_at = now()
              WHERE schema_name = $1 AND table_name = $2",
            &[
                &table.schema,
                &table.name,
                &PgLsn::from(start_lsn),
                &rows_estimate,
            ],
        )
        .await
        .pg_context(|| "recording the snapshot position".into())?;
    Ok(())
}

/// Forgets the sync of `table`; whether there was one.
pub async fn unregister_sync(client: &impl GenericClient, table: &TableName) -> Result<bool> {
    let n = client
        .execute(
            "DELETE FROM lakets._sync_registry WHERE schema_name = $1 AND table_name = $2",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(|| format!("unregistering the sync of {table}"))?;
    Ok(n > 0)
}

/// Forgets the snapshot of a copy whose `sync enable` died (the next one takes another).
pub async fn reset_abandoned_copy(
    client: &impl GenericClient,
    table: &TableName,
    start: Option<Lsn>,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._sync_registry SET start_lsn = NULL
              WHERE schema_name = $1 AND table_name = $2
                AND state = 'copying' AND start_lsn = $3",
            &[&table.schema, &table.name, &start.map(PgLsn::from)],
        )
        .await
        .pg_context(|| format!("resetting the abandoned copy of {table}"))?;
    Ok(())
}
