//! `lakets._replication` and `lakets._stream_gaps`: which slots lakets streams (and the
//! publication of each), and the gaps a stream has had. The slot and publication
//! themselves are the WAL layer's ([`lakets_wal::slot`]); this is what lakets records
//! about them, and the preparation every stream goes through before it starts.

use tokio_postgres::GenericClient;
use tracing::warn;

use crate::error::{Error, PgResultExt, Result};
use crate::ident::{TableName, quote_ident};
use lakets_wal::lsn::Lsn;
use lakets_wal::slot::{self, DEFAULT_PUBLICATION, default_slot_name, preflight, slot_state};

/// Why a slot's stream has a gap (`lakets._stream_gaps.reason`).
pub const GAP_INVALIDATED: &str = "invalidated: the server removed WAL it still needed \
                                   (max_slot_wal_keep_size)";
pub const GAP_DROPPED: &str = "dropped while lakets operators depended on it";
pub const GAP_RESYNCING: &str = "being resynced (`lakets resync` has not finished)";
/// The start of the reason of a gap recorded because the server moved to a new WAL
/// timeline (the numbers follow).
pub const GAP_NEW_TIMELINE: &str = "streamed from a server that moved to a new WAL timeline \
                                    (a standby promoted, or a point-in-time restore): the \
                                    logical slot's history does not follow";
/// The start of the reason of a gap recorded because the database is now on another
/// cluster (the identifiers follow).
pub const GAP_NEW_SYSTEM: &str = "streamed from another PostgreSQL cluster than before (its \
                                  system identifier changed: a restore into a new cluster, \
                                  or another server behind the same address)";

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

pub async fn record_gap(
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

/// Forgets every recorded gap (`lakets resync` rebuilt what they lost).
pub async fn clear_gaps(client: &impl GenericClient) -> Result<()> {
    client
        .execute("DELETE FROM lakets._stream_gaps", &[])
        .await
        .pg_context(|| "clearing the stream gaps".into())?;
    // Streams start over on this server: it is the one they come from now.
    client
        .execute(
            &format!(
                "UPDATE lakets._replication
                    SET server_system = s.system_identifier::text,
                        server_timeline = {SERVER_TIMELINE}
                   FROM pg_catalog.pg_control_system() s"
            ),
            &[],
        )
        .await
        .pg_context(|| "recording the server the stream comes from".into())?;
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
    if detect_new_server(client, slot).await? {
        return Ok(());
    }
    match slot_state(client, slot).await? {
        Some(s) if s.wal_status.as_deref() == Some("lost") => {
            record_gap(client, slot, s.confirmed_flush_lsn, GAP_INVALIDATED).await
        }
        Some(_) => Ok(()),
        None => match depended_position(client, slot).await? {
            Some(since) => record_gap(client, slot, since, GAP_DROPPED).await,
            None => Ok(()),
        },
    }
}

/// Where the operators' knowledge through `slot` ends, when some lakets feature (a sync,
/// a cache, a rollup) has stored progress through it and depends on an unbroken stream;
/// `None` when nothing does.
async fn depended_position(client: &impl GenericClient, slot: &str) -> Result<Option<Option<Lsn>>> {
    // The features whose state a gap would leave wrong, from the operator list.
    let depended = crate::operators::COMPONENTS
        .iter()
        .filter_map(|c| c.state_registry())
        .map(|r| format!("EXISTS (SELECT 1 FROM lakets.{})", r.table()))
        .collect::<Vec<_>>();
    let depended = if depended.is_empty() {
        "false".to_owned()
    } else {
        depended.join(" OR ")
    };
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT min(durable_lsn)::text FROM lakets._sink_progress
                          WHERE slot_name = $1),
                        {depended}"
            ),
            &[&slot],
        )
        .await
        .pg_context(|| format!("checking what depended on slot {slot}"))?;
    let progress: Option<String> = row.get(0);
    let depended: bool = row.get(1);
    Ok(match progress {
        Some(lsn) if depended => Some(lsn.parse().ok()),
        _ => None,
    })
}

/// The server's current WAL timeline (from the name of the WAL file being written); NULL
/// on a server in recovery.
const SERVER_TIMELINE: &str = "CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
         ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()),
                             1, 8))::bit(32)::bigint
    END";

/// Compares the server with the one `slot`'s stream was recorded on (system identifier,
/// WAL timeline), records it the first time, and records a gap when it changed while
/// operators depended on the stream (true then). The catalog is in the database, so a
/// promoted standby or a restored backup carries the old server's record: the change is
/// seen on the first start after it, before any change is streamed. A server in
/// recovery (a standby, read only) is not compared: nothing streams from it.
async fn detect_new_server(client: &impl GenericClient, slot: &str) -> Result<bool> {
    let row = client
        .query_one(
            &format!(
                "SELECT s.system_identifier::text, {SERVER_TIMELINE},
                        r.server_system, r.server_timeline, r.slot_name IS NOT NULL
                   FROM pg_catalog.pg_control_system() s
                   LEFT JOIN lakets._replication r ON r.slot_name = $1"
            ),
            &[&slot],
        )
        .await
        .pg_context(|| format!("reading which server slot {slot} streams from"))?;
    let (system, timeline): (String, Option<i64>) = (row.get(0), row.get(1));
    let (recorded_system, recorded_timeline): (Option<String>, Option<i64>) =
        (row.get(2), row.get(3));
    let registered: bool = row.get(4);
    let Some(timeline) = timeline else {
        return Ok(false);
    };
    if !registered {
        return Ok(false);
    }
    let change = match (recorded_system, recorded_timeline) {
        (Some(was), _) if was != system => Some(format!(
            "{GAP_NEW_SYSTEM} (system identifier {was} -> {system})"
        )),
        (_, Some(was)) if was != timeline => {
            Some(format!("{GAP_NEW_TIMELINE} (timeline {was} -> {timeline})"))
        }
        (Some(_), Some(_)) => return Ok(false),
        _ => None,
    };
    if let Some(reason) = change
        && let Some(since) = depended_position(client, slot).await?
    {
        // The old server's record stays until `lakets resync` clears the gap.
        record_gap(client, slot, since, &reason).await?;
        return Ok(true);
    }
    client
        .execute(
            "UPDATE lakets._replication SET server_system = $2, server_timeline = $3
              WHERE slot_name = $1",
            &[&slot, &system, &timeline],
        )
        .await
        .pg_context(|| format!("recording which server slot {slot} streams from"))?;
    Ok(false)
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
    slot::ensure_slot(client, &slot).await?;
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

/// A registered consumer slot and the publication it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub slot_name: String,
    pub publication: String,
}

/// The registered consumer slots, by name (whether or not the slots exist).
pub async fn list_consumers(client: &impl GenericClient) -> Result<Vec<Consumer>> {
    Ok(client
        .query(
            "SELECT slot_name, publication FROM lakets._replication ORDER BY 1",
            &[],
        )
        .await
        .pg_context(|| "reading the registered slots".into())?
        .iter()
        .map(|r| Consumer {
            slot_name: r.get(0),
            publication: r.get(1),
        })
        .collect())
}

/// Records which publication a slot streams, so that new ChronoTables join it at once.
pub async fn register_consumer(
    client: &impl GenericClient,
    slot: &str,
    publication: &str,
) -> Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO lakets._replication
                        (slot_name, publication, server_system, server_timeline)
                 SELECT $1, $2, s.system_identifier::text, {SERVER_TIMELINE}
                   FROM pg_catalog.pg_control_system() s
                 ON CONFLICT (slot_name) DO UPDATE SET publication = excluded.publication"
            ),
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

/// Creates or updates `publication` to cover exactly the registered ChronoTables.
pub async fn ensure_publication(client: &impl GenericClient, publication: &str) -> Result<()> {
    let tables: Vec<TableName> = super::registry::list_chronotables(client)
        .await?
        .into_iter()
        .map(|t| t.table)
        .collect();
    slot::ensure_publication(client, publication, &tables).await
}

/// Drops a consumer's slot ([`slot::drop_slot`]) and forgets it.
pub async fn drop_slot(
    client: &impl GenericClient,
    slot_name: &str,
    publication: &str,
    force: bool,
) -> Result<()> {
    slot::drop_slot(client, slot_name, publication, force).await?;
    client
        .execute(
            "DELETE FROM lakets._replication WHERE slot_name = $1",
            &[&slot_name],
        )
        .await
        .pg_context(|| format!("unregistering slot {slot_name}"))?;
    Ok(())
}

/// Records why the stream of `slot` stopped for good, and what kind of error stopped it
/// (`None`: clears both).
pub async fn record_stop(
    client: &impl GenericClient,
    slot: &str,
    reason: Option<&str>,
    kind: Option<&str>,
) -> Result<()> {
    client
        .execute(
            "UPDATE lakets._replication
                SET stopped_reason = $2, stopped_kind = $3,
                    stopped_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END
              WHERE slot_name = $1",
            &[&slot, &reason, &kind],
        )
        .await
        .pg_context(|| "recording why the stream stopped".into())?;
    Ok(())
}

/// Why the stream of a slot stopped for good, as [`record_stop`] recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedStop {
    pub kind: Option<String>,
    pub reason: String,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub at: String,
}

/// Why the stream of `slot` stopped for good, if it did.
pub async fn recorded_stop(
    client: &impl GenericClient,
    slot: &str,
) -> Result<Option<RecordedStop>> {
    Ok(client
        .query_opt(
            "SELECT stopped_kind, stopped_reason,
                    to_char(stopped_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM lakets._replication WHERE slot_name = $1 AND stopped_reason IS NOT NULL",
            &[&slot],
        )
        .await
        .pg_context(|| "reading why the stream stopped".into())?
        .map(|r| RecordedStop {
            kind: r.get(0),
            reason: r.get(1),
            at: r.get(2),
        }))
}

/// What every stream of lakets goes through before it starts: the catalog installed, no
/// gap recorded, the server able to stream, the publication covering every ChronoTable,
/// the slot registered and created.
pub struct StreamPreparation;

impl lakets_wal::pipeline::Preparation for StreamPreparation {
    fn prepare<'a>(
        &'a self,
        client: &'a tokio_postgres::Client,
        slot_name: &'a str,
        publication: &'a str,
    ) -> lakets_wal::pipeline::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            super::check_installed(client).await?;
            refuse_if_gap(client, slot_name).await?;
            preflight(client, slot_name).await?;
            ensure_publication(client, publication).await?;
            register_consumer(client, slot_name, publication).await?;
            slot::ensure_slot(client, slot_name).await?;
            Ok(())
        })
    }
}
