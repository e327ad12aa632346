//! `lakets._instances` and `lakets._leaders`: the `lakets run` processes of a stream, and
//! which one of them streams and runs the jobs (the others stand by).
//!
//! The leader holds a lease it renews; a standby takes the lead when the lease has
//! expired (a leader stopped or cut off) or at once when the leader's own session is gone
//! from the server (a leader killed: its connection closed). Each takeover raises the
//! epoch. The new leader then ends every session of the one it deposed, so a process that
//! resumes after a freeze finds its transactions rolled back and its stream closed.

use tokio_postgres::GenericClient;

use crate::error::{PgResultExt, Result};

/// One process of a stream, as `lakets status` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Instance {
    pub instance: String,
    /// `active` (streams and runs the jobs) or `standby`.
    pub role: &'static str,
    /// The active one's epoch: how many times the lead has changed hands.
    pub epoch: Option<i64>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_age_seconds: f64,
}

/// Records `instance` (whose sessions carry `application`) as a process of `slot`, the
/// calling session as its leadership session; refreshes its heartbeat.
pub async fn heartbeat(
    client: &impl GenericClient,
    slot: &str,
    instance: &str,
    application: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._instances (slot_name, instance, application, backend_pid)
             VALUES ($1, $2, $3, pg_backend_pid())
             ON CONFLICT (slot_name, instance) DO UPDATE
               SET application = excluded.application, backend_pid = excluded.backend_pid,
                   heartbeat_at = now()",
            &[&slot, &instance, &application],
        )
        .await
        .pg_context(|| format!("recording instance {instance} of stream {slot}"))?;
    Ok(())
}

/// The lead of `slot`, taken by `instance` for `lease_ms`: granted when nobody leads,
/// the lease has expired, or the leader's leadership session is gone. Returns the new
/// epoch and the instance it took the lead from (`None` when nobody led, or it was
/// `instance` itself before a restart of its session).
pub async fn try_lead(
    client: &impl GenericClient,
    slot: &str,
    instance: &str,
    lease_ms: i64,
) -> Result<Option<(i64, Option<String>)>> {
    let row = client
        .query_opt(
            "WITH previous AS (
               SELECT l.instance FROM lakets._leaders l WHERE l.slot_name = $1
             )
             INSERT INTO lakets._leaders AS l (slot_name, instance, epoch, expires_at)
             VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond')
             ON CONFLICT (slot_name) DO UPDATE
               SET instance = excluded.instance, epoch = l.epoch + 1, since = now(),
                   expires_at = excluded.expires_at
             WHERE l.expires_at < now()
                OR NOT EXISTS (
                  SELECT 1 FROM lakets._instances i
                    JOIN pg_catalog.pg_stat_activity a ON a.pid = i.backend_pid
                   WHERE i.slot_name = l.slot_name AND i.instance = l.instance)
             RETURNING l.epoch, (SELECT instance FROM previous)",
            &[&slot, &instance, &(lease_ms as f64)],
        )
        .await
        .pg_context(|| format!("taking the lead of stream {slot}"))?;
    Ok(row.map(|r| {
        let previous: Option<String> = r.get(1);
        (r.get(0), previous.filter(|p| p != instance))
    }))
}

/// Extends the lease of `instance` at `epoch`; false when it no longer leads.
pub async fn renew(
    client: &impl GenericClient,
    slot: &str,
    instance: &str,
    epoch: i64,
    lease_ms: i64,
) -> Result<bool> {
    let renewed = client
        .execute(
            "UPDATE lakets._leaders SET expires_at = now() + $4 * interval '1 millisecond'
              WHERE slot_name = $1 AND instance = $2 AND epoch = $3",
            &[&slot, &instance, &epoch, &(lease_ms as f64)],
        )
        .await
        .pg_context(|| format!("renewing the lead of stream {slot}"))?;
    Ok(renewed == 1)
}

/// Ends every session of `deposed` (its stream, its transactions), and whatever still
/// streams `slot`, and forgets the instance; returns how many sessions went. Only sessions of roles this one is a member of
/// can be ended: others stay until the lease and `wal_sender_timeout` end them.
pub async fn fence(client: &impl GenericClient, slot: &str, deposed: &str) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(a.pid))
               FROM pg_catalog.pg_stat_activity a
              WHERE a.pid <> pg_backend_pid()
                AND pg_catalog.pg_has_role(a.usesysid, 'MEMBER')
                AND (a.application_name IN (SELECT application FROM lakets._instances
                                             WHERE slot_name = $1 AND instance = $2)
                     OR a.pid IN (SELECT active_pid FROM pg_catalog.pg_replication_slots
                                   WHERE slot_name = $1))",
            &[&slot, &deposed],
        )
        .await
        .pg_context(|| format!("ending the sessions of deposed instance {deposed}"))?;
    // Listed no more; a frozen one that resumes records itself again, as a standby.
    client
        .execute(
            "DELETE FROM lakets._instances WHERE slot_name = $1 AND instance = $2",
            &[&slot, &deposed],
        )
        .await
        .pg_context(|| format!("forgetting deposed instance {deposed}"))?;
    Ok(row.get(0))
}

/// Gives the lead up (a clean stop): its lease ends now, so a standby takes it at its next
/// look, and the instance's row goes.
pub async fn resign(client: &impl GenericClient, slot: &str, instance: &str) -> Result<()> {
    client
        .execute(
            // The lead expires rather than going: the next leader's epoch follows on.
            "WITH lead AS (
               UPDATE lakets._leaders SET expires_at = '-infinity'
                WHERE slot_name = $1 AND instance = $2
             )
             DELETE FROM lakets._instances WHERE slot_name = $1 AND instance = $2",
            &[&slot, &instance],
        )
        .await
        .pg_context(|| format!("resigning the lead of stream {slot}"))?;
    Ok(())
}

/// The processes of `slot` seen within `within_secs`, the active one first.
pub async fn list(
    client: &impl GenericClient,
    slot: &str,
    within_secs: f64,
) -> Result<Vec<Instance>> {
    let rows = client
        .query(
            "SELECT i.instance, l.epoch, i.started_at,
                    extract(epoch FROM now() - i.heartbeat_at)::float8
               FROM lakets._instances i
               LEFT JOIN lakets._leaders l
                 ON l.slot_name = i.slot_name AND l.instance = i.instance
              WHERE i.slot_name = $1 AND i.heartbeat_at > now() - $2 * interval '1 second'
              ORDER BY l.epoch IS NULL, i.started_at",
            &[&slot, &within_secs],
        )
        .await
        .pg_context(|| format!("listing the instances of stream {slot}"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let epoch: Option<i64> = r.get(1);
            Instance {
                instance: r.get(0),
                role: if epoch.is_some() { "active" } else { "standby" },
                epoch,
                started_at: r.get(2),
                heartbeat_age_seconds: r.get(3),
            }
        })
        .collect())
}

/// The instance that leads `slot`, if any.
pub async fn leader(client: &impl GenericClient, slot: &str) -> Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT instance FROM lakets._leaders WHERE slot_name = $1 AND expires_at > now()",
            &[&slot],
        )
        .await
        .pg_context(|| format!("reading the leader of stream {slot}"))?
        .map(|r| r.get(0)))
}

/// Forgets the processes of `slot` not seen for `older_than_secs` (the leader tidies).
pub async fn forget_gone(
    client: &impl GenericClient,
    slot: &str,
    older_than_secs: f64,
) -> Result<u64> {
    client
        .execute(
            "DELETE FROM lakets._instances i
              WHERE i.slot_name = $1 AND i.heartbeat_at < now() - $2 * interval '1 second'
                AND NOT EXISTS (SELECT 1 FROM lakets._leaders l
                                 WHERE l.slot_name = i.slot_name AND l.instance = i.instance)",
            &[&slot, &older_than_secs],
        )
        .await
        .pg_context(|| format!("forgetting gone instances of stream {slot}"))
}
