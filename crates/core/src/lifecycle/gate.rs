//! The durability gate (DESIGN.md invariant 3): a chunk of a synced table may become
//! tiered, and may be dropped, only when everything ever written to it is safely in the
//! Delta table. Any doubt defers, with the reason recorded.
//!
//! Inside the caller's transaction:
//! 1. Writes to the chunk are blocked (EXCLUSIVE lock, bounded by `lock_timeout`: a busy
//!    chunk defers instead of stalling its writers; other chunks are never touched). A
//!    chunk that is missing, or no longer a partition of its table, defers.
//! 2. The WAL insert position `L` is read: every transaction that wrote to the chunk
//!    committed before `L`.
//! 3. The evidence comes from the Delta table itself, at the sync's current location: the
//!    `txn` version of the stream's app id (the end LSN of the last transaction the
//!    stream committed there, or a position it recorded with nothing to commit) must be
//!    at or past `L`. Not the slot's confirmation, which says nothing about where the
//!    changes went (a sync moved mid-stream, say). An idle table is asked, through an
//!    announcement in the stream, to record its position; waited for, up to `wait`.
//! 4. The chunk's `last_write_lsn` (from the chunk tracker) must not be past it either.
//! 5. The Delta table must hold exactly as many rows in the chunk's range as the chunk.

use std::time::{Duration, Instant};

use tokio_postgres::GenericClient;
use tokio_postgres::types::PgLsn;

use crate::catalog::announce::{Announcement, Announcer};
use crate::catalog::registry::Chunk;
use crate::coldtier::sync::SyncConfig;
use crate::error::{PgResultExt, Result};
use crate::ident::TableName;
use crate::wal::lsn::Lsn;

#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    /// How long to wait for writers of the chunk before deferring.
    pub lock_timeout: Duration,
    /// How long to wait for the Delta table to record the lock position.
    pub wait: Duration,
}

impl Default for GateSettings {
    fn default() -> Self {
        GateSettings {
            lock_timeout: Duration::from_secs(2),
            wait: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Safe: the chunk's rows (this many) are all in the Delta table, as of `lsn`.
    Pass { lsn: Lsn, rows: i64 },
    /// Not now, and why.
    Defer(String),
}

/// Locks the chunk against writes in `tx` and checks it; on `Pass` the lock is still held
/// (the caller changes the chunk's status or drops it before committing). `announcer`
/// commits, beside `tx`, the request an idle table needs.
pub async fn check(
    tx: &tokio_postgres::Transaction<'_>,
    announcer: &mut Announcer<'_>,
    chunk: &Chunk,
    sync: &SyncConfig,
    settings: GateSettings,
) -> Result<Gate> {
    // A gap in the stream: the Delta table may lack changes of any chunk, whatever the
    // counts say (an UPDATE keeps them). Checked before the lock: writers need not wait.
    // Looked for here too, not only when a stream starts: after a failover the jobs may
    // run before the stream's own look at the new server.
    for consumer in crate::catalog::replication::list_consumers(tx).await? {
        crate::catalog::replication::detect_gap(tx, &consumer.slot_name).await?;
    }
    let gaps = crate::catalog::replication::list_gaps(tx).await?;
    if let Some(g) = gaps.first() {
        return Ok(Gate::Defer(format!(
            "the WAL stream has a gap (slot {} was {}); run `lakets resync`",
            g.slot_name, g.reason
        )));
    }
    let target = chunk.chunk_table();
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        settings.lock_timeout.as_millis().max(1)
    ))
    .await
    .pg_context(|| "setting lock_timeout".into())?;
    if let Err(e) = tx
        .batch_execute(&format!("LOCK TABLE {} IN EXCLUSIVE MODE", target.quoted()))
        .await
    {
        let reason = match e.code().map(|c| c.code()) {
            Some("55P03" | "40P01") => format!(
                "lock timeout: writers held the chunk for more than {:?}",
                settings.lock_timeout
            ),
            Some("42P01") => "the chunk's table is missing (dropped outside lakets)".into(),
            _ => return Err(e).pg_context(|| format!("locking chunk {target}")),
        };
        return Ok(Gate::Defer(reason));
    }
    // A chunk detached outside lakets has left the publication: writes to it no longer
    // reach the WAL consumer, so neither the Delta table's position nor the row count can
    // vouch for it.
    let parent = TableName::new(chunk.schema_name.clone(), chunk.table_name.clone());
    let attached: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits
                             WHERE inhrelid = $1::text::regclass
                               AND inhparent = $2::text::regclass)",
            &[&target.quoted(), &parent.quoted()],
        )
        .await
        .pg_context(|| format!("checking that {target} is a partition of {parent}"))?
        .get(0);
    if !attached {
        return Ok(Gate::Defer(format!(
            "the chunk is no longer a partition of {parent} (detached outside lakets); \
             attach it again or drop it yourself"
        )));
    }
    let lock_lsn: Lsn = tx
        .query_one("SELECT pg_current_wal_insert_lsn()", &[])
        .await
        .pg_context(|| "reading the WAL position".into())?
        .get::<_, PgLsn>(0)
        .into();

    // 3. The Delta table's own record, at the sync's current location.
    let mut delta = match crate::delta::table::open(&sync.location).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Ok(Gate::Defer(format!(
                "sink failing: no Delta table at {}",
                crate::delta::table::display_location(&sync.location)
            )));
        }
        Err(e) => return Ok(Gate::Defer(format!("sink failing: {e}"))),
    };
    let app_ids = stream_app_ids(tx, &sync.table, sync.source.as_deref()).await?;
    let started = Instant::now();
    let mut asked = false;
    let durable = loop {
        let recorded = match recorded_position(&delta, &app_ids).await {
            Ok(r) => r,
            Err(e) => return Ok(Gate::Defer(format!("sink failing: {e}"))),
        };
        if recorded.is_some_and(|r| r >= lock_lsn) {
            break recorded;
        }
        if !asked {
            // An idle table records a position only when asked; a busy one passes `L`
            // with its next flush anyway.
            announcer
                .announce(&Announcement::GateWaiting {
                    table: sync.table.clone(),
                    lock_lsn,
                })
                .await?;
            asked = true;
        }
        if started.elapsed() >= settings.wait {
            break recorded;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(e) = crate::delta::table::refresh(&mut delta).await {
            return Ok(Gate::Defer(format!("sink failing: {e}")));
        }
    };
    let location = crate::delta::table::display_location(&sync.location);
    let durable = match durable {
        None => {
            return Ok(Gate::Defer(format!(
                "lagging: the Delta table at {location} records no position of the stream \
                 yet (is `lakets run` running?)"
            )));
        }
        Some(d) if d < lock_lsn => {
            return Ok(Gate::Defer(format!(
                "lagging: the Delta table at {location} holds the stream up to {d}, the chunk \
                 was locked at {lock_lsn} (is `lakets run` running? is the object store \
                 failing?)"
            )));
        }
        Some(d) => d,
    };

    // 4. The chunk tracker's stamp.
    let last_write = crate::catalog::registry::last_write_lsn(tx, &chunk.chunk_table()).await?;
    if let Some(lw) = last_write.map(Lsn::from)
        && lw > durable
    {
        return Ok(Gate::Defer(format!(
            "lagging: the chunk's last write at {lw} is past what the Delta table holds ({durable})"
        )));
    }

    // 5. Same rows on both sides.
    let hot: i64 = tx
        .query_one(&format!("SELECT count(*) FROM {}", target.quoted()), &[])
        .await
        .pg_context(|| format!("counting the rows of {target}"))?
        .get(0);
    let cold = match count_in_delta(&delta, sync, chunk).await {
        Ok(n) => n,
        Err(e) => return Ok(Gate::Defer(format!("sink failing: {e}"))),
    };
    if cold != hot as u64 {
        return Ok(Gate::Defer(format!(
            "count mismatch: the chunk holds {hot} rows, the Delta table {cold} in its range \
             (run `lakets verify`)"
        )));
    }
    Ok(Gate::Pass {
        lsn: durable,
        rows: hot,
    })
}

/// The app ids under which the registered consumers' streams commit to `table`'s Delta
/// table (in a shared table: this cluster's streams only, under its source name).
async fn stream_app_ids(
    client: &impl GenericClient,
    table: &TableName,
    source: Option<&str>,
) -> Result<Vec<String>> {
    Ok(crate::catalog::replication::list_consumers(client)
        .await?
        .iter()
        .map(|c| crate::coldtier::sync::stream_app_id(&c.slot_name, table, source))
        .collect())
}

/// The furthest position a stream recorded in the Delta table.
async fn recorded_position(
    delta: &deltalake::DeltaTable,
    app_ids: &[String],
) -> Result<Option<Lsn>> {
    let mut best = None;
    for app_id in app_ids {
        if let Some(lsn) = crate::delta::table::txn_lsn(delta, app_id).await? {
            best = best.max(Some(lsn));
        }
    }
    Ok(best)
}

async fn count_in_delta(
    delta: &deltalake::DeltaTable,
    sync: &SyncConfig,
    chunk: &Chunk,
) -> Result<u64> {
    let shape = sync.shape(delta)?;
    crate::delta::read::count_range(
        delta,
        &shape,
        chunk.range_start_micros(),
        chunk.range_end_micros(),
    )
    .await
}
