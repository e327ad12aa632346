//! The chunk tracker: stamps `lakets._chunk_metadata.last_write_lsn` with the end LSN of the
//! last transaction that wrote to each chunk. The durability gate compares it with the cold
//! tier's durable LSN before a chunk may be dropped.
//!
//! Rows arrive as rows of their ChronoTable (the publication publishes via the partition
//! root), so the chunk is found from the time column and the chunk registry, in memory.
//! An update that moves a row between chunks touches both; a TRUNCATE touches every chunk.
//! Stamps are batched and written with the durable LSN in one SQL transaction.

use std::sync::Arc;

use hashbrown::{HashMap, HashSet};

use tokio_postgres::Client;
use tracing::warn;

use crate::catalog::progress;
use crate::catalog::registry::{self, ChronoTable};
use crate::chronotable::bounds::ChunkRange;
use crate::chronotable::chunk_map::ChunkMap;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::operators::Operator;
use crate::wal::lsn::Lsn;
use crate::wal::relation::Relation;
use crate::wal::transaction::{Change, Row, TxnSlice};

pub const NAME: &str = "chunk_tracker";

/// Flush early when this many chunks have unsaved stamps.
const MAX_PENDING_CHUNKS: usize = 10_000;

struct TrackedTable {
    info: ChronoTable,
    chunks: ChunkMap,
    names: Vec<String>,
}

pub struct ChunkTracker {
    client: Client,
    slot: String,
    tables: HashMap<TableName, TrackedTable>,
    /// Chunks written by the transaction being applied.
    in_txn: HashSet<(String, String)>,
    /// Chunk -> end LSN of the last committed transaction that wrote it, not yet stored.
    pending: HashMap<(String, String), Lsn>,
    /// Where the transaction's previous row went: a row of the same relation in the same
    /// chunk (most of a tick stream's rows) is placed without any lookup.
    placed: Option<Placed>,
}

/// A chunk already in `in_txn`, for rows of `relation` (held, so the pointer stays its).
struct Placed {
    relation: Arc<Relation>,
    time_index: usize,
    range: ChunkRange,
}

impl ChunkTracker {
    pub async fn new(client: Client, slot: impl Into<String>) -> Result<Self> {
        crate::operators::prepare_session(&client, NAME).await?;
        let mut tracker = ChunkTracker {
            client,
            slot: slot.into(),
            tables: HashMap::new(),
            in_txn: HashSet::new(),
            pending: HashMap::new(),
            placed: None,
        };
        for ct in registry::list_chronotables(&tracker.client).await? {
            tracker.load_table(ct).await?;
        }
        Ok(tracker)
    }

    async fn load_table(&mut self, info: ChronoTable) -> Result<()> {
        let chunks = registry::list_chunks(&self.client, &info.table, true).await?;
        let mut pairs: Vec<(ChunkRange, String)> = chunks
            .into_iter()
            .map(|c| {
                (
                    ChunkRange {
                        start: c.range_start_micros(),
                        end: c.range_end_micros(),
                    },
                    c.chunk_name,
                )
            })
            .collect();
        pairs.sort_by_key(|(r, _)| r.start);
        let (ranges, names): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        self.placed = None;
        self.tables.insert(
            info.table.clone(),
            TrackedTable {
                info,
                chunks: ChunkMap::new(ranges),
                names,
            },
        );
        Ok(())
    }

    /// Reloads one table's chunks (new chunks were created since we loaded them), or the
    /// registry entry of a table we do not know yet.
    async fn reload(&mut self, table: &TableName) -> Result<bool> {
        match registry::get_chronotable(&self.client, table).await? {
            Some(info) => {
                self.load_table(info).await?;
                Ok(true)
            }
            None => {
                self.tables.remove(table);
                Ok(false)
            }
        }
    }

    async fn touch_row(&mut self, relation: &Arc<Relation>, row: &Row) -> Result<()> {
        if let Some(placed) = &self.placed
            && Arc::ptr_eq(&placed.relation, relation)
            && let Some(t) = row.get(placed.time_index).and_then(|v| v.as_time_micros())
            && placed.range.contains(t)
        {
            return Ok(());
        }
        if !self.tables.contains_key(&relation.table) && !self.reload(&relation.table).await? {
            return Ok(()); // not a ChronoTable
        }
        let tracked = &self.tables[&relation.table];
        // A write whose chunk cannot be told would leave last_write_lsn too low, and the
        // durability gate trusts it: stop the stream instead (nothing is acknowledged).
        let Some(index) = relation.column_index(&tracked.info.time_column) else {
            return Err(Error::Unsupported(format!(
                "the time column {:?} of ChronoTable {} is not in its replicated rows (renamed \
                 or dropped?); the chunk tracker cannot place writes, so streaming stops",
                tracked.info.time_column, relation.table
            )));
        };
        let Some(t) = row.get(index).and_then(|v| v.as_time_micros()) else {
            return Err(Error::Unsupported(format!(
                "a replicated row of {} has no usable value in its time column {:?}: {:?}",
                relation.table,
                tracked.info.time_column,
                row.get(index)
            )));
        };
        let locate = |tr: &TrackedTable| {
            tr.chunks
                .locate(t)
                .map(|i| (tr.names[i].clone(), tr.chunks.ranges()[i]))
        };
        let found = match locate(tracked) {
            Some(found) => Some(found),
            None => {
                self.reload(&relation.table).await?;
                self.tables.get(&relation.table).and_then(locate)
            }
        };
        match found {
            Some((chunk, range)) => {
                self.in_txn.insert((relation.table.schema.clone(), chunk));
                self.placed = Some(Placed {
                    relation: relation.clone(),
                    time_index: index,
                    range,
                });
            }
            None => {
                // Only a chunk removed from the registry by hand can cause this.
                warn!(table = %relation.table, time = t, "write to a time outside every registered chunk");
                metrics::counter!("lakets_chunk_tracker_unplaced_writes_total").increment(1);
            }
        }
        Ok(())
    }

    async fn touch_all(&mut self, table: &TableName) -> Result<()> {
        if !self.tables.contains_key(table) && !self.reload(table).await? {
            return Ok(());
        }
        if let Some(tracked) = self.tables.get(table) {
            for name in &tracked.names {
                self.in_txn.insert((table.schema.clone(), name.clone()));
            }
        }
        Ok(())
    }
}

impl Operator for ChunkTracker {
    fn name(&self) -> &str {
        NAME
    }

    async fn durable_lsn(&mut self) -> Result<Lsn> {
        progress::load(&self.client, &self.slot, NAME).await
    }

    async fn apply(&mut self, slice: &TxnSlice) -> Result<()> {
        if slice.first {
            self.in_txn.clear();
            self.placed = None;
        }
        for change in &slice.changes {
            match change {
                Change::Insert { relation, new } => self.touch_row(relation, new).await?,
                Change::Update { relation, old, new } => {
                    self.touch_row(relation, new).await?;
                    if let Some(old) = old {
                        self.touch_row(relation, &old.values).await?;
                    }
                }
                Change::Delete { relation, old } => self.touch_row(relation, &old.values).await?,
                Change::Truncate { relations, .. } => {
                    for r in relations {
                        self.touch_all(&r.table).await?;
                    }
                }
                Change::Schema { .. } | Change::Message { .. } => {}
            }
        }
        if let Some(end) = slice.end_lsn {
            self.placed = None;
            for chunk in self.in_txn.drain() {
                self.pending.insert(chunk, end);
            }
        }
        Ok(())
    }

    async fn flush(&mut self, through: Lsn) -> Result<()> {
        // Sorted, so that row locks are always taken in the same order.
        let mut stamps: Vec<(&(String, String), &Lsn)> = self.pending.iter().collect();
        stamps.sort();
        let schemas: Vec<&str> = stamps.iter().map(|((s, _), _)| s.as_str()).collect();
        let names: Vec<&str> = stamps.iter().map(|((_, c), _)| c.as_str()).collect();
        let lsns: Vec<String> = stamps.iter().map(|(_, l)| l.to_string()).collect();
        let tx = self
            .client
            .transaction()
            .await
            .pg_context(|| "starting the chunk tracker's transaction".into())?;
        if !schemas.is_empty() {
            crate::catalog::registry::stamp_last_writes(&tx, &schemas, &names, &lsns).await?;
        }
        progress::store(&tx, &self.slot, NAME, through).await?;
        tx.commit()
            .await
            .pg_context(|| "committing the chunk tracker's progress".into())?;
        self.pending.clear();
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.pending.len() >= MAX_PENDING_CHUNKS
    }
}

/// The chunk tracker in the operator list ([`crate::operators::COMPONENTS`]).
pub struct TrackerComponent;

pub static COMPONENT: TrackerComponent = TrackerComponent;

impl crate::operators::Component for TrackerComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach<'a>(
        &'a self,
        pipeline: crate::wal::Pipeline,
        ctx: &'a crate::operators::Attach<'a>,
    ) -> crate::wal::pipeline::BoxFuture<'a, Result<crate::wal::Pipeline>> {
        Box::pin(async move {
            let operator =
                ChunkTracker::new(crate::db::connect_with(ctx.db).await?, ctx.slot).await?;
            Ok(pipeline.operator(operator))
        })
    }
}
