//! Configuration changes in the stream (DESIGN.md invariants 7 and 9).
//!
//! A change that WAL operators depend on (a sync enabled, moved or disabled, a cache
//! enabled or dropped, a rollup created) is written as a row of `lakets._announcements`
//! and announced by a transactional logical message (prefix [`PREFIX`], content: the
//! row's id) in the transaction that makes the change. Each operator applies it at exactly
//! that position in the stream, so what it mirrors before the change and after it follows
//! the order of the WAL, whatever the catalog says later.
//!
//! Any role may emit logical messages, so a message is only a pointer: its content is
//! believed when the row it names was written by the same transaction (the row's `xid`),
//! and the change itself is read from the row, which only the lakets role can write.
//! Anything else with the prefix is a forgery and is skipped (counted and logged).

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;
use tracing::warn;

use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::wal::lsn::Lsn;

/// The prefix of lakets' transactional logical messages.
pub use crate::wal::transaction::MESSAGE_PREFIX as PREFIX;

/// A change operators must apply at its position in the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Announcement {
    /// `sync enable` registered a sync: its initial copy into `location` starts.
    SyncRegistered {
        table: TableName,
        location: String,
        partitioning: String,
        /// This cluster's name in a Delta table several clusters share.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// The copy's snapshot: changes committed before `start_lsn` are in it.
    SyncSnapshot { table: TableName, start_lsn: Lsn },
    /// The copy is committed: the stream mirrors the table from here.
    SyncActivated { table: TableName },
    /// Mirroring stops here (the Delta table stays).
    SyncDisabled { table: TableName },
    /// A Last Value Cache was filled and registered.
    LvcEnabled { table: TableName },
    /// A Last Value Cache was refilled (`lakets resync`).
    LvcRefilled { table: TableName },
    /// A Last Value Cache was dropped.
    LvcDisabled { table: TableName },
    /// A rollup was created or dropped.
    RollupsChanged { rollup: String },
    /// The durability gate locked a chunk of `table` at `lock_lsn` and needs the Delta
    /// table's own record of a durable position past it, even if the table is idle.
    GateWaiting { table: TableName, lock_lsn: Lsn },
}

impl Announcement {
    fn kind(&self) -> &'static str {
        match self {
            Announcement::SyncRegistered { .. } => "sync_registered",
            Announcement::SyncSnapshot { .. } => "sync_snapshot",
            Announcement::SyncActivated { .. } => "sync_activated",
            Announcement::SyncDisabled { .. } => "sync_disabled",
            Announcement::LvcEnabled { .. } => "lvc_enabled",
            Announcement::LvcRefilled { .. } => "lvc_refilled",
            Announcement::LvcDisabled { .. } => "lvc_disabled",
            Announcement::RollupsChanged { .. } => "rollups_changed",
            Announcement::GateWaiting { .. } => "gate_waiting",
        }
    }
}

/// Records `change` and announces it in the stream, inside the caller's transaction (the
/// one that makes the change): operators apply it where that transaction commits.
pub async fn announce(client: &impl GenericClient, change: &Announcement) -> Result<()> {
    let payload = serde_json::to_value(change).expect("announcements serialize");
    client
        .execute(
            "WITH a AS (INSERT INTO lakets._announcements (kind, payload) VALUES ($1, $2)
                        RETURNING id)
             SELECT pg_catalog.pg_logical_emit_message(true, $3, a.id::text) FROM a",
            &[&change.kind(), &payload, &PREFIX],
        )
        .await
        .pg_context(|| format!("announcing {} to the WAL consumer", change.kind()))?;
    Ok(())
}

/// Announces on a connection of its own, each announcement committed at once: for a
/// caller whose own transaction is still open (the gate holds a chunk's lock in one).
pub struct Announcer<'a> {
    db: &'a crate::db::DbConfig,
    client: Option<tokio_postgres::Client>,
}

impl<'a> Announcer<'a> {
    pub fn new(db: &'a crate::db::DbConfig) -> Self {
        Announcer { db, client: None }
    }

    pub async fn announce(&mut self, change: &Announcement) -> Result<()> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(crate::db::connect_with(self.db).await?);
        }
        announce(self.client.as_ref().expect("connected above"), change).await
    }
}

/// The announcement a message of transaction `xid` carries, if it is one of ours: its
/// content names an announcement row written by that same transaction. `None` for a
/// forgery (counted in `lakets_forged_messages_total`).
pub async fn verify(
    client: &impl GenericClient,
    content: &[u8],
    xid: u32,
) -> Result<Option<Announcement>> {
    let id = std::str::from_utf8(content)
        .ok()
        .and_then(|t| t.parse::<i64>().ok());
    let Some(id) = id else {
        return Ok(forged(xid, "its content is not an announcement id"));
    };
    // The walsender may send a transaction a moment before its writer makes it visible.
    let full_xid = wait_until_visible(client, xid).await?;
    // All 64 bits: after a wraparound an old announcement's id must not pass for new.
    let row = client
        .query_opt(
            "SELECT payload FROM lakets._announcements
              WHERE id = $1 AND xid::text::bigint = $2",
            &[&id, &full_xid],
        )
        .await
        .pg_context(|| format!("reading announcement {id}"))?;
    let Some(row) = row else {
        return Ok(forged(
            xid,
            "no announcement of its transaction has that id",
        ));
    };
    match serde_json::from_value(row.get(0)) {
        Ok(change) => Ok(Some(change)),
        // Written by a newer lakets: not ours to interpret.
        Err(e) => {
            warn!(id, error = %e, "skipping an announcement this lakets does not know");
            Ok(None)
        }
    }
}

fn forged(xid: u32, why: &str) -> Option<Announcement> {
    warn!(
        xid,
        why, "skipping a logical message with lakets' prefix that lakets did not write"
    );
    metrics::counter!("lakets_forged_messages_total").increment(1);
    None
}

/// How long a transaction decoded from the WAL may stay invisible before the read that
/// needs it gives up (transiently: the stream restarts and meets it again). A commit waiting
/// for a synchronous standby is in the WAL, and so streamed, before it is visible.
const VISIBILITY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until transaction `xid` is visible to new snapshots and returns its full 64-bit
/// id. The walsender can send a transaction as soon as its commit record is in the WAL, a
/// moment before its writer makes it visible: a read in that moment would not see its
/// effects yet.
pub async fn wait_until_visible(client: &impl GenericClient, xid: u32) -> Result<i64> {
    wait_until_visible_within(client, xid, VISIBILITY_TIMEOUT).await
}

/// [`wait_until_visible`] with its patience given.
pub async fn wait_until_visible_within(
    client: &impl GenericClient,
    xid: u32,
    timeout: std::time::Duration,
) -> Result<i64> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        // The 32-bit xid widened as PostgreSQL widens one: by its signed 32-bit distance
        // from the snapshot's xmax (a just-committed transaction is often at or past xmax,
        // which moves only when every earlier transaction has ended).
        let row = client
            .query_one(
                "WITH s AS (SELECT pg_catalog.pg_current_snapshot() AS snap),
                      x AS (SELECT snap, pg_catalog.pg_snapshot_xmax(snap)::text::bigint AS xmax FROM s),
                      w AS (SELECT snap, xmax + ((($1::bigint - (xmax & 4294967295) + 2147483648)
                                                   & 4294967295) - 2147483648) AS full_xid
                              FROM x)
                 SELECT pg_catalog.pg_visible_in_snapshot(full_xid::text::xid8, snap), full_xid
                   FROM w",
                &[&i64::from(xid)],
            )
            .await
            .pg_context(|| "checking that a transaction is visible".into())?;
        let (visible, full): (bool, i64) = (row.get(0), row.get(1));
        if visible {
            return Ok(full);
        }
        if started.elapsed() > timeout {
            return Err(Error::Replication {
                transient: true,
                message: format!(
                    "transaction {full} is in the WAL but has not become visible after \
                     {timeout:?} (a commit waiting for a synchronous standby?); the stream \
                     retries"
                ),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_through_their_json() {
        let a = Announcement::GateWaiting {
            table: TableName::new("public", "ticks"),
            lock_lsn: Lsn(0x1_0000_0042),
        };
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["kind"], "gate_waiting");
        assert_eq!(json["lock_lsn"], "1/42");
        assert_eq!(serde_json::from_value::<Announcement>(json).unwrap(), a);
    }
}
