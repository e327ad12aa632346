//! Reclaiming the hot tier (spec 000): tiered retention policies, `tier_chunk` and
//! `execute_retention`, every step of a synced table through the durability gate.
//!
//! Chunks move active -> tiered -> dropped. Tiering a chunk marks it as safely in the cold
//! tier (and checks that it is); dropping a synced table's chunk checks it again under the
//! drop's own lock, because late rows may have arrived since. Unsynced tables drop as
//! `drop-chunks` does. A chunk that cannot move now stays where it is, with the reason in
//! `lakets._chunk_metadata.deferred_reason`, and is retried on the next run.

pub mod gate;
pub mod policy;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::catalog::announce::Announcer;
use crate::catalog::migrations::LIFECYCLE_LOCK_NAMESPACE;
use crate::catalog::registry::{self, Chunk, ChunkStatus};
use crate::chronotable::bounds;
use crate::chronotable::partitions;
use crate::coldtier::sync::{SyncConfig, SyncState};
use crate::db::DbConfig;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;
pub use gate::{Gate, GateSettings};

/// What a tiering or retention run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MoveReport {
    /// Chunks moved (tiered, or dropped).
    pub moved: Vec<String>,
    /// Chunks left for the next run, with the reason.
    pub deferred: Vec<(String, String)>,
}

impl MoveReport {
    fn merge(&mut self, other: MoveReport) {
        self.moved.extend(other.moved);
        self.deferred.extend(other.deferred);
    }
}

async fn active_sync(client: &Client, table: &TableName) -> Result<Option<SyncConfig>> {
    Ok(crate::coldtier::sync::find_sync(client, table)
        .await?
        .filter(|s| s.state == SyncState::Active))
}

/// Once the consumer was found lagging in a run, the other chunks of the run do not wait
/// for it again (each still checks once).
fn after_deferral(settings: GateSettings, reason: &str) -> GateSettings {
    if reason.starts_with("lagging") {
        GateSettings {
            wait: std::time::Duration::ZERO,
            ..settings
        }
    } else {
        settings
    }
}

/// The label values of `lakets_chunk_deferrals_total{reason}`: a bounded set, so that a
/// reason's details (a slot or a table name) never become a series of their own.
pub const DEFERRAL_KINDS: &[&str] = &[
    "lagging",
    "count_mismatch",
    "sink_failing",
    "not_tiered_yet",
    "lock_timeout",
    "busy",
    "still_current",
    "stream_gap",
    "detached",
    "missing",
    "other",
];

/// The kind of a deferral's reason, one of [`DEFERRAL_KINDS`].
pub fn deferral_kind(reason: &str) -> &'static str {
    let head = reason.split(':').next().unwrap_or("").trim();
    match head {
        "lagging" => "lagging",
        "count mismatch" => "count_mismatch",
        "sink failing" => "sink_failing",
        "not tiered yet" => "not_tiered_yet",
        "lock timeout" => "lock_timeout",
        "busy" => "busy",
        "still current" => "still_current",
        _ if reason.contains("WAL stream has a gap") => "stream_gap",
        _ if reason.contains("no longer a partition") => "detached",
        _ if reason.contains("is missing") => "missing",
        _ => "other",
    }
}

async fn record_deferral(client: &Client, chunk: &Chunk, reason: &str) -> Result<()> {
    warn!(chunk = %chunk.chunk_name, reason, "chunk deferred");
    // The reason's kind is the label; details go to the log and the catalog.
    metrics::counter!("lakets_chunk_deferrals_total", "reason" => deferral_kind(reason))
        .increment(1);
    crate::catalog::registry::record_deferral(client, &chunk.chunk_table(), reason).await
}

/// What a chunk's turn under the table's lifecycle lock found.
enum Turn {
    /// The lock is held in the transaction; the chunk as it stands now.
    Ready(Chunk),
    /// Another run moved the chunk meanwhile (or it is not there any more): nothing to do.
    Moved,
    /// The other run took longer than a turn may wait.
    Busy(String),
}

/// Waits (bounded) in `tx` for the table's lifecycle lock, which every tiering and drop of
/// its chunks takes, jobs and commands alike, then reads the chunk again: a chunk another
/// run dropped while this one waited is not "dropped outside lakets". After `Busy` the
/// transaction is aborted.
async fn take_turn(
    tx: &tokio_postgres::Transaction<'_>,
    chunk: &Chunk,
    settings: GateSettings,
) -> Result<Turn> {
    // Another run holds the lock for at most one chunk's gate and drop.
    let patience = settings.wait + settings.lock_timeout + std::time::Duration::from_secs(30);
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        patience.as_millis()
    ))
    .await
    .pg_context(|| "setting lock_timeout".into())?;
    let parent = TableName::new(chunk.schema_name.clone(), chunk.table_name.clone());
    if let Err(e) = tx
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LIFECYCLE_LOCK_NAMESPACE, &parent.quoted()],
        )
        .await
    {
        if e.code().map(|c| c.code()) == Some("55P03") {
            return Ok(Turn::Busy(format!(
                "busy: another lakets run (a job or a command) kept moving chunks of {parent} \
                 for more than {patience:?}; retried on the next run"
            )));
        }
        return Err(e).pg_context(|| format!("taking the lifecycle lock of {parent}"));
    }
    let fresh = registry::list_chunks(tx, &parent, true)
        .await?
        .into_iter()
        .find(|c| c.chunk_name == chunk.chunk_name);
    match fresh {
        Some(c) if c.status == chunk.status => Ok(Turn::Ready(c)),
        _ => Ok(Turn::Moved),
    }
}

/// `tier_chunk`: tiers the chunks older than their table's `tier_after` (or only `table`,
/// or only `chunk` whatever its age), each through the gate.
pub async fn tier(
    db: &DbConfig,
    table: Option<&str>,
    chunk: Option<&str>,
    settings: GateSettings,
    at: Option<DateTime<Utc>>,
) -> Result<MoveReport> {
    let mut client = crate::db::connect_with(db).await?;
    let mut announcer = Announcer::new(db);
    crate::catalog::check_installed(&client).await?;
    let policies = policy::list_policies(&client).await?;
    let only = match table {
        Some(t) => Some(registry::find_chronotable(&client, t).await?.table),
        None => None,
    };
    let now = partitions::now_or_db(&client, at).await?;
    let mut report = MoveReport::default();
    let mut matched_chunk = false;
    let mut settings = settings;
    for p in policies {
        if only.as_ref().is_some_and(|t| *t != p.table) {
            continue;
        }
        let Some(tier_after) = p.tier_after else {
            continue;
        };
        let Some(sync) = active_sync(&client, &p.table).await? else {
            continue;
        };
        let cutoff = bounds::to_datetime(now - tier_after.as_micros())?;
        let now_time = bounds::to_datetime(now)?;
        for c in registry::list_chunks(&client, &p.table, false).await? {
            let wanted = match chunk {
                Some(name) => c.chunk_name == name,
                None => c.status == ChunkStatus::Active && c.range_end <= cutoff,
            };
            if !wanted {
                continue;
            }
            matched_chunk = true;
            if c.status != ChunkStatus::Active {
                continue;
            }
            // A chunk still written to by design: locking it would stall its writers for
            // the gate's wait, and its rows are not final anyway.
            if c.range_end > now_time {
                let reason = format!(
                    "still current: its range ends at {}; a chunk is tiered once its range \
                     has passed",
                    c.range_end.to_rfc3339()
                );
                record_deferral(&client, &c, &reason).await?;
                report.deferred.push((c.chunk_name.clone(), reason));
                continue;
            }
            let tx = client
                .transaction()
                .await
                .pg_context(|| "starting a transaction".into())?;
            let c = match take_turn(&tx, &c, settings).await? {
                Turn::Ready(fresh) => fresh,
                Turn::Moved => continue,
                Turn::Busy(reason) => {
                    drop(tx);
                    record_deferral(&client, &c, &reason).await?;
                    report.deferred.push((c.chunk_name.clone(), reason));
                    continue;
                }
            };
            match gate::check(&tx, &mut announcer, &c, &sync, settings).await? {
                Gate::Pass { lsn, rows } => {
                    crate::catalog::registry::mark_chunk_tiered(&tx, &c.chunk_table(), rows)
                        .await?;
                    tx.commit()
                        .await
                        .pg_context(|| format!("committing the tiering of {}", c.chunk_name))?;
                    info!(chunk = %c.chunk_name, rows, durable = %lsn, "chunk tiered");
                    metrics::counter!("lakets_chunks_tiered_total").increment(1);
                    report.moved.push(c.chunk_name.clone());
                }
                Gate::Defer(reason) => {
                    drop(tx);
                    settings = after_deferral(settings, &reason);
                    record_deferral(&client, &c, &reason).await?;
                    report.deferred.push((c.chunk_name.clone(), reason));
                }
            }
        }
    }
    if let Some(name) = chunk
        && !matched_chunk
    {
        return Err(Error::NotFound {
            kind: "chunk of a table with a tiering policy:",
            name: name.to_owned(),
        });
    }
    Ok(report)
}

/// `execute_retention`: drops the chunks older than their table's `drop_after` (or only
/// `table`'s). A synced table's chunk must be tiered and pass the gate again.
pub async fn retention(
    db: &DbConfig,
    table: Option<&str>,
    settings: GateSettings,
    at: Option<DateTime<Utc>>,
) -> Result<MoveReport> {
    let client = crate::db::connect_with(db).await?;
    crate::catalog::check_installed(&client).await?;
    let only = match table {
        Some(t) => Some(registry::find_chronotable(&client, t).await?.table),
        None => None,
    };
    let now = partitions::now_or_db(&client, at).await?;
    let mut report = MoveReport::default();
    for p in policy::list_policies(&client).await? {
        if only.as_ref().is_some_and(|t| *t != p.table) {
            continue;
        }
        let Some(drop_after) = p.drop_after else {
            continue;
        };
        let cutoff = bounds::to_datetime(now - drop_after.as_micros())?;
        let candidates: Vec<Chunk> = registry::list_chunks(&client, &p.table, false)
            .await?
            .into_iter()
            .filter(|c| c.range_end <= cutoff)
            .collect();
        // A policy that tiers means the table is meant to be in the cold tier: without
        // an active sync (disabled, or moving to another location) nothing is dropped.
        report.merge(
            drop_chunks_gated(
                db,
                &p.table,
                candidates,
                true,
                p.tier_after.is_some(),
                settings,
            )
            .await?,
        );
    }
    Ok(report)
}

/// Drops `chunks` of `table`: through the gate when the table is synced (and, with
/// `require_tiered`, only tiered chunks), directly otherwise, unless `needs_sync` says it
/// must be synced. One transaction per chunk, each under the table's lifecycle lock.
pub async fn drop_chunks_gated(
    db: &DbConfig,
    table: &TableName,
    chunks: Vec<Chunk>,
    require_tiered: bool,
    needs_sync: bool,
    settings: GateSettings,
) -> Result<MoveReport> {
    let mut client = crate::db::connect_with(db).await?;
    let mut announcer = Announcer::new(db);
    let sync = active_sync(&client, table).await?;
    let ct = registry::get_chronotable(&client, table)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "ChronoTable",
            name: table.to_string(),
        })?;
    let registered = crate::coldtier::sync::find_sync(&client, table)
        .await?
        .is_some();
    if (ct.sync_enabled || registered || needs_sync) && sync.is_none() {
        // Meant to be synced but no active sync: its initial copy is pending, or the sync
        // was disabled under a policy that tiers. Fail closed.
        let mut report = MoveReport::default();
        for c in chunks {
            let reason = "sink failing: the table's sync is not active (initial copy pending, \
                          or disabled under a tiering policy)";
            record_deferral(&client, &c, reason).await?;
            report.deferred.push((c.chunk_name, reason.into()));
        }
        return Ok(report);
    }
    let mut report = MoveReport::default();
    let mut settings = settings;
    for c in chunks {
        if let (Some(_), true, false) = (&sync, require_tiered, c.status == ChunkStatus::Tiered) {
            let reason = "not tiered yet: a synced table's chunk is dropped only after tiering";
            record_deferral(&client, &c, reason).await?;
            report.deferred.push((c.chunk_name.clone(), reason.into()));
            continue;
        }
        let tx = client
            .transaction()
            .await
            .pg_context(|| "starting a transaction".into())?;
        let c = match take_turn(&tx, &c, settings).await? {
            Turn::Ready(fresh) => fresh,
            Turn::Moved => continue,
            Turn::Busy(reason) => {
                drop(tx);
                record_deferral(&client, &c, &reason).await?;
                report.deferred.push((c.chunk_name.clone(), reason));
                continue;
            }
        };
        let target = c.chunk_table();
        // Partition DDL of the table (chunk creation, replica identity) takes turns with
        // the drop. Its lock comes before the gate's lock on the chunk: DDL takes them in
        // that order too, so the two never wait for each other in a circle.
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}'",
            partitions::DDL_LOCK_TIMEOUT
        ))
        .await
        .pg_context(|| "setting lock_timeout".into())?;
        if let Err(e) = partitions::lock_table_ddl(&tx, table).await {
            if matches!(e.sqlstate(), Some("55P03" | "40P01")) {
                drop(tx);
                let reason = "lock timeout: partition maintenance of the table held its lock; the drop waits for the next run";
                record_deferral(&client, &c, reason).await?;
                report.deferred.push((c.chunk_name.clone(), reason.into()));
                continue;
            }
            return Err(e);
        }
        if let Some(sync) = &sync {
            match gate::check(&tx, &mut announcer, &c, sync, settings).await? {
                Gate::Pass { .. } => {}
                Gate::Defer(reason) => {
                    drop(tx);
                    settings = after_deferral(settings, &reason);
                    record_deferral(&client, &c, &reason).await?;
                    report.deferred.push((c.chunk_name.clone(), reason));
                    continue;
                }
            }
            // The gate waited with its own patience; the drop's lock waits are bounded.
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = '{}'",
                partitions::DDL_LOCK_TIMEOUT
            ))
            .await
            .pg_context(|| "setting lock_timeout".into())?;
        }
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&target.quoted()])
            .await
            .pg_context(|| format!("looking up chunk {target}"))?
            .get(0);
        let measured = if exists {
            let row = tx
                .query_one(
                    &format!(
                        "SELECT (SELECT count(*) FROM {0}), pg_total_relation_size($1::text::regclass)",
                        target.quoted()
                    ),
                    &[&target.quoted()],
                )
                .await
                .pg_context(|| format!("measuring chunk {target}"))?;
            if let Err(e) = tx
                .batch_execute(&format!("DROP TABLE {}", target.quoted()))
                .await
            {
                if matches!(e.code().map(|c| c.code()), Some("55P03" | "40P01")) {
                    drop(tx);
                    let reason = "lock timeout: readers or writers held the chunk; the drop waits for the next run";
                    record_deferral(&client, &c, reason).await?;
                    report.deferred.push((c.chunk_name.clone(), reason.into()));
                    continue;
                }
                return Err(e).pg_context(|| format!("dropping chunk {target}"));
            }
            Some((row.get::<_, i64>(0), row.get::<_, i64>(1)))
        } else {
            warn!(chunk = %target, "chunk table was already gone (dropped outside lakets); recording it as dropped");
            None
        };
        registry::mark_chunk_dropped(&tx, &target, measured.map(|m| m.0), measured.map(|m| m.1))
            .await?;
        tx.commit()
            .await
            .pg_context(|| format!("committing the drop of {target}"))?;
        metrics::counter!("lakets_chunks_dropped_total").increment(1);
        report.moved.push(c.chunk_name.clone());
    }
    if !report.moved.is_empty() {
        info!(table = %table, dropped = report.moved.len(), "dropped chunks");
    }
    Ok(report)
}

#[cfg(test)]
mod deferral_tests {
    use super::*;

    #[test]
    fn every_reason_the_gate_gives_has_a_bounded_kind() {
        for (reason, kind) in [
            (
                "lagging: the chunk's last write at 0/1 is past what the Delta table holds (0/0)",
                "lagging",
            ),
            (
                "count mismatch: the chunk holds 3 rows, the Delta table 2",
                "count_mismatch",
            ),
            ("sink failing: no Delta table at /x", "sink_failing"),
            (
                "not tiered yet: a synced table's chunk is dropped only after tiering",
                "not_tiered_yet",
            ),
            (
                "lock timeout: readers or writers held the chunk",
                "lock_timeout",
            ),
            (
                "the WAL stream has a gap (slot s was invalidated); run `lakets resync`",
                "stream_gap",
            ),
            (
                "the chunk is no longer a partition of public.t (detached outside lakets)",
                "detached",
            ),
            (
                "the chunk's table is missing (dropped outside lakets)",
                "missing",
            ),
            ("something new", "other"),
        ] {
            assert_eq!(deferral_kind(reason), kind, "{reason}");
            assert!(DEFERRAL_KINDS.contains(&kind));
        }
    }
}
