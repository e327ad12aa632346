//! The replication slot and the publication, and the checks that come before them.
//!
//! Everything is checked up front with errors that say what to change: `wal_level`, the
//! REPLICATION privilege, free slots and walsenders. The slot is created if absent and never
//! dropped except by an explicit command; a slot that still holds unconsumed changes needs
//! `force` even then. What lakets records about its slots (which publication each streams,
//! the gaps in a stream) is the catalog's, not this layer's.

use tokio_postgres::GenericClient;
use tracing::{info, warn};

use crate::lsn::Lsn;
use lakets_postgres::error::{Error, PgResultExt, Result};
use lakets_postgres::ident::{MAX_IDENT_BYTES, TableName, quote_ident};

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
    name.truncate(MAX_IDENT_BYTES);
    name
}

/// PostgreSQL's rule for slot names: lower-case letters, digits and `_`, at most 63 bytes.
pub fn check_slot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IDENT_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
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
                return Err(Error::NotReady(format!(
                    "replication slot {slot} was invalidated: the server removed WAL it still \
                     needed (max_slot_wal_keep_size), so changes after {} never reached its \
                     consumer",
                    s.confirmed_flush_lsn.map_or_else(
                        || "its last confirmed position".to_owned(),
                        |l| l.to_string()
                    )
                )));
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

/// Creates or updates the publication to cover `tables` (partitioned parents), with
/// `publish_via_partition_root` so partition rows arrive as rows of their parent, and every
/// operation published.
pub async fn ensure_publication(
    client: &impl GenericClient,
    publication: &str,
    tables: &[TableName],
) -> Result<()> {
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
                        .map(|t| t.quoted())
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
            for t in tables {
                let key = (t.schema.clone(), t.name.clone());
                if !members.contains(&key) {
                    client
                        .batch_execute(&format!(
                            "ALTER PUBLICATION {quoted_pub} ADD TABLE {}",
                            t.quoted()
                        ))
                        .await
                        .pg_context(|| format!("adding {t} to publication {publication}"))?;
                    info!(publication, table = %t, "added table to publication");
                }
            }
        }
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
    info!(slot, "dropped replication slot");
    Ok(())
}
