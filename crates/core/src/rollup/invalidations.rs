//! The rollup invalidation operator: every insert, update (old and new row), delete and
//! truncate of a ChronoTable touches a bucket of each rollup that reads it; the touched
//! buckets are collected per rollup and group key, coalesced into ranges of adjacent
//! buckets, and written to `lakets._rollup_invalidation_log` once per flush, with the
//! operator's durable LSN in the same SQL transaction. The refresh consumes them.
//!
//! The operator learns of new and dropped rollups from the announcement that `rollup
//! create`/`drop` make in their transaction, so it starts invalidating exactly at the
//! position of the creation in the stream. (It then reads the rollup registry as it is:
//! a rollup dropped since is skipped when written, and one created later than a replayed
//! change only gets a needless invalidation, which its next refresh absorbs.)

use std::collections::BTreeSet;

use hashbrown::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::catalog::announce::{self, Announcement};
use crate::catalog::progress;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;
use crate::operators::Operator;
use crate::rollup::{self, Source, bound_text};
use crate::wal::lsn::Lsn;
use crate::wal::relation::Relation;
use crate::wal::transaction::{Change, OldRow, TxnSlice, check_update_old};
use crate::wal::value::Value;

pub const NAME: &str = "invalidations";

/// Beyond this many distinct group keys in one flush, a rollup's invalidations name whole
/// buckets (all groups): per-group rows would cost more than they save.
const MAX_GROUPS_PER_FLUSH: usize = 1024;

/// Flush early when this many (rollup, group, bucket) entries are pending.
const MAX_PENDING_BUCKETS: usize = 200_000;

/// A rollup reading a ChronoTable.
#[derive(Debug, Clone)]
pub struct Target {
    pub rollup: String,
    /// Bucket width, microseconds.
    pub width: i64,
    pub time_column: String,
    pub group_by: Vec<String>,
}

/// A run of adjacent invalidated buckets of one rollup (and group key, None: all groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidatedRange {
    pub rollup: String,
    pub lo: i64,
    pub hi: i64,
    pub group_key: Option<String>,
}

/// Where a target's columns sit in a relation's rows.
/// One rollup of a relation's table, and where its time and group columns are in the
/// relation's rows.
#[derive(Debug, Clone)]
struct Layout {
    target: Target,
    time: usize,
    groups: Vec<usize>,
}

/// A group key: the text of each group column (None: NULL), turned into JSON
/// (`{"symbol": "AAPL"}`) only when written; None: all groups.
type GroupKey = Option<Vec<Option<String>>>;

#[derive(Default)]
struct Pending {
    buckets: HashMap<GroupKey, BTreeSet<i64>>,
    /// Too many groups: everything goes to the all-groups key.
    collapsed: bool,
    /// A TRUNCATE: every bucket.
    everything: bool,
}

pub struct Invalidations {
    client: Client,
    slot: String,
    coalescer: Coalescer,
}

/// The operator's work without I/O: the buckets each change touches, collected per
/// rollup and group key, and coalesced into ranges when they are written.
#[derive(Default)]
pub struct Coalescer {
    targets: HashMap<TableName, Vec<Target>>,
    /// Per relation id, its table's rollups (empty: none), so that a row costs one lookup
    /// by relation id; cleared with the targets.
    layouts: HashMap<u32, Arc<[Layout]>>,
    pending: HashMap<String, Pending>,
    pending_buckets: usize,
}

impl Invalidations {
    pub async fn new(client: Client, slot: impl Into<String>) -> Result<Self> {
        crate::operators::prepare_session(&client, NAME).await?;
        let mut op = Invalidations {
            client,
            slot: slot.into(),
            coalescer: Coalescer::default(),
        };
        op.reload().await?;
        Ok(op)
    }

    async fn reload(&mut self) -> Result<()> {
        let targets = rollup::list_rollups(&self.client)
            .await?
            .into_iter()
            .filter_map(|r| match r.source {
                Source::Table {
                    table, time_column, ..
                } => Some((
                    table,
                    Target {
                        rollup: r.name,
                        width: r.width_micros,
                        time_column,
                        group_by: r.group_by,
                    },
                )),
                _ => None,
            });
        self.coalescer.set_targets(targets);
        Ok(())
    }
}

impl Coalescer {
    /// Replaces the rollups to invalidate (pending buckets stay).
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = (TableName, Target)>) {
        self.targets.clear();
        self.layouts.clear();
        for (table, target) in targets {
            self.targets.entry(table).or_default().push(target);
        }
    }

    /// (rollup, group, bucket) entries waiting to be written.
    pub fn pending_buckets(&self) -> usize {
        self.pending_buckets
    }

    fn layouts(&mut self, relation: &Relation) -> Result<Arc<[Layout]>> {
        if let Some(l) = self.layouts.get(&relation.id) {
            return Ok(l.clone());
        }
        let Some(targets) = self.targets.get(&relation.table) else {
            let none: Arc<[Layout]> = Arc::new([]);
            self.layouts.insert(relation.id, none.clone());
            return Ok(none);
        };
        let find = |name: &str, rollup: &str| {
            relation.column_index(name).ok_or_else(|| {
                Error::Unsupported(format!(
                    "column {name:?} of {} (read by rollup {rollup}) is not in its replicated \
                     rows (renamed or dropped?); streaming stops",
                    relation.table
                ))
            })
        };
        let layouts = targets
            .iter()
            .map(|t| {
                Ok(Layout {
                    target: t.clone(),
                    time: find(&t.time_column, &t.rollup)?,
                    groups: t
                        .group_by
                        .iter()
                        .map(|g| find(g, &t.rollup))
                        .collect::<Result<_>>()?,
                })
            })
            .collect::<Result<Arc<[_]>>>()?;
        self.layouts.insert(relation.id, layouts.clone());
        Ok(layouts)
    }

    /// Marks the buckets `row` lies in, for every rollup of its table. `old` fills values
    /// an update did not send (unchanged TOAST).
    fn touch(&mut self, relation: &Relation, row: &[Value], old: Option<&[Value]>) -> Result<()> {
        let layouts = self.layouts(relation)?;
        for layout in layouts.iter() {
            let target = &layout.target;
            let value = |i: usize| match row.get(i) {
                Some(Value::UnchangedToast) => old.and_then(|o| o.get(i)),
                v => v,
            };
            let Some(time) = value(layout.time).and_then(Value::as_time_micros) else {
                continue; // a NULL time lands in no bucket
            };
            let bucket = rollup::floor(time, target.width);
            let pending = self.pending.entry_ref(target.rollup.as_str()).or_default();
            let key = if target.group_by.is_empty() || pending.collapsed {
                None
            } else {
                // A group value not sent (unchanged TOAST) leaves the key unknown.
                layout
                    .groups
                    .iter()
                    .map(|i| match value(*i) {
                        Some(Value::UnchangedToast) | None => None,
                        Some(v) => Some(v.to_sql_text()),
                    })
                    .collect()
            };
            if key.is_some()
                && !pending.buckets.contains_key(&key)
                && pending.buckets.len() >= MAX_GROUPS_PER_FLUSH
            {
                pending.collapsed = true;
                let before: usize = pending.buckets.values().map(BTreeSet::len).sum();
                let mut all: BTreeSet<i64> = pending.buckets.drain().flat_map(|(_, b)| b).collect();
                all.insert(bucket);
                self.pending_buckets = self.pending_buckets - before + all.len();
                pending.buckets.insert(None, all);
                continue;
            }
            if pending.buckets.entry(key).or_default().insert(bucket) {
                self.pending_buckets += 1;
            }
        }
        Ok(())
    }

    /// Checks that an old row carries the time and group columns of every rollup of its
    /// table (a key-only row would invalidate the wrong group, or none).
    fn check_old(&mut self, relation: &Relation, old: Option<&OldRow>) -> Result<()> {
        if old.is_some_and(|o| !o.key_only) {
            return Ok(());
        }
        let layouts = self.layouts(relation)?;
        if layouts.is_empty() {
            return Ok(());
        }
        let needed: Vec<usize> = layouts
            .iter()
            .flat_map(|l| std::iter::once(l.time).chain(l.groups.iter().copied()))
            .collect();
        check_update_old(relation, old, &needed, "rollup invalidation operator")
    }

    /// Marks what one change touches.
    pub fn apply(&mut self, change: &Change) -> Result<()> {
        match change {
            Change::Insert { relation, new } => self.touch(relation, new, None),
            Change::Update { relation, old, new } => {
                self.check_old(relation, old.as_ref())?;
                if let Some(old) = old {
                    self.touch(relation, &old.values, None)?;
                }
                self.touch(relation, new, old.as_ref().map(|o| o.values.as_slice()))
            }
            Change::Delete { relation, old } => {
                self.check_old(relation, Some(old))?;
                self.touch(relation, &old.values, None)
            }
            Change::Truncate { relations, .. } => {
                for r in relations {
                    for t in self.targets.get(&r.table).into_iter().flatten() {
                        self.pending.entry(t.rollup.clone()).or_default().everything = true;
                    }
                }
                Ok(())
            }
            Change::Schema { relation, .. } => {
                self.layouts.remove(&relation.id);
                Ok(())
            }
            Change::Message { .. } => Ok(()),
        }
    }

    /// The pending buckets as ranges of adjacent buckets, per rollup and group key.
    pub fn ranges(&self) -> Vec<InvalidatedRange> {
        let targets: HashMap<&str, &Target> = self
            .targets
            .values()
            .flatten()
            .map(|t| (t.rollup.as_str(), t))
            .collect();
        let mut out = Vec::new();
        for (name, pending) in &self.pending {
            if pending.everything {
                continue; // see `truncated`
            }
            let Some(target) = targets.get(name.as_str()) else {
                continue; // dropped since
            };
            let width = target.width;
            for (key, buckets) in &pending.buckets {
                let group_key = key.as_ref().map(|values| {
                    let map: serde_json::Map<String, serde_json::Value> = target
                        .group_by
                        .iter()
                        .cloned()
                        .zip(values.iter().map(|v| v.clone().into()))
                        .collect();
                    serde_json::Value::Object(map).to_string()
                });
                let mut push = |(lo, hi): (i64, i64)| {
                    out.push(InvalidatedRange {
                        rollup: name.clone(),
                        lo,
                        hi,
                        group_key: group_key.clone(),
                    })
                };
                let mut run: Option<(i64, i64)> = None;
                for &b in buckets {
                    match &mut run {
                        Some((_, hi)) if *hi == b => *hi = b.saturating_add(width),
                        _ => {
                            if let Some(done) = run.take() {
                                push(done);
                            }
                            run = Some((b, b.saturating_add(width)));
                        }
                    }
                }
                if let Some(done) = run {
                    push(done);
                }
            }
        }
        out
    }

    /// Rollups invalidated whole by a TRUNCATE, with the table they read (None: the
    /// rollup was dropped since).
    pub fn truncated(&self) -> impl Iterator<Item = (&str, Option<&TableName>)> {
        self.pending
            .iter()
            .filter(|(_, p)| p.everything)
            .map(|(name, _)| {
                let table = self
                    .targets
                    .iter()
                    .find(|(_, ts)| ts.iter().any(|t| &t.rollup == name))
                    .map(|(table, _)| table);
                (name.as_str(), table)
            })
    }

    /// Forgets what was written.
    pub fn clear(&mut self) {
        self.pending.clear();
        self.pending_buckets = 0;
    }
}

/// What a TRUNCATE of `table` invalidates: everything, or, once chunks have been
/// dropped, the ranges of the chunks still in PostgreSQL. The candles of dropped chunks
/// stay, as the cold tier keeps their rows.
async fn hot_ranges(client: &Client, table: &TableName) -> Result<Vec<(i64, i64)>> {
    let chunks = crate::catalog::registry::chunk_ranges(client, table).await?;
    if !chunks.iter().any(|c| c.dropped) {
        return Ok(vec![(i64::MIN, i64::MAX)]);
    }
    Ok(chunks
        .iter()
        .filter(|c| !c.dropped)
        .map(|c| (c.start_micros, c.end_micros))
        .collect())
}

impl Operator for Invalidations {
    fn name(&self) -> &str {
        NAME
    }

    async fn durable_lsn(&mut self) -> Result<Lsn> {
        progress::load(&self.client, &self.slot, NAME).await
    }

    async fn apply(&mut self, slice: &TxnSlice) -> Result<()> {
        for change in &slice.changes {
            if let Change::Message { prefix, content } = change {
                // Rollups created or dropped: invalidations start (or stop) exactly here.
                if prefix == announce::PREFIX
                    && let Some(Announcement::RollupsChanged { .. }) =
                        announce::verify(&self.client, content, slice.xid).await?
                {
                    self.reload().await?;
                }
                continue;
            }
            self.coalescer.apply(change)?;
        }
        Ok(())
    }

    async fn flush(&mut self, through: Lsn) -> Result<()> {
        let (mut rollups, mut los, mut his, mut keys) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (name, table) in self.coalescer.truncated() {
            let ranges = match table {
                Some(table) => hot_ranges(&self.client, table).await?,
                None => vec![(i64::MIN, i64::MAX)],
            };
            for (lo, hi) in ranges {
                rollups.push(name.to_owned());
                los.push(bound_text(lo));
                his.push(bound_text(hi));
                keys.push(None);
            }
        }
        for r in self.coalescer.ranges() {
            rollups.push(r.rollup);
            los.push(bound_text(r.lo));
            his.push(bound_text(r.hi));
            keys.push(r.group_key);
        }
        let tx = self
            .client
            .transaction()
            .await
            .pg_context(|| "starting the invalidation transaction".into())?;
        if !rollups.is_empty() {
            // Rollups dropped since we loaded the registry are skipped.
            crate::catalog::rollup_registry::invalidate_registered(
                &tx, &rollups, &los, &his, &keys,
            )
            .await?;
        }
        progress::store(&tx, &self.slot, NAME, through).await?;
        tx.commit()
            .await
            .pg_context(|| "committing rollup invalidations".into())?;
        metrics::counter!("lakets_rollup_invalidations_written_total")
            .increment(rollups.len() as u64);
        self.coalescer.clear();
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.coalescer.pending_buckets() >= MAX_PENDING_BUCKETS
    }
}

/// The rollup invalidation log in the operator list ([`crate::operators::COMPONENTS`]).
pub struct InvalidationsComponent;

pub static COMPONENT: InvalidationsComponent = InvalidationsComponent;

impl crate::operators::Component for InvalidationsComponent {
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
                Invalidations::new(crate::db::connect_with(ctx.db).await?, ctx.slot).await?;
            Ok(pipeline.operator(operator))
        })
    }

    fn state_registry(&self) -> Option<crate::catalog::registry::FeatureRegistry> {
        Some(crate::catalog::registry::FeatureRegistry::Rollup)
    }

    /// Invalidates every rollup over a ChronoTable across the hot chunks' ranges (rollups
    /// over rollups follow at their refresh).
    fn resync<'a>(
        &'a self,
        _db: &'a crate::db::DbConfig,
        client: &'a mut Client,
        report: &'a mut crate::coldtier::resync::ResyncReport,
    ) -> crate::operators::LocalBoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for r in rollup::list_rollups(&*client).await? {
                if let Source::Table { table, .. } = &r.source {
                    invalidate_hot_range(client, &r.name, table).await?;
                    report.rollups.push(r.name.clone());
                }
            }
            Ok(())
        })
    }
}

/// Marks a rollup's buckets over the hot chunks' ranges for recomputation.
async fn invalidate_hot_range(client: &Client, rollup: &str, table: &TableName) -> Result<()> {
    let ranges = hot_ranges(client, table).await?;
    let (los, his): (Vec<String>, Vec<String>) = ranges
        .iter()
        .map(|&(lo, hi)| (bound_text(lo), bound_text(hi)))
        .unzip();
    crate::catalog::rollup_registry::invalidate_hot_ranges(client, rollup, &los, &his).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::relation::RelationColumn;

    const MINUTE: i64 = 60_000_000;

    fn ticks() -> Arc<Relation> {
        let column = |name: &str, oid: u32| RelationColumn::new(name, oid, false);
        Arc::new(Relation {
            id: 7,
            table: TableName::new("public", "ticks"),
            replica_identity: b'd',
            columns: vec![column("time", 1184), column("symbol", 25)],
        })
    }

    fn insert(time: i64, symbol: &str) -> Change {
        Change::Insert {
            relation: ticks(),
            new: vec![Value::Timestamptz(time), Value::Text(symbol.into())],
        }
    }

    fn target(rollup: &str) -> (TableName, Target) {
        (
            TableName::new("public", "ticks"),
            Target {
                rollup: rollup.into(),
                width: MINUTE,
                time_column: "time".into(),
                group_by: vec!["symbol".into()],
            },
        )
    }

    #[test]
    fn a_rollup_added_later_sees_the_rows_of_a_relation_that_had_none() {
        let mut coalescer = Coalescer::default();
        coalescer.apply(&insert(0, "A")).unwrap();
        assert_eq!(
            coalescer.pending_buckets(),
            0,
            "no rollup reads the table yet"
        );
        coalescer.set_targets([target("ticks_1m")]);
        coalescer.apply(&insert(MINUTE + 5, "A")).unwrap();
        coalescer.apply(&insert(MINUTE + 6, "A")).unwrap();
        coalescer.apply(&insert(2 * MINUTE, "B")).unwrap();
        assert_eq!(coalescer.pending_buckets(), 2);
        let mut ranges = coalescer.ranges();
        ranges.sort_by(|a, b| a.group_key.cmp(&b.group_key));
        assert_eq!(
            ranges,
            vec![
                InvalidatedRange {
                    rollup: "ticks_1m".into(),
                    lo: MINUTE,
                    hi: 2 * MINUTE,
                    group_key: Some(r#"{"symbol":"A"}"#.into()),
                },
                InvalidatedRange {
                    rollup: "ticks_1m".into(),
                    lo: 2 * MINUTE,
                    hi: 3 * MINUTE,
                    group_key: Some(r#"{"symbol":"B"}"#.into()),
                },
            ]
        );
        // Two rollups of the table: each row marks both.
        coalescer.clear();
        coalescer.set_targets([target("ticks_1m"), target("ticks_1m_too")]);
        coalescer.apply(&insert(0, "A")).unwrap();
        assert_eq!(coalescer.pending_buckets(), 2);
        coalescer.set_targets([]);
        coalescer.apply(&insert(10 * MINUTE, "A")).unwrap();
        assert_eq!(coalescer.pending_buckets(), 2, "no rollup left to mark");
    }
}
