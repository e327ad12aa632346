//! The Last Value Cache operator: keeps `lakets.lvc_<table>` (and an in-memory map) equal
//! to the latest row per key of each cached ChronoTable.
//!
//! Rules, per key: a row with a time greater than or equal to the cached one replaces it
//! (ties: the later commit wins); a late row never overwrites a newer one; an update or
//! delete of the cached row falls back to the latest remaining row, read from the table.
//! Changed keys are written once per flush (one upsert per key), with the operator's durable
//! LSN in the same SQL transaction. A table's changes committed before its cache was filled
//! (`start_lsn`) are skipped.

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use crate::catalog::announce::{self, Announcement};
use crate::catalog::progress;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::{TableName, quote_ident};
use crate::lvc::view::{LastValue, LvcView};
use crate::lvc::{self, LvcConfig};
use crate::operators::Operator;
use crate::wal::lsn::Lsn;
use crate::wal::relation::Relation;
use crate::wal::transaction::{Change, OldRow, TxnSlice, check_update_old};
use crate::wal::value::{ColumnType, Value, decode_text};

pub const NAME: &str = "lvc";

/// Flush early when this many keys have unsaved changes.
const MAX_DIRTY_KEYS: usize = 50_000;

/// A cached row: the time and the value columns, typed as they came (NULL as
/// `Value::Null`). They become PostgreSQL input text only where text is needed (the view,
/// the cache table), once per key and slice or flush, not once per row.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    time: i64,
    time_value: Value,
    values: Vec<Value>,
    lsn: Lsn,
    /// The cache's epoch when the key was last put in `touched` (0: never), so that a key
    /// changed by many rows of one slice is handed to the view once, with no allocation
    /// per row.
    touched_in: u64,
}

impl Entry {
    fn time_text(&self) -> String {
        self.time_value.to_sql_text().unwrap_or_default()
    }

    fn value_texts(&self) -> Vec<Option<String>> {
        self.values.iter().map(Value::to_sql_text).collect()
    }
}

/// A key: per key column, the key text of its typed value ([`Value::to_key_text`]), the
/// same whether it came from the stream or was read back from a table.
type Key = Vec<String>;

struct Cache {
    config: LvcConfig,
    /// SQL types of the cache table's columns (keys, time, values, lsn), for the casts.
    column_types: Vec<String>,
    /// The same columns' types, to read their text back into typed values.
    column_kinds: Vec<ColumnType>,
    entries: HashMap<Key, Entry>,
    /// Keys changed since the last flush (absent from `entries` = deleted).
    dirty: HashSet<Key>,
    /// Keys changed by the slice being applied, for the view.
    touched: Vec<Key>,
    /// Counts the hand-overs of `touched` (from 1).
    epoch: u64,
}

pub struct LastValueCache {
    client: Client,
    slot: String,
    caches: CacheSet,
    /// Where the service reads the cache from (API, subscriptions).
    view: Option<Arc<LvcView>>,
    /// The transaction of the slice being applied, and whether it is known visible.
    slice_xid: u32,
    slice_visible: bool,
}

/// Where a relation's rows go: its cache, and the indexes of the key, time and value
/// columns in its rows.
#[derive(Clone)]
struct Layout {
    /// Index in [`CacheSet::caches`].
    cache: usize,
    /// The cache's `start_lsn`: changes committed before are in its fill already.
    start_lsn: Lsn,
    keys: Vec<usize>,
    time: usize,
    values: Vec<usize>,
}

impl LastValueCache {
    /// Loads every registered cache into memory.
    pub async fn new(client: Client, slot: impl Into<String>) -> Result<Self> {
        crate::operators::prepare_session(&client, NAME).await?;
        let mut op = LastValueCache {
            client,
            slot: slot.into(),
            caches: CacheSet::default(),
            view: None,
            slice_xid: 0,
            slice_visible: false,
        };
        op.reload().await?;
        Ok(op)
    }

    /// Publishes every cached row, and each change as it is applied, to `view`.
    pub fn with_view(mut self, view: Arc<LvcView>) -> Self {
        for cache in self.caches.values() {
            view.register(
                &cache.config.table,
                cache.column_kinds[..cache.config.key_columns.len()].to_vec(),
            );
            view.publish(
                cache
                    .entries
                    .iter()
                    .map(|(key, entry)| last_value(&cache.config, key, Some(entry), entry.lsn)),
            );
        }
        self.view = Some(view);
        self
    }

    /// Loads every registered cache (at start).
    async fn reload(&mut self) -> Result<()> {
        for config in lvc::list_lvc(&self.client).await? {
            if !self.caches.contains_key(&config.table) {
                self.load(config).await?;
            }
        }
        Ok(())
    }

    /// Loads (or loads again) one cache from its table.
    async fn load(&mut self, config: LvcConfig) -> Result<()> {
        let columns = self
            .client
            .query(
                "SELECT format_type(a.atttypid, a.atttypmod), a.atttypid FROM pg_attribute a
                  WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&config.cache_table.quoted()],
            )
            .await
            .pg_context(|| format!("reading the columns of {}", config.cache_table))?;
        let column_types: Vec<String> = columns.iter().map(|r| r.get(0)).collect();
        let column_kinds: Vec<ColumnType> = columns
            .iter()
            .map(|r| ColumnType::from_oid(r.get(1)))
            .collect();
        let entries = self.load_entries(&config, &column_kinds).await?;
        if let Some(view) = &self.view {
            view.register(
                &config.table,
                column_kinds[..config.key_columns.len()].to_vec(),
            );
            view.publish(
                entries
                    .iter()
                    .map(|(key, entry)| last_value(&config, key, Some(entry), entry.lsn)),
            );
        }
        self.caches.remove(&config.table);
        self.caches
            .insert(config, column_types, column_kinds, entries);
        Ok(())
    }

    /// Applies an announced change of the registry at its position in the stream.
    async fn follow(&mut self, change: Announcement) -> Result<()> {
        match change {
            Announcement::LvcEnabled { table } | Announcement::LvcRefilled { table } => {
                // Read as the announcing transaction left it: the fill it committed. A
                // cache loaded at start from that same fill (a replay) stays as it is.
                if let Some(config) = lvc::list_lvc(&self.client)
                    .await?
                    .into_iter()
                    .find(|c| c.table == table)
                {
                    let loaded = self
                        .caches
                        .get(&table)
                        .is_some_and(|c| c.config.start_lsn == config.start_lsn);
                    if !loaded {
                        self.load(config).await?;
                    }
                }
            }
            Announcement::LvcDisabled { table } => {
                self.caches.remove(&table);
                if let Some(view) = &self.view {
                    view.unregister(&table);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn load_entries(
        &self,
        config: &LvcConfig,
        kinds: &[ColumnType],
    ) -> Result<HashMap<Key, Entry>> {
        let mut entries = HashMap::new();
        let text_cols: Vec<String> = config
            .cache_columns()
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {}, (extract(epoch FROM {})*1000000)::bigint, lsn::text FROM {}",
                    text_cols.join(", "),
                    quote_ident(&config.time_column),
                    config.cache_table.quoted()
                ),
                &[],
            )
            .await
            .pg_context(|| format!("loading the cache {}", config.cache_table))?;
        let k = config.key_columns.len();
        let v = config.value_columns.len();
        for row in rows {
            // Text of this session read back into typed values: keys meet the stream's.
            let typed = |i: usize| -> Result<Option<Value>> {
                row.get::<_, Option<&str>>(i)
                    .map(|t| decode_text(kinds[i], t.as_bytes()))
                    .transpose()
            };
            let key: Key = (0..k)
                .map(|i| Ok(typed(i)?.and_then(|v| v.to_key_text()).unwrap_or_default()))
                .collect::<Result<_>>()?;
            let entry = Entry {
                time_value: typed(k)?.unwrap_or(Value::Null),
                values: (0..v)
                    .map(|i| Ok(typed(k + 1 + i)?.unwrap_or(Value::Null)))
                    .collect::<Result<_>>()?,
                time: row.get::<_, Option<i64>>(k + 1 + v).unwrap_or(i64::MAX),
                lsn: row.get::<_, String>(k + 2 + v).parse()?,
                touched_in: 0,
            };
            entries.insert(key, entry);
        }
        Ok(entries)
    }

    /// The latest remaining row for a key, read from the table (after an update or delete
    /// of the cached row). It may already include later transactions; they will arrive
    /// and apply idempotently.
    /// Waits until the slice's transaction is visible to new snapshots (see
    /// [`announce::wait_until_visible`]): a fallback read in the moment before would still
    /// see the row the transaction deleted or moved, and keep it in the cache.
    async fn wait_until_visible(&mut self) -> Result<()> {
        if !self.slice_visible {
            announce::wait_until_visible(&self.client, self.slice_xid).await?;
            self.slice_visible = true;
        }
        Ok(())
    }

    async fn latest_from_table(&self, table: &TableName, key: &Key) -> Result<Option<Entry>> {
        let cache = self.caches.get(table).expect("a displaced key has a cache");
        let config = &cache.config;
        let key_types = &cache.column_types[..config.key_columns.len()];
        let (predicate, params) = lvc::key_predicate(&config.key_columns, key_types, key);
        let values: Vec<String> = config
            .value_columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        let time = quote_ident(&config.time_column);
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT {time}::text, (extract(epoch FROM {time})*1000000)::bigint{comma}{values}
                       FROM {table} WHERE {predicate} ORDER BY {time} DESC LIMIT 1",
                    comma = if values.is_empty() { "" } else { ", " },
                    values = values.join(", "),
                    table = config.table.quoted(),
                ),
                &params,
            )
            .await
            .pg_context(|| format!("reading the latest row of {} for the cache", config.table))?;
        let Some(r) = row else {
            return Ok(None);
        };
        let k = config.key_columns.len();
        let typed = |column: usize, i: usize| -> Result<Value> {
            Ok(r.get::<_, Option<&str>>(i)
                .map(|t| decode_text(cache.column_kinds[column], t.as_bytes()))
                .transpose()?
                .unwrap_or(Value::Null))
        };
        Ok(Some(Entry {
            time_value: typed(k, 0)?,
            time: r.get::<_, Option<i64>>(1).unwrap_or(i64::MAX),
            values: (0..config.value_columns.len())
                .map(|i| typed(k + 1 + i, 2 + i))
                .collect::<Result<_>>()?,
            lsn: Lsn::ZERO,
            touched_in: 0,
        }))
    }

    async fn apply_change(&mut self, change: &Change, lsn: Lsn) -> Result<()> {
        let (relation, old_row, new) = match change {
            Change::Insert { relation, new } => (relation, None, Some(new)),
            Change::Update { relation, old, new } => (relation, old.as_ref(), Some(new)),
            Change::Delete { relation, old } => (relation, Some(old), None),
            Change::Truncate { relations, .. } => {
                self.caches.truncate(relations, lsn);
                return Ok(());
            }
            Change::Schema { relation, .. } => {
                self.caches.layouts.remove(&relation.id);
                return Ok(());
            }
            Change::Message { prefix, content } => {
                if prefix == announce::PREFIX
                    && let Some(change) =
                        announce::verify(&self.client, content, self.slice_xid).await?
                {
                    self.follow(change).await?;
                }
                return Ok(());
            }
        };
        if let (Change::Update { old: None, .. }, true) =
            (change, self.caches.contains_key(&relation.table))
        {
            check_update_old(relation, None, &[], "Last Value Cache")?;
        }
        if let Some(old) = old_row
            && let Some(key) = self.caches.displaced_key(
                relation,
                Some(old),
                &old.values,
                new.map(Vec::as_slice),
                lsn,
            )?
        {
            let config = self
                .caches
                .get(&relation.table)
                .expect("a displaced key has a cache")
                .config
                .clone();
            self.wait_until_visible().await?;
            let fallback = self.latest_from_table(&config.table, &key).await?;
            self.caches
                .set_fallback(&relation.table, key, fallback, lsn);
        }
        match new {
            Some(new) => self.caches.apply_new_row(relation, new, lsn),
            None => Ok(()),
        }
    }

    /// Hands the keys the slice changed to the view.
    fn publish_touched(&mut self, lsn: Lsn, commit_time: i64) {
        if self.caches.publish_touched(self.view.as_deref(), lsn) {
            let now = chrono::Utc::now().timestamp_micros();
            metrics::histogram!("lakets_lvc_update_latency_seconds")
                .record((now - commit_time).max(0) as f64 / 1e6);
        }
    }

    /// The cached row of a key, from memory (for the service's API).
    pub fn get(&self, table: &TableName, key: &[String]) -> Option<(String, Vec<Option<String>>)> {
        self.caches
            .get(table)?
            .entries
            .get(key)
            .map(|e| (e.time_text(), e.value_texts()))
    }
}

/// The caches in memory, and the operator's work on them without I/O: the operator
/// around it reads the table when a cached row is displaced, and stores the dirty keys.
#[derive(Default)]
pub struct CacheSet {
    caches: Vec<Cache>,
    /// Index in `caches` per source table.
    by_table: HashMap<TableName, usize>,
    /// Per relation id: where its rows go (`None`: it has no cache). Rebuilt as relations
    /// come, cleared when caches come or go, so a row costs one lookup by relation id.
    layouts: HashMap<u32, Option<Arc<Layout>>>,
}

impl CacheSet {
    /// Adds an empty cache (the operator adds the stored rows of each).
    pub fn add_empty(&mut self, config: LvcConfig) {
        self.insert(config, Vec::new(), Vec::new(), HashMap::new());
    }

    fn insert(
        &mut self,
        config: LvcConfig,
        column_types: Vec<String>,
        column_kinds: Vec<ColumnType>,
        entries: HashMap<Key, Entry>,
    ) {
        self.layouts.clear();
        let table = config.table.clone();
        let cache = Cache {
            config,
            column_types,
            column_kinds,
            entries,
            dirty: HashSet::new(),
            touched: Vec::new(),
            epoch: 1,
        };
        match self.by_table.get(&table) {
            Some(&i) => self.caches[i] = cache,
            None => {
                self.by_table.insert(table, self.caches.len());
                self.caches.push(cache);
            }
        }
    }

    /// Keys with unsaved changes.
    pub fn dirty_keys(&self) -> usize {
        self.caches.iter().map(|c| c.dirty.len()).sum()
    }

    fn values(&self) -> impl Iterator<Item = &Cache> {
        self.caches.iter()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Cache> {
        self.caches.iter_mut()
    }

    fn get(&self, table: &TableName) -> Option<&Cache> {
        self.by_table.get(table).map(|&i| &self.caches[i])
    }

    fn get_mut(&mut self, table: &TableName) -> Option<&mut Cache> {
        self.by_table.get(table).map(|&i| &mut self.caches[i])
    }

    fn contains_key(&self, table: &TableName) -> bool {
        self.by_table.contains_key(table)
    }

    fn remove(&mut self, table: &TableName) {
        let Some(i) = self.by_table.remove(table) else {
            return;
        };
        self.caches.swap_remove(i);
        if let Some(moved) = self.caches.get(i) {
            self.by_table.insert(moved.config.table.clone(), i);
        }
        self.layouts.clear();
    }

    /// Whether `lsn` committed before the cache of `table` was filled (its effects are in
    /// the fill already).
    fn before_start(&self, table: &TableName, lsn: Lsn) -> bool {
        self.get(table).is_some_and(|c| lsn < c.config.start_lsn)
    }

    fn layout(&mut self, relation: &Relation) -> Result<Option<Arc<Layout>>> {
        if let Some(layout) = self.layouts.get(&relation.id) {
            return Ok(layout.clone());
        }
        let Some(&index) = self.by_table.get(&relation.table) else {
            self.layouts.insert(relation.id, None);
            return Ok(None);
        };
        let cache = &self.caches[index];
        let find = |name: &str| {
            relation.column_index(name).ok_or_else(|| {
                Error::Unsupported(format!(
                    "column {name:?} of {} (cached by its Last Value Cache) is not in its \
                     replicated rows (renamed or dropped?); streaming stops",
                    relation.table
                ))
            })
        };
        let layout = Layout {
            cache: index,
            start_lsn: cache.config.start_lsn,
            keys: cache
                .config
                .key_columns
                .iter()
                .map(|c| find(c))
                .collect::<Result<_>>()?,
            time: find(&cache.config.time_column)?,
            values: cache
                .config
                .value_columns
                .iter()
                .map(|c| find(c))
                .collect::<Result<_>>()?,
        };
        let layout = Arc::new(layout);
        self.layouts.insert(relation.id, Some(layout.clone()));
        Ok(Some(layout))
    }

    fn truncate(&mut self, relations: &[Arc<Relation>], lsn: Lsn) {
        for r in relations {
            // A TRUNCATE the cache's initial fill already reflects (a replay) must not
            // empty it.
            if self.before_start(&r.table, lsn) {
                continue;
            }
            if let Some(cache) = self.get_mut(&r.table) {
                let keys: Vec<Key> = cache.entries.keys().cloned().collect();
                cache.dirty.extend(keys.iter().cloned());
                cache.touched.extend(keys);
                cache.entries.clear();
            }
        }
    }

    /// The key whose cached row the old row of an update or delete was, when that row
    /// left its key or time: the cache must fall back to the latest row left in the table.
    fn displaced_key(
        &mut self,
        relation: &Relation,
        old_row: Option<&OldRow>,
        old: &[Value],
        new: Option<&[Value]>,
        lsn: Lsn,
    ) -> Result<Option<Key>> {
        let Some(layout) = self.layout(relation)? else {
            return Ok(None);
        };
        if lsn < layout.start_lsn {
            return Ok(None);
        }
        if let Some(old_row) = old_row {
            let needed: Vec<usize> = layout
                .keys
                .iter()
                .copied()
                .chain(std::iter::once(layout.time))
                .collect();
            old_row.require(relation, &needed, "Last Value Cache")?;
        }
        let (Some(old_key), Some(old_time)) = (layout.key_of(old), layout.time_of(old)) else {
            return Err(Error::Unsupported(format!(
                "an update or delete on {} did not carry the cache key and time",
                relation.table
            )));
        };
        let moved = match new {
            Some(new) => {
                layout.key_of(new).as_ref() != Some(&old_key)
                    || layout.time_of(new) != Some(old_time)
            }
            None => true,
        };
        let was_cached = self.caches[layout.cache]
            .entries
            .get(&old_key)
            .is_some_and(|e| e.time == old_time);
        Ok((moved && was_cached).then_some(old_key))
    }

    /// Puts the row read from the table for a displaced key in the cache (None: the key
    /// has no row left).
    fn set_fallback(&mut self, table: &TableName, key: Key, fallback: Option<Entry>, lsn: Lsn) {
        let Some(cache) = self.get_mut(table) else {
            return;
        };
        match fallback {
            Some(mut entry) => {
                entry.lsn = lsn;
                cache.entries.insert(key.clone(), entry);
            }
            None => {
                cache.entries.remove(&key);
            }
        }
        cache.touched.push(key.clone());
        cache.dirty.insert(key);
    }

    /// Applies the new row of an insert or update committed at `lsn`: it becomes its
    /// key's cached row unless the cached one is newer.
    pub fn apply_new_row(&mut self, relation: &Relation, new: &[Value], lsn: Lsn) -> Result<()> {
        let Some(layout) = self.layout(relation)? else {
            return Ok(());
        };
        if lsn < layout.start_lsn {
            return Ok(());
        }
        let (Some(key), Some(time)) = (layout.key_of(new), layout.time_of(new)) else {
            return Ok(()); // NOT NULL keys are checked when the cache is enabled
        };
        let Cache {
            entries,
            dirty,
            touched,
            epoch,
            ..
        } = &mut self.caches[layout.cache];
        // A key's rows mostly follow one another: update its entry where it is, and
        // allocate a key only for a new one or the first touch in a slice.
        match entries.entry(key) {
            hashbrown::hash_map::Entry::Occupied(mut occupied) => {
                let current = occupied.get_mut();
                if current.time > time {
                    return Ok(()); // a late row never overwrites a newer one
                }
                let same_row = current.time == time;
                current.values.resize(layout.values.len(), Value::Null);
                for (slot, i) in layout.values.iter().enumerate() {
                    match new.get(*i) {
                        // Not sent because unchanged: the cached value of this same row
                        // stands.
                        Some(Value::UnchangedToast) if same_row => {}
                        Some(Value::UnchangedToast) | None => current.values[slot] = Value::Null,
                        Some(v) => current.values[slot].clone_from(v),
                    }
                }
                current.time = time;
                current.time_value.clone_from(&new[layout.time]);
                current.lsn = lsn;
                let first_touch = current.touched_in != *epoch;
                current.touched_in = *epoch;
                if first_touch {
                    touched.push(occupied.key().clone());
                }
                if !dirty.contains(occupied.key()) {
                    dirty.insert(occupied.key().clone());
                }
            }
            hashbrown::hash_map::Entry::Vacant(vacant) => {
                let values = layout
                    .values
                    .iter()
                    .map(|i| match new.get(*i) {
                        Some(Value::UnchangedToast) | None => Value::Null,
                        Some(v) => v.clone(),
                    })
                    .collect();
                touched.push(vacant.key().clone());
                dirty.insert(vacant.key().clone());
                vacant.insert(Entry {
                    time,
                    time_value: new[layout.time].clone(),
                    values,
                    lsn,
                    touched_in: *epoch,
                });
            }
        }
        Ok(())
    }

    /// Hands the keys changed since the last call to `view`, each once, as it ended;
    /// whether any changed.
    pub fn publish_touched(&mut self, view: Option<&LvcView>, lsn: Lsn) -> bool {
        let mut any = false;
        for cache in self.caches.iter_mut() {
            if cache.touched.is_empty() {
                continue;
            }
            any = true;
            let mut touched = std::mem::take(&mut cache.touched);
            cache.epoch += 1;
            let Some(view) = view else { continue };
            touched.sort_unstable();
            touched.dedup();
            view.publish(
                touched
                    .iter()
                    .map(|key| last_value(&cache.config, key, cache.entries.get(key), lsn)),
            );
        }
        any
    }
}

impl Layout {
    fn key_of(&self, row: &[Value]) -> Option<Key> {
        self.keys
            .iter()
            .map(|i| row.get(*i).and_then(Value::to_key_text))
            .collect()
    }

    fn time_of(&self, row: &[Value]) -> Option<i64> {
        row.get(self.time).and_then(Value::as_time_micros)
    }
}

/// The view's form of a cached row (`entry` None: the key is gone).
fn last_value(config: &LvcConfig, key: &Key, entry: Option<&Entry>, lsn: Lsn) -> LastValue {
    LastValue {
        table: config.table.clone(),
        key: key.clone(),
        time: entry.map(Entry::time_text).unwrap_or_default(),
        values: match entry {
            Some(e) => config
                .value_columns
                .iter()
                .cloned()
                .zip(e.value_texts())
                .collect(),
            None => Vec::new(),
        },
        lsn: entry.map_or(lsn, |e| e.lsn.max(lsn)),
        deleted: entry.is_none(),
    }
}

impl Operator for LastValueCache {
    fn name(&self) -> &str {
        NAME
    }

    async fn durable_lsn(&mut self) -> Result<Lsn> {
        progress::load(&self.client, &self.slot, NAME).await
    }

    async fn apply(&mut self, slice: &TxnSlice) -> Result<()> {
        self.slice_xid = slice.xid;
        self.slice_visible = false;
        for change in &slice.changes {
            self.apply_change(change, slice.commit_lsn).await?;
        }
        self.publish_touched(slice.commit_lsn, slice.commit_time);
        Ok(())
    }

    async fn flush(&mut self, through: Lsn) -> Result<()> {
        let tx = self
            .client
            .transaction()
            .await
            .pg_context(|| "starting the LVC transaction".into())?;
        for cache in self.caches.values() {
            if cache.dirty.is_empty() {
                continue;
            }
            // `lvc disable` (which drops the cache table) waits for this transaction; a
            // cache it already dropped is gone at its announcement, a little further on.
            if crate::catalog::lvc_registry::hold_registration(&tx, &cache.config.table).await? {
                write_dirty(&tx, cache).await?;
            }
        }
        progress::store(&tx, &self.slot, NAME, through).await?;
        tx.commit()
            .await
            .pg_context(|| "committing the LVC".into())?;
        for cache in self.caches.values_mut() {
            cache.dirty.clear();
        }
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.caches.dirty_keys() >= MAX_DIRTY_KEYS
    }
}

/// One upsert for every changed key and one delete for the keys that are gone, with the
/// values bound as text arrays and cast to the cache's column types.
async fn write_dirty(tx: &tokio_postgres::Transaction<'_>, cache: &Cache) -> Result<()> {
    let config = &cache.config;
    let columns = config.cache_columns();
    let width = columns.len();
    let mut arrays: Vec<Vec<Option<String>>> = vec![Vec::new(); width + 1];
    let mut gone: Vec<Vec<String>> = vec![Vec::new(); config.key_columns.len()];
    let mut keys: Vec<&Key> = cache.dirty.iter().collect();
    keys.sort(); // a stable lock order
    for key in keys {
        match cache.entries.get(key) {
            Some(e) => {
                let row = key
                    .iter()
                    .map(|k| Some(k.clone()))
                    .chain(std::iter::once(Some(e.time_text())))
                    .chain(e.value_texts())
                    .chain(std::iter::once(Some(e.lsn.to_string())));
                for (array, value) in arrays.iter_mut().zip(row) {
                    array.push(value);
                }
            }
            None => {
                for (array, k) in gone.iter_mut().zip(key) {
                    array.push(k.clone());
                }
            }
        }
    }
    let types = &cache.column_types;
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let key_list = config
        .key_columns
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    if !arrays[0].is_empty() {
        let casts: Vec<String> = (0..=width)
            .map(|i| {
                format!(
                    "u.c{i}::{}",
                    types.get(i).map(String::as_str).unwrap_or("text")
                )
            })
            .collect();
        let aliases: Vec<String> = (0..=width).map(|i| format!("c{i}")).collect();
        let unnest: Vec<String> = (1..=width + 1).map(|i| format!("${i}::text[]")).collect();
        let updates: Vec<String> = quoted
            .iter()
            .skip(config.key_columns.len())
            .chain(std::iter::once(&"lsn".to_owned()))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({cols}, lsn)
             SELECT {casts} FROM unnest({unnest}) AS u({aliases})
             ON CONFLICT ({key_list}) DO UPDATE SET {updates}",
            table = config.cache_table.quoted(),
            cols = quoted.join(", "),
            casts = casts.join(", "),
            unnest = unnest.join(", "),
            aliases = aliases.join(", "),
            updates = updates.join(", "),
        );
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
            .iter()
            .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        tx.execute(&sql, &params)
            .await
            .pg_context(|| format!("updating the cache {}", config.cache_table))?;
    }
    if !gone[0].is_empty() {
        // Typed comparisons: the key columns' text of this session need not be ours.
        let predicate = config
            .key_columns
            .iter()
            .enumerate()
            .map(|(i, k)| format!("c.{} = u.k{i}::{}", quote_ident(k), types[i]))
            .collect::<Vec<_>>()
            .join(" AND ");
        let aliases: Vec<String> = (0..gone.len()).map(|i| format!("k{i}")).collect();
        let unnest: Vec<String> = (1..=gone.len()).map(|i| format!("${i}::text[]")).collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = gone
            .iter()
            .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        tx.execute(
            &format!(
                "DELETE FROM {table} c USING unnest({unnest}) AS u({aliases}) WHERE {predicate}",
                table = config.cache_table.quoted(),
                unnest = unnest.join(", "),
                aliases = aliases.join(", "),
            ),
            &params,
        )
        .await
        .pg_context(|| format!("removing keys from the cache {}", config.cache_table))?;
    }
    Ok(())
}

/// The Last Value Cache in the operator list ([`crate::operators::COMPONENTS`]).
pub struct LvcComponent;

pub static COMPONENT: LvcComponent = LvcComponent;

impl crate::operators::Component for LvcComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach<'a>(
        &'a self,
        pipeline: crate::wal::Pipeline,
        ctx: &'a crate::operators::Attach<'a>,
    ) -> crate::wal::pipeline::BoxFuture<'a, Result<crate::wal::Pipeline>> {
        Box::pin(async move {
            let mut operator =
                LastValueCache::new(crate::db::connect_with(ctx.db).await?, ctx.slot).await?;
            if let Some(view) = &ctx.view {
                operator = operator.with_view(view.clone());
            }
            Ok(pipeline.operator(operator))
        })
    }

    fn state_registry(&self) -> Option<crate::catalog::registry::FeatureRegistry> {
        Some(crate::catalog::registry::FeatureRegistry::Lvc)
    }

    /// Refills every cache from its table.
    fn resync<'a>(
        &'a self,
        _db: &'a crate::db::DbConfig,
        client: &'a mut Client,
        report: &'a mut crate::coldtier::resync::ResyncReport,
    ) -> crate::operators::LocalBoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for config in lvc::list_lvc(&*client).await? {
                let (keys, start_lsn) = lvc::refill(client, &config).await?;
                report.caches.push(crate::coldtier::resync::CacheResync {
                    table: config.table.to_string(),
                    keys,
                    start_lsn,
                });
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::relation::RelationColumn;

    fn relation(id: u32, table: &str) -> Relation {
        let column = |name: &str, oid: u32| RelationColumn::new(name, oid, false);
        Relation {
            id,
            table: TableName::new("public", table),
            replica_identity: b'd',
            columns: vec![
                column("time", 1184),
                column("symbol", 25),
                column("price", 701),
                column("note", 25),
            ],
        }
    }

    fn set() -> CacheSet {
        let mut caches = CacheSet::default();
        caches.add_empty(LvcConfig {
            table: TableName::new("public", "ticks"),
            time_column: "time".into(),
            key_columns: vec!["symbol".into()],
            value_columns: vec!["price".into(), "note".into()],
            cache_table: TableName::new("lakets", "lvc_ticks"),
            start_lsn: Lsn(100),
        });
        caches
    }

    fn row(time: i64, symbol: &str, price: f64, note: Option<&str>) -> Vec<Value> {
        vec![
            Value::Timestamptz(time),
            Value::Text(symbol.into()),
            Value::Float8(price),
            note.map_or(Value::UnchangedToast, |n| Value::Text(n.into())),
        ]
    }

    fn cached(caches: &CacheSet, symbol: &str) -> Option<(i64, Vec<Value>)> {
        let cache = caches.get(&TableName::new("public", "ticks"))?;
        let entry = cache.entries.get(&vec![symbol.to_string()])?;
        Some((entry.time, entry.values.clone()))
    }

    #[test]
    fn rows_update_their_key_in_place_keeping_unchanged_values_of_the_same_row_only() {
        let mut caches = set();
        let ticks = relation(1, "ticks");
        caches
            .apply_new_row(&ticks, &row(10, "A", 1.0, Some("first")), Lsn(200))
            .unwrap();
        // An update of the same row that did not send the unchanged (TOASTed) note.
        caches
            .apply_new_row(&ticks, &row(10, "A", 2.0, None), Lsn(300))
            .unwrap();
        assert_eq!(
            cached(&caches, "A"),
            Some((10, vec![Value::Float8(2.0), Value::Text("first".into())]))
        );
        // A newer row without the value: not this row's, so unknown.
        caches
            .apply_new_row(&ticks, &row(20, "A", 3.0, None), Lsn(400))
            .unwrap();
        assert_eq!(
            cached(&caches, "A"),
            Some((20, vec![Value::Float8(3.0), Value::Null]))
        );
        // A late row never overwrites; a change from before the fill is in the fill.
        caches
            .apply_new_row(&ticks, &row(15, "A", 9.0, Some("late")), Lsn(500))
            .unwrap();
        caches
            .apply_new_row(&ticks, &row(99, "B", 9.0, Some("old")), Lsn(50))
            .unwrap();
        assert_eq!(cached(&caches, "A").unwrap().0, 20);
        assert_eq!(cached(&caches, "B"), None);
        // Another table's rows are not cached.
        caches
            .apply_new_row(
                &relation(2, "other"),
                &row(30, "C", 1.0, Some("x")),
                Lsn(600),
            )
            .unwrap();
        assert_eq!(caches.dirty_keys(), 1);
    }

    #[test]
    fn each_slice_hands_the_view_every_key_it_changed_once_with_its_last_row() {
        let mut caches = set();
        let ticks = relation(1, "ticks");
        let view = LvcView::new();
        let table = TableName::new("public", "ticks");
        for (i, symbol) in ["A", "B", "A", "A", "B"].iter().enumerate() {
            caches
                .apply_new_row(
                    &ticks,
                    &row(i as i64, symbol, i as f64, Some("n")),
                    Lsn(200),
                )
                .unwrap();
        }
        assert_eq!(
            caches.get(&table).unwrap().touched.len(),
            2,
            "five rows of two keys: two keys to hand over"
        );
        assert!(caches.publish_touched(Some(&view), Lsn(200)));
        assert_eq!(view.len(&table), 2);
        let a = view.get(&table, &["A".to_string()]).unwrap();
        assert_eq!(a.values[0], ("price".to_string(), Some("3".to_string())));
        assert_eq!(caches.get(&table).unwrap().touched.len(), 0);
        // Nothing changed since: nothing to hand over.
        assert!(!caches.publish_touched(Some(&view), Lsn(200)));
        // The next slice touches A again: handed over again, with its new row.
        caches
            .apply_new_row(&ticks, &row(10, "A", 10.0, Some("n")), Lsn(300))
            .unwrap();
        assert_eq!(caches.get(&table).unwrap().touched.len(), 1);
        assert!(caches.publish_touched(Some(&view), Lsn(300)));
        let a = view.get(&table, &["A".to_string()]).unwrap();
        assert_eq!(a.values[0], ("price".to_string(), Some("10".to_string())));
    }

    #[test]
    fn removing_a_cache_keeps_the_others_reachable_by_table_and_relation() {
        let mut caches = set();
        caches.add_empty(LvcConfig {
            table: TableName::new("public", "quotes"),
            time_column: "time".into(),
            key_columns: vec!["symbol".into()],
            value_columns: vec!["price".into()],
            cache_table: TableName::new("lakets", "lvc_quotes"),
            start_lsn: Lsn::ZERO,
        });
        let quotes = relation(2, "quotes");
        caches
            .apply_new_row(&quotes, &row(1, "Q", 1.0, Some("n")), Lsn(10))
            .unwrap();
        caches.remove(&TableName::new("public", "ticks"));
        // `quotes` moved into the removed cache's place: its layout must follow.
        caches
            .apply_new_row(&quotes, &row(2, "Q", 2.0, Some("n")), Lsn(20))
            .unwrap();
        let cache = caches.get(&TableName::new("public", "quotes")).unwrap();
        assert_eq!(cache.entries[&vec!["Q".to_string()]].time, 2);
        assert!(!caches.contains_key(&TableName::new("public", "ticks")));
        caches
            .apply_new_row(
                &relation(1, "ticks"),
                &row(3, "A", 1.0, Some("n")),
                Lsn(500),
            )
            .unwrap();
        assert_eq!(caches.dirty_keys(), 1, "ticks has no cache any more");
    }
}
