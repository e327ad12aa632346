//! `lakets._retention_policies`: when each ChronoTable's chunks are tiered and dropped.

use tokio_postgres::GenericClient;

use crate::error::{PgResultExt, Result};
use crate::ident::TableName;
use crate::interval::Interval;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Policy {
    pub table: TableName,
    /// Chunks older than this move to the cold tier (synced tables).
    pub tier_after: Option<Interval>,
    /// Chunks older than this leave the hot tier (synced tables: once tiered).
    pub drop_after: Option<Interval>,
    pub synced: bool,
}

/// Stores (or replaces) the policy of `table`.
pub async fn store_policy(
    client: &impl GenericClient,
    table: &TableName,
    tier_after: Option<Interval>,
    drop_after: Option<Interval>,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._retention_policies (schema_name, table_name, tier_after, drop_after)
             VALUES ($1, $2, $3::text::interval, $4::text::interval)
             ON CONFLICT (schema_name, table_name) DO UPDATE
                SET tier_after = excluded.tier_after, drop_after = excluded.drop_after,
                    updated_at = now()",
            &[
                &table.schema,
                &table.name,
                &tier_after.map(|i| i.to_postgres()),
                &drop_after.map(|i| i.to_postgres()),
            ],
        )
        .await
        .pg_context(|| format!("storing the policy of {table}"))?;
    Ok(())
}

/// Every policy, by table, with whether the table's sync is active.
pub async fn list_policies(client: &impl GenericClient) -> Result<Vec<Policy>> {
    let rows = client
        .query(
            "SELECT p.schema_name, p.table_name,
                    (extract(epoch FROM p.tier_after) * 1000000)::bigint,
                    (extract(epoch FROM p.drop_after) * 1000000)::bigint,
                    EXISTS (SELECT 1 FROM lakets._sync_registry s
                             WHERE s.schema_name = p.schema_name AND s.table_name = p.table_name
                               AND s.state = 'active')
               FROM lakets._retention_policies p ORDER BY 1, 2",
            &[],
        )
        .await
        .pg_context(|| "reading the retention policies".into())?;
    rows.iter()
        .map(|r| {
            Ok(Policy {
                table: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                tier_after: r.get::<_, Option<i64>>(2).map(Interval::from_micros),
                drop_after: r.get::<_, Option<i64>>(3).map(Interval::from_micros),
                synced: r.get(4),
            })
        })
        .collect()
}
