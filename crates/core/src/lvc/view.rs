//! The Last Value Cache as the service serves it: the operator's in-memory rows, shared
//! with the gRPC API, plus a broadcast of every change for subscribers.
//!
//! The view is current as soon as the operator has applied a committed transaction (before
//! the cache table is flushed). Per key, a change is taken only if its commit position is
//! not older than the one shown, so a pipeline restart that replays transactions (or
//! reloads the older flushed table) never moves a key back in time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;

use crate::ident::TableName;
use crate::wal::lsn::Lsn;
use crate::wal::value::{ColumnType, decode_text};

/// Updates buffered per subscriber before it is told it lagged (and resynchronized).
const SUBSCRIBER_BUFFER: usize = 16_384;

/// The latest row of one key, or its deletion.
#[derive(Debug, Clone, PartialEq)]
pub struct LastValue {
    pub table: TableName,
    pub key: Vec<String>,
    /// PostgreSQL text of the time column; empty when deleted.
    pub time: String,
    /// Cached columns by name, PostgreSQL text (None = NULL).
    pub values: Vec<(String, Option<String>)>,
    pub lsn: Lsn,
    pub deleted: bool,
}

#[derive(Default)]
struct TableView {
    entries: HashMap<Vec<String>, Arc<LastValue>>,
    live_keys: usize,
    /// Types of the key columns, to read a key given as text the way the cache keys it.
    key_kinds: Vec<ColumnType>,
}

pub struct LvcView {
    tables: RwLock<HashMap<TableName, TableView>>,
    updates: broadcast::Sender<Arc<LastValue>>,
}

impl Default for LvcView {
    fn default() -> Self {
        LvcView {
            tables: RwLock::new(HashMap::new()),
            updates: broadcast::channel(SUBSCRIBER_BUFFER).0,
        }
    }
}

impl LvcView {
    pub fn new() -> Arc<Self> {
        Arc::new(LvcView::default())
    }

    /// Takes each value that is not older than what the view shows for its key, and
    /// broadcasts the ones taken.
    pub fn publish(&self, values: impl IntoIterator<Item = LastValue>) {
        let mut taken = Vec::new();
        {
            let mut tables = self.tables.write().expect("LVC view lock poisoned");
            for value in values {
                let view = tables.entry(value.table.clone()).or_default();
                let newer = view
                    .entries
                    .get(&value.key)
                    .is_none_or(|current| current.lsn <= value.lsn);
                if !newer {
                    continue;
                }
                let value = Arc::new(value);
                let was_live = view
                    .entries
                    .insert(value.key.clone(), value.clone())
                    .is_some_and(|old| !old.deleted);
                match (was_live, value.deleted) {
                    (false, false) => view.live_keys += 1,
                    (true, true) => view.live_keys -= 1,
                    _ => {}
                }
                taken.push(value);
            }
            for (table, view) in tables.iter() {
                metrics::gauge!("lakets_lvc_keys", "table" => table.to_string())
                    .set(view.live_keys as f64);
            }
        }
        for value in taken {
            // No subscriber is not an error.
            let _ = self.updates.send(value);
        }
    }

    pub fn get(&self, table: &TableName, key: &[String]) -> Option<Arc<LastValue>> {
        let tables = self.tables.read().expect("LVC view lock poisoned");
        tables
            .get(table)?
            .entries
            .get(key)
            .filter(|v| !v.deleted)
            .cloned()
    }

    /// Every live row of a table, ordered by key.
    pub fn all(&self, table: &TableName) -> Vec<Arc<LastValue>> {
        let tables = self.tables.read().expect("LVC view lock poisoned");
        let mut rows: Vec<Arc<LastValue>> = tables
            .get(table)
            .map(|v| v.entries.values().filter(|v| !v.deleted).cloned().collect())
            .unwrap_or_default();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// How many live keys the table's cache holds.
    pub fn len(&self, table: &TableName) -> usize {
        let tables = self.tables.read().expect("LVC view lock poisoned");
        tables.get(table).map_or(0, |v| v.live_keys)
    }

    /// Up to `n` live rows of a table whose keys come after `after`, in key order: a
    /// snapshot a page at a time, so that no caller holds the whole cache.
    pub fn page(
        &self,
        table: &TableName,
        after: Option<&[String]>,
        n: usize,
    ) -> Vec<Arc<LastValue>> {
        let tables = self.tables.read().expect("LVC view lock poisoned");
        let Some(view) = tables.get(table) else {
            return Vec::new();
        };
        let mut rows: Vec<&Arc<LastValue>> = view
            .entries
            .values()
            .filter(|v| !v.deleted && after.is_none_or(|a| v.key.as_slice() > a))
            .collect();
        if rows.len() > n {
            rows.select_nth_unstable_by(n, |a, b| a.key.cmp(&b.key));
            rows.truncate(n);
        }
        rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        rows.into_iter().cloned().collect()
    }

    pub fn has_table(&self, table: &TableName) -> bool {
        self.tables
            .read()
            .expect("LVC view lock poisoned")
            .contains_key(table)
    }

    pub fn tables(&self) -> Vec<TableName> {
        self.tables
            .read()
            .expect("LVC view lock poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Marks a table as cached (so an empty cache is known, not missing), keyed by
    /// columns of these types.
    pub fn register(&self, table: &TableName, key_kinds: Vec<ColumnType>) {
        self.tables
            .write()
            .expect("LVC view lock poisoned")
            .entry(table.clone())
            .or_default()
            .key_kinds = key_kinds;
    }

    /// Forgets a table whose cache was dropped.
    pub fn unregister(&self, table: &TableName) {
        let mut tables = self.tables.write().expect("LVC view lock poisoned");
        tables.remove(table);
        metrics::gauge!("lakets_lvc_keys", "table" => table.to_string()).set(0.0);
    }

    /// A key typed by a caller (`1.50`, `2026-03-01 09:30:00+00`) as the cache keys it:
    /// each part read as a value of its column's type. A part that does not read as one
    /// is kept as given (and then matches nothing).
    pub fn normalize_key(&self, table: &TableName, key: &[String]) -> Vec<String> {
        let tables = self.tables.read().expect("LVC view lock poisoned");
        let kinds = tables
            .get(table)
            .map(|v| v.key_kinds.as_slice())
            .unwrap_or(&[]);
        key.iter()
            .enumerate()
            .map(|(i, part)| {
                kinds
                    .get(i)
                    .and_then(|kind| decode_text(*kind, part.as_bytes()).ok())
                    .and_then(|v| v.to_key_text())
                    .unwrap_or_else(|| part.clone())
            })
            .collect()
    }

    /// Every change taken from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LastValue>> {
        self.updates.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(key: &str, price: &str, lsn: u64, deleted: bool) -> LastValue {
        LastValue {
            table: TableName::new("public", "t"),
            key: vec![key.into()],
            time: if deleted {
                String::new()
            } else {
                "2026-01-01".into()
            },
            values: vec![("price".into(), Some(price.into()))],
            lsn: Lsn(lsn),
            deleted,
        }
    }

    #[test]
    fn older_positions_never_replace_newer_ones() {
        let view = LvcView::new();
        let mut updates = view.subscribe();
        let t = TableName::new("public", "t");
        view.publish([value("A", "1", 10, false)]);
        view.publish([value("A", "0", 5, false)]); // a replay after a restart
        assert_eq!(
            view.get(&t, &["A".into()]).unwrap().values[0].1.as_deref(),
            Some("1")
        );
        view.publish([value("A", "", 12, true)]);
        assert!(view.get(&t, &["A".into()]).is_none());
        view.publish([value("A", "1", 10, false)]); // the reloaded table, older than the delete
        assert!(view.get(&t, &["A".into()]).is_none());
        view.publish([value("A", "3", 12, false)]); // same transaction: taken
        assert_eq!(view.all(&t).len(), 1);
        let seen: Vec<u64> = std::iter::from_fn(|| updates.try_recv().ok())
            .map(|v| v.lsn.0)
            .collect();
        assert_eq!(seen, vec![10, 12, 12]);
    }
}
