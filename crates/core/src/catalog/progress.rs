//! `lakets._sink_progress`: the durable LSN of Postgres-side operators, written in the same
//! SQL transaction as their effects.

use tokio_postgres::GenericClient;
use tokio_postgres::types::PgLsn;

use crate::error::{PgResultExt, Result};
use crate::wal::lsn::Lsn;

pub async fn load(client: &impl GenericClient, slot: &str, operator: &str) -> Result<Lsn> {
    let row = client
        .query_opt(
            "SELECT durable_lsn FROM lakets._sink_progress WHERE slot_name = $1 AND operator = $2",
            &[&slot, &operator],
        )
        .await
        .pg_context(|| format!("reading the progress of operator {operator}"))?;
    Ok(row
        .map(|r| Lsn::from(r.get::<_, PgLsn>(0)))
        .unwrap_or(Lsn::ZERO))
}

/// The durable LSN and the configuration an operator stored with it (`None`: none stored).
pub async fn load_with_config(
    client: &impl GenericClient,
    slot: &str,
    operator: &str,
) -> Result<(Lsn, Option<serde_json::Value>)> {
    let row = client
        .query_opt(
            "SELECT durable_lsn, config FROM lakets._sink_progress
              WHERE slot_name = $1 AND operator = $2",
            &[&slot, &operator],
        )
        .await
        .pg_context(|| format!("reading the progress of operator {operator}"))?;
    Ok(match row {
        Some(r) => (Lsn::from(r.get::<_, PgLsn>(0)), r.get(1)),
        None => (Lsn::ZERO, None),
    })
}

/// [`store`], with the configuration the operator applied up to `lsn`.
pub async fn store_with_config(
    client: &impl GenericClient,
    slot: &str,
    operator: &str,
    lsn: Lsn,
    config: &serde_json::Value,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._sink_progress (slot_name, operator, durable_lsn, config)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (slot_name, operator)
             DO UPDATE SET durable_lsn = excluded.durable_lsn, config = excluded.config,
                           updated_at = now()",
            &[&slot, &operator, &PgLsn::from(lsn), config],
        )
        .await
        .pg_context(|| format!("recording the progress of operator {operator}"))?;
    Ok(())
}

pub async fn store(
    client: &impl GenericClient,
    slot: &str,
    operator: &str,
    lsn: Lsn,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._sink_progress (slot_name, operator, durable_lsn)
             VALUES ($1, $2, $3)
             ON CONFLICT (slot_name, operator)
             DO UPDATE SET durable_lsn = excluded.durable_lsn, updated_at = now()",
            &[&slot, &operator, &PgLsn::from(lsn)],
        )
        .await
        .pg_context(|| format!("recording the progress of operator {operator}"))?;
    Ok(())
}

/// An operator's stored progress through one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProgress {
    pub operator: String,
    pub durable_lsn: Lsn,
    /// When it was stored: UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub updated_at: Option<String>,
}

/// The progress every operator stored through `slot`, by operator.
pub async fn list_for_slot(client: &impl GenericClient, slot: &str) -> Result<Vec<StoredProgress>> {
    Ok(client
        .query(
            "SELECT operator, durable_lsn, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM lakets._sink_progress WHERE slot_name = $1 ORDER BY operator",
            &[&slot],
        )
        .await
        .pg_context(|| "reading operator progress".into())?
        .iter()
        .map(|r| StoredProgress {
            operator: r.get(0),
            durable_lsn: Lsn::from(r.get::<_, PgLsn>(1)),
            updated_at: r.get(2),
        })
        .collect())
}

/// A logical slot of this database that lakets' operators store progress through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedSlot {
    pub slot: String,
    /// A walsender streams from it.
    pub active: bool,
    /// What the consumer confirmed: every operator's durable position (or a heartbeat past).
    pub confirmed_flush_lsn: Option<Lsn>,
}

/// Every slot of this database with stored operator progress, by name.
pub async fn tracked_slots(client: &impl GenericClient) -> Result<Vec<TrackedSlot>> {
    Ok(client
        .query(
            "SELECT s.slot_name::text, s.active, s.confirmed_flush_lsn
               FROM pg_replication_slots s
              WHERE s.database = current_database() AND s.slot_type = 'logical'
                AND EXISTS (SELECT 1 FROM lakets._sink_progress p
                             WHERE p.slot_name = s.slot_name)
              ORDER BY 1",
            &[],
        )
        .await
        .pg_context(|| "reading lakets' slots".into())?
        .iter()
        .map(|r| TrackedSlot {
            slot: r.get(0),
            active: r.get(1),
            confirmed_flush_lsn: r.get::<_, Option<PgLsn>>(2).map(Lsn::from),
        })
        .collect())
}

/// Forgets the progress of every operator through `slot` (a throwaway slot, dropped).
pub async fn forget_slot(client: &impl GenericClient, slot: &str) -> Result<()> {
    client
        .execute(
            "DELETE FROM lakets._sink_progress WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .pg_context(|| format!("forgetting the progress of slot {slot}"))?;
    Ok(())
}
