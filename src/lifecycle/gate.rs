//! The durability gate (DESIGN.md invariant 3): a chunk of a synced table may become
//! tiered, and may be dropped, only when everything ever written to it is safely in the
//! Delta table. Any doubt defers, with the reason recorded.
//!
//! Inside the caller's transaction:
//! 1. Writes to the chunk are blocked (EXCLUSIVE lock, bounded by `lock_timeout`: a busy
//!    chunk defers instead of stalling its writers; other chunks are never touched). A
//!    chunk that is missing, or no longer a partition of its table, defers.
//! 2. The WAL insert position `L` is read: every transaction that wrote to the chunk
//!    committed before `L`. A heartbeat message makes the WAL move past `L` even when
//!    nothing else is written.
//! 3. The consumer must confirm `L`: the slot of a consumer running the Delta operator is
//!    acknowledged only up to what every operator has stored, so confirmation past `L`
//!    means the Delta table holds every change to the chunk. Waited for, up to `wait`.
//! 4. The chunk's `last_write_lsn` (from the chunk tracker) must not be past it either.
//! 5. The Delta table must hold exactly as many rows in the chunk's range as the chunk.

use std::time::{Duration, Instant};

use tokio_postgres::GenericClient;
use tokio_postgres::types::PgLsn;

use crate::catalog::registry::Chunk;
use crate::delta::mirror::shape_of;
use crate::error::{PgResultExt, Result};
use crate::ident::TableName;
use crate::sync::SyncConfig;
use crate::wal::lsn::Lsn;
use crate::wal::transaction::HEARTBEAT_PREFIX;

#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    /// How long to wait for writers of the chunk before deferring.
    pub lock_timeout: Duration,
    /// How long to wait for the consumer to confirm the lock position.
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
/// (the caller changes the chunk's status or drops it before committing).
pub async fn check(
    tx: &tokio_postgres::Transaction<'_>,
    chunk: &Chunk,
    sync: &SyncConfig,
    settings: GateSettings,
) -> Result<Gate> {
    // A gap in the stream: the Delta table may lack changes of any chunk, whatever the
    // counts say (an UPDATE keeps them). Checked before the lock: writers need not wait.
    let gaps = crate::wal::setup::list_gaps(tx).await?;
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
            Some("55P03") => format!(
                "lock timeout: writers held the chunk for more than {:?}",
                settings.lock_timeout
            ),
            Some("42P01") => "the chunk's table is missing (dropped outside lakets)".into(),
            _ => return Err(e).pg_context(|| format!("locking chunk {target}")),
        };
        return Ok(Gate::Defer(reason));
    }
    // A chunk detached outside lakets has left the publication: writes to it no longer
    // reach the WAL consumer, so neither the confirmed position nor the row count can
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
    tx.execute(
        "SELECT pg_logical_emit_message(false, $1, '')",
        &[&HEARTBEAT_PREFIX],
    )
    .await
    .pg_context(|| "emitting a heartbeat".into())?;

    // 3. The consumer confirms the position.
    let started = Instant::now();
    let confirmed = loop {
        let confirmed = delta_consumer_confirmed(tx).await?;
        if confirmed.is_some_and(|c| c >= lock_lsn) || started.elapsed() >= settings.wait {
            break confirmed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let durable = match confirmed {
        None => {
            return Ok(Gate::Defer(
                "lagging: no consumer running the Delta operator has confirmed anything \
                 (is `lakets run` running?)"
                    .into(),
            ));
        }
        Some(c) if c < lock_lsn => {
            return Ok(Gate::Defer(format!(
                "lagging: the Delta operator's consumer has confirmed up to {c}, the chunk was \
                 locked at {lock_lsn} (is `lakets run` running? is the object store failing?)"
            )));
        }
        Some(c) => c,
    };

    // 4. The chunk tracker's stamp.
    let last_write: Option<PgLsn> = tx
        .query_one(
            "SELECT last_write_lsn FROM lakets._chunk_metadata WHERE schema_name = $1 AND chunk_name = $2",
            &[&chunk.schema_name, &chunk.chunk_name],
        )
        .await
        .pg_context(|| format!("reading the metadata of {target}"))?
        .get(0);
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
    let cold = match count_in_delta(sync, chunk).await {
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

/// The furthest confirmed position of a slot whose consumer has run the Delta operator.
async fn delta_consumer_confirmed(client: &impl GenericClient) -> Result<Option<Lsn>> {
    let row = client
        .query_one(
            "SELECT max(s.confirmed_flush_lsn)
               FROM pg_replication_slots s
               JOIN lakets._sink_progress p ON p.slot_name = s.slot_name AND p.operator = $1
              WHERE s.wal_status IS DISTINCT FROM 'lost'",
            &[&crate::operators::delta_sink::NAME],
        )
        .await
        .pg_context(|| "reading the consumer's confirmed position".into())?;
    Ok(row.get::<_, Option<PgLsn>>(0).map(Lsn::from))
}

async fn count_in_delta(sync: &SyncConfig, chunk: &Chunk) -> Result<u64> {
    let delta = crate::delta::table::open(&sync.location)
        .await?
        .ok_or_else(|| crate::Error::NotFound {
            kind: "Delta table at",
            name: crate::delta::table::display_location(&sync.location),
        })?;
    let shape = shape_of(&delta, &sync.time_column, sync.partitioning)?;
    crate::delta::read::count_range(
        &delta,
        &shape,
        chunk.range_start_micros(),
        chunk.range_end_micros(),
    )
    .await
}
