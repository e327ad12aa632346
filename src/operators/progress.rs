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
