//! The replication slot and the publication, and the checks that come before them.
//!
//! Everything is checked up front with errors that say what to change: `wal_level`, the
//! REPLICATION privilege, free slots and walsenders. The slot is created if absent and never
//! dropped except by an explicit command; a slot that still holds unconsumed changes needs
//! `force` even then.

use tokio_postgres::GenericClient;
use tracing::{info, warn};

use super::lsn::Lsn;
use crate::catalog::registry;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::{TableName, quote_ident};

pub const DEFAULT_PUBLICATION: &str = "lakets";

/// The default slot of a database: `lakets_<database>`. Slot names are global to the
/// cluster, so a fixed name would collide between two databases served by lakets.
pub fn default_slot_name(database: &str) -> String {
    let mut name: String = format!("lakets_{database}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(crate::ident::MAX_IDENT_BYTES);
    name
}

/// PostgreSQL's rule for slot names: lower-case letters, digits and `_`, at most 63 bytes.
pub fn check_slot_name(name: &str) -> crate::error::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= crate::ident::MAX_IDENT_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(crate::error::Error::invalid(format!(
            "{name:?} is not a valid replication slot name: use 1 to 63 lower-case letters, \
             digits and underscores"
        )))
    }
}

/// What `pg_replication_slots` says about our slot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotState {
    pub slot_name: String,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    pub confirmed_flush_lsn: Option<Lsn>,
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (invalidated).
    pub wal_status: Option<String>,
    /// WAL the server keeps for this slot: current position minus restart_lsn.
    pub retained_bytes: Option<i64>,
    /// Changes written but not yet confirmed: current position minus confirmed_flush_lsn.
    pub pending_bytes: Option<i64>,
}

pub async fn slot_state(client: &impl GenericClient, slot: &str) -> Result<Option<SlotState>> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, plugin::text, database::text, active,
                    confirmed_flush_lsn, restart_lsn, wal_status,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .pg_context(|| format!("reading replication slot {slot}"))?;
    Ok(row.map(|r| SlotState {
        slot_name: r.get(0),
        plugin: r.get(1),
        database: r.get(2),
        active: r.get(3),
        confirmed_flush_lsn: r
            .get::<_, Option<tokio_postgres::types::PgLsn>>(4)
            .map(Lsn::from),
        restart_lsn: r
            .get::<_, Option<tokio_postgres::types::PgLsn>>(5)
            .map(Lsn::from),
        wal_status: r.get(6),
        retained_bytes: r.get(7),
        pending_bytes: r.get(8),
    }))
}

/// Checks the server can stream to us, before anything is created.
pub async fn preflight(client: &impl GenericClient, slot: &str) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'),
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                    current_user::text,
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_stat_replication)::int,
                    current_database()::text",
            &[],
        )
        .await
        .pg_context(|| "checking the replication settings".into())?;
    let wal_level: String = row.get(0);
    if wal_level != "logical" {
        return Err(Error::NotReady(format!(
            "wal_level is '{wal_level}', but logical decoding needs 'logical': set \
             wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) \
             and restart PostgreSQL"
        )));
    }
    let (can_replicate, user): (Option<bool>, String) = (row.get(1), row.get(2));
    if can_replicate != Some(true) {
        return Err(Error::NotReady(format!(
            "role {user} may not stream the WAL: run ALTER ROLE {} REPLICATION (as a superuser), \
             and allow it in pg_hba.conf",
            quote_ident(&user)
        )));
    }
    let existing = slot_state(client, slot).await?;
    let database: String = row.get(7);
    match &existing {
        Some(s) => {
            if s.plugin.as_deref() != Some("pgoutput") {
                return Err(Error::Conflict(format!(
                    "replication slot {slot} exists but uses plugin {:?}, not pgoutput; pick \
                     another slot name",
                    s.plugin
                )));
            }
            if s.database.as_deref() != Some(database.as_str()) {
                return Err(Error::Conflict(format!(
                    "replication slot {slot} belongs to database {:?}, not {database}; pick \
                     another slot name",
                    s.database
                )));
            }
            if s.wal_status.as_deref() == Some("lost") {
                record_gap(client, slot, s.confirmed_flush_lsn, GAP_INVALIDATED).await?;
                return Err(gap_error(&list_gaps(client).await?));
            }
        }
        None => {
            let (max_slots, used): (i32, i32) = (row.get(3), row.get(4));
            if used >= max_slots {
                return Err(Error::NotReady(format!(
                    "all {max_slots} replication slots are in use: raise max_replication_slots \
                     (and restart PostgreSQL) or drop an unused slot (see pg_replication_slots)"
                )));
            }
        }
    }
    let (max_senders, senders): (i32, i32) = (row.get(5), row.get(6));
    if senders >= max_senders {
        return Err(Error::NotReady(format!(
            "all {max_senders} WAL senders are busy: raise max_wal_senders and restart PostgreSQL"
        )));
    }
    Ok(())
}

/// Why a slot's stream has a gap (`lakets._stream_gaps.reason`).
pub const GAP_INVALIDATED: &str = "invalidated: the server removed WAL it still needed \
                                   (max_slot_wal_keep_size)";
pub const GAP_DROPPED: &str = "dropped while lakets operators depended on it";
pub const GAP_RESYNCING: &str = "being resynced (`lakets resync` has not finished)";

/// A stretch of the WAL the stream never delivered to the operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamGap {
    pub slot_name: String,
    /// Where the operators' knowledge ends: changes after it were missed.
    pub since_lsn: Option<Lsn>,
    pub reason: String,
    pub detected_at: chrono::DateTime<chrono::Utc>,
}

pub async fn list_gaps(client: &impl GenericClient) -> Result<Vec<StreamGap>> {
    Ok(client
        .query(
            "SELECT slot_name, since_lsn::text, reason, detected_at
               FROM lakets._stream_gaps ORDER BY detected_at, slot_name",
            &[],
        )
        .await
        .pg_context(|| "reading the recorded stream gaps".into())?
        .iter()
        .map(|r| StreamGap {
            slot_name: r.get(0),
            since_lsn: r.get::<_, Option<String>>(1).and_then(|l| l.parse().ok()),
            reason: r.get(2),
            detected_at: r.get(3),
        })
        .collect())
}

pub(crate) async fn record_gap(
    client: &impl GenericClient,
    slot: &str,
    since: Option<Lsn>,
    reason: &str,
) -> Result<()> {
    let inserted = client
        .execute(
            "INSERT INTO lakets._stream_gaps (slot_name, since_lsn, reason)
             VALUES ($1, $2::text::pg_lsn, $3) ON CONFLICT DO NOTHING",
            &[&slot, &since.map(|l| l.to_string()), &reason],
        )
        .await
        .pg_context(|| format!("recording the gap in the stream of slot {slot}"))?;
    if inserted > 0 {
        warn!(slot, since = ?since.map(|l| l.to_string()), reason, "the stream has a gap; run `lakets resync`");
    }
    Ok(())
}

/// The error for a stream with a gap: what happened, what is safe, what to run.
pub fn gap_error(gaps: &[StreamGap]) -> Error {
    let what = gaps
        .iter()
        .map(|g| {
            format!(
                "replication slot {} was {}{}",
                g.slot_name,
                g.reason,
                g.since_lsn
                    .map(|l| format!(", and changes after {l} never reached the operators"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Error::NotReady(format!(
        "the WAL stream has a gap: {what}. The Delta tables, Last Value Caches and rollups \
         may lack those changes, so nothing will be dropped from the hot tier and streaming \
         will not resume until `lakets resync` (run with the service stopped) re-copies the \
         hot data and recreates the slot"
    ))
}

/// Looks for a gap in `slot`'s stream and records it: the slot invalidated, or gone while
/// lakets operators have stored progress through it and still have work (a sync, a cache
/// or a rollup) that depends on an unbroken stream.
pub async fn detect_gap(client: &impl GenericClient, slot: &str) -> Result<()> {
    match slot_state(client, slot).await? {
        Some(s) if s.wal_status.as_deref() == Some("lost") => {
            record_gap(client, slot, s.confirmed_flush_lsn, GAP_INVALIDATED).await
        }
        Some(_) => Ok(()),
        None => {
            let row = client
                .query_one(
                    "SELECT (SELECT min(durable_lsn)::text FROM lakets._sink_progress
                              WHERE slot_name = $1),
                            EXISTS (SELECT 1 FROM lakets._sync_registry)
                         OR EXISTS (SELECT 1 FROM lakets._lvc_registry)
                         OR EXISTS (SELECT 1 FROM lakets._rollup_registry)",
                    &[&slot],
                )
                .await
                .pg_context(|| format!("checking what depended on slot {slot}"))?;
            let progress: Option<String> = row.get(0);
            let depended: bool = row.get(1);
            match progress {
                Some(lsn) if depended => {
                    record_gap(client, slot, lsn.parse().ok(), GAP_DROPPED).await
                }
                _ => Ok(()),
            }
        }
    }
}

/// Refuses to stream from `slot` while any stream gap is recorded (see [`gap_error`]).
pub async fn refuse_if_gap(client: &impl GenericClient, slot: &str) -> Result<()> {
    detect_gap(client, slot).await?;
    let gaps = list_gaps(client).await?;
    if gaps.is_empty() {
        Ok(())
    } else {
        Err(gap_error(&gaps))
    }
}

/// Creates the slot if it does not exist. Returns whether it was created.
pub async fn ensure_slot(client: &impl GenericClient, slot: &str) -> Result<bool> {
    if slot_state(client, slot).await?.is_some() {
        return Ok(false);
    }
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .pg_context(|| format!("creating replication slot {slot}"))?;
    info!(slot, "created replication slot");
    Ok(true)
}

/// Creates or updates the publication to cover exactly the registered ChronoTables, with
/// `publish_via_partition_root` so chunk rows arrive as rows of their ChronoTable.
pub async fn ensure_publication(client: &impl GenericClient, publication: &str) -> Result<()> {
    let tables = registry::list_chronotables(client).await?;
    let exists = client
        .query_opt(
            "SELECT pubviaroot, pubinsert AND pubupdate AND pubdelete AND pubtruncate
               FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .pg_context(|| format!("reading publication {publication}"))?;
    let quoted_pub = quote_ident(publication);
    match exists {
        None => {
            let target = if tables.is_empty() {
                String::new()
            } else {
                format!(
                    " FOR TABLE {}",
                    tables
                        .iter()
                        .map(|t| t.table.quoted())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {quoted_pub}{target} WITH (publish_via_partition_root = true)"
                ))
                .await
                .pg_context(|| format!("creating publication {publication}"))?;
            info!(publication, tables = tables.len(), "created publication");
        }
        Some(row) => {
            if !row.get::<_, bool>(0) {
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {quoted_pub} SET (publish_via_partition_root = true)"
                    ))
                    .await
                    .pg_context(|| format!("updating publication {publication}"))?;
            }
            // A publication made by hand may leave out an operation: its changes would
            // never reach the operators (a TRUNCATE would stay in Delta, say).
            if !row.get::<_, bool>(1) {
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {quoted_pub} SET (publish = 'insert, update, delete, truncate')"
                    ))
                    .await
                    .pg_context(|| format!("updating publication {publication}"))?;
                warn!(
                    publication,
                    "the publication left out some operations; it now publishes all of them"
                );
            }
            let members: Vec<(String, String)> = client
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&publication],
                )
                .await
                .pg_context(|| format!("reading publication {publication}"))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for t in &tables {
                let key = (t.table.schema.clone(), t.table.name.clone());
                if !members.contains(&key) {
                    client
                        .batch_execute(&format!(
                            "ALTER PUBLICATION {quoted_pub} ADD TABLE {}",
                            t.table.quoted()
                        ))
                        .await
                        .pg_context(|| {
                            format!("adding {} to publication {publication}", t.table)
                        })?;
                    info!(publication, table = %t.table, "added table to publication");
                }
            }
        }
    }
    Ok(())
}

/// Makes sure some lakets consumer slot exists, creating the default one (with the default
/// publication) when none is registered. Features that start from a WAL position (a cache
/// fill, a snapshot) call this first: changes after that position must be in a slot, even
/// if `lakets run` has never started. Must run outside a transaction that wrote anything.
pub async fn ensure_default_consumer(client: &impl GenericClient) -> Result<()> {
    if has_consumer(client).await? {
        return Ok(());
    }
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .pg_context(|| "reading the database name".into())?
        .get(0);
    let slot = default_slot_name(&database);
    // A new slot would silently start after whatever the vanished one never delivered.
    refuse_if_gap(client, &slot).await?;
    preflight(client, &slot).await?;
    ensure_publication(client, DEFAULT_PUBLICATION).await?;
    register_consumer(client, &slot, DEFAULT_PUBLICATION).await?;
    ensure_slot(client, &slot).await?;
    Ok(())
}

/// Whether a registered lakets consumer slot exists.
pub async fn has_consumer(client: &impl GenericClient) -> Result<bool> {
    let registered: i64 = client
        .query_one(
            "SELECT count(*) FROM lakets._replication r
               JOIN pg_replication_slots s ON s.slot_name = r.slot_name",
            &[],
        )
        .await
        .pg_context(|| "reading the registered slots".into())?
        .get(0);
    Ok(registered > 0)
}

/// Records which publication a slot streams, so that new ChronoTables join it at once.
pub async fn register_consumer(
    client: &impl GenericClient,
    slot: &str,
    publication: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO lakets._replication (slot_name, publication) VALUES ($1, $2)
             ON CONFLICT (slot_name) DO UPDATE SET publication = excluded.publication",
            &[&slot, &publication],
        )
        .await
        .pg_context(|| format!("registering slot {slot}"))?;
    Ok(())
}

/// Adds a new ChronoTable to every publication a lakets consumer streams (and to the
/// default one), so that no change to it is ever outside the stream. Runs inside the
/// caller's transaction.
pub async fn publish_new_table(client: &impl GenericClient, table: &TableName) -> Result<()> {
    let publications: Vec<String> = client
        .query(
            "SELECT p.pubname::text FROM pg_publication p
              WHERE p.pubname = $1
                 OR p.pubname IN (SELECT publication FROM lakets._replication)
              ORDER BY 1",
            &[&DEFAULT_PUBLICATION],
        )
        .await
        .pg_context(|| "listing the lakets publications".into())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for publication in publications {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(&publication),
                table.quoted()
            ))
            .await
            .pg_context(|| format!("adding {table} to publication {publication}"))?;
    }
    Ok(())
}

/// Drops the slot. Refuses while it is in use, and, without `force`, while it still holds
/// changes no consumer has confirmed (they would be lost to every operator).
pub async fn drop_slot(
    client: &impl GenericClient,
    slot: &str,
    publication: &str,
    force: bool,
) -> Result<()> {
    let state = slot_state(client, slot)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "replication slot",
            name: slot.to_owned(),
        })?;
    if state.active {
        return Err(Error::Conflict(format!(
            "replication slot {slot} is in use by a running consumer; stop it first"
        )));
    }
    if !force && state.wal_status.as_deref() != Some("lost") {
        // Peek (without consuming) whether any published change is still unconfirmed.
        let pending: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(
                     $1, NULL, 1, 'proto_version', '1', 'publication_names', $2)",
                &[&slot, &quote_ident(publication)],
            )
            .await
            .pg_context(|| format!("checking replication slot {slot} for unconsumed changes"))?
            .get(0);
        if pending > 0 {
            return Err(Error::Conflict(format!(
                "replication slot {slot} still holds changes not confirmed by every operator; \
                 dropping it loses them for the cold tier and the caches. Pass --force to drop \
                 it anyway"
            )));
        }
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .pg_context(|| format!("dropping replication slot {slot}"))?;
    client
        .execute(
            "DELETE FROM lakets._replication WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .pg_context(|| format!("unregistering slot {slot}"))?;
    info!(slot, "dropped replication slot");
    Ok(())
}
