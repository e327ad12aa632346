//! Tiered retention policies (spec: `add_tiered_retention_policy`).

use tokio_postgres::GenericClient;

pub use crate::catalog::retention_policies::{Policy, list_policies};
use crate::catalog::{registry, retention_policies};
use crate::error::{Error, Result};
use crate::interval::Interval;

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
    retention_policies::store_policy(client, &ct.table, tier_after, drop_after).await?;
    registry::set_tiering_enabled(client, &ct.table, tier_after.is_some()).await?;
    Ok(Policy {
        table: ct.table,
        tier_after,
        drop_after,
        synced,
    })
}
