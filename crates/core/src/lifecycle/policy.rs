//! Tiered retention policies (spec: `add_tiered_retention_policy`).

use tokio_postgres::GenericClient;

use crate::catalog::registry;
use crate::error::{Error, PgResultExt, Result};
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

/// Sets (or replaces) the policy of a ChronoTable. Tiering needs the table to be synced
/// to the cold tier; a synced table's chunks are dropped only once tiered, so it needs
/// `tier_after` too; `drop_after` is at least `tier_after`.
pub async fn set_policy(
    client: &impl GenericClient,
    table: &str,
    tier_after: Option<Interval>,
    drop_after: Option<Interval>,
) -> Result<Policy> {
    crate::catalog::check_installed(client).await?;
    let ct = registry::find_chronotable(client, table).await?;
    if tier_after.is_none() && drop_after.is_none() {
        return Err(Error::invalid("give --tier-after, --drop-after or both"));
    }
    for (name, value) in [("--tier-after", tier_after), ("--drop-after", drop_after)] {
        if let Some(v) = value
            && v.as_micros() <= 0
        {
            return Err(Error::invalid(format!("{name} must be positive, got {v}")));
        }
    }
    if let (Some(t), Some(d)) = (tier_after, drop_after)
        && d.as_micros() < t.as_micros()
    {
        return Err(Error::invalid(format!(
            "--drop-after ({d}) must be at least --tier-after ({t}): a chunk leaves the hot \
             tier only after it is safe in the cold tier"
        )));
    }
    let synced = crate::coldtier::sync::find_sync(client, &ct.table)
        .await?
        .is_some_and(|s| s.state == crate::coldtier::sync::SyncState::Active);
    if tier_after.is_some() && !synced {
        return Err(Error::invalid(format!(
            "{} is not synced to the cold tier, so it cannot be tiered; run `lakets sync \
             enable {} --to URI` first (or give only --drop-after)",
            ct.table, ct.table
        )));
    }
    if synced && tier_after.is_none() {
        return Err(Error::invalid(format!(
            "{} is synced: its chunks are dropped only after they are tiered, so give \
             --tier-after too",
            ct.table
        )));
    }
    client
        .execute(
            "INSERT INTO lakets._retention_policies (schema_name, table_name, tier_after, drop_after)
             VALUES ($1, $2, $3::text::interval, $4::text::interval)
             ON CONFLICT (schema_name, table_name) DO UPDATE
                SET tier_after = excluded.tier_after, drop_after = excluded.drop_after,
                    updated_at = now()",
            &[
                &ct.table.schema,
                &ct.table.name,
                &tier_after.map(|i| i.to_postgres()),
                &drop_after.map(|i| i.to_postgres()),
            ],
        )
        .await
        .pg_context(|| format!("storing the policy of {}", ct.table))?;
    client
        .execute(
            "UPDATE lakets._chronotable_registry SET tiering_enabled = $3
              WHERE schema_name = $1 AND table_name = $2",
            &[&ct.table.schema, &ct.table.name, &tier_after.is_some()],
        )
        .await
        .pg_context(|| format!("marking {} tiered", ct.table))?;
    Ok(Policy {
        table: ct.table,
        tier_after,
        drop_after,
        synced,
    })
}

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
