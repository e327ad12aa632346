//! Turns the decoded message stream into owned, typed changes grouped by transaction, in
//! commit order, cut into bounded slices so a huge transaction never sits in memory whole.
//!
//! Without streaming of in-progress transactions (we do not request it), the walsender
//! sends each transaction only after it committed, whole and in commit order; its reorder
//! buffer spills big ones to disk on the server. So the assembler never needs to hold more
//! than one slice: it emits a slice every `max_slice_changes` changes and at commit.

use std::sync::Arc;

use super::lsn::Lsn;
use super::pgoutput::{Column, Decoder, Message, OldTuple, Tuple};
use super::relation::{Relation, RelationCache, RelationUpdate};
use super::value::{self, Value};
use crate::error::{Error, Result};

/// A row: one value per column of its relation, in column order.
pub type Row = Vec<Value>;

#[derive(Debug, Clone, PartialEq)]
pub struct OldRow {
    /// Only the replica identity columns are set (the others are `Null`).
    pub key_only: bool,
    pub values: Row,
}

/// Checks the old row an update carried (see [`OldRow::require`]). With REPLICA IDENTITY
/// FULL every update carries its whole old row; one without any comes from a chunk whose
/// own identity is not FULL, and the old values it would say are unknown.
pub fn check_update_old(
    relation: &Relation,
    old: Option<&OldRow>,
    needed: &[usize],
    operator: &str,
) -> Result<()> {
    match old {
        Some(old) => old.require(relation, needed, operator),
        None if relation.replica_identity == b'f' => OldRow {
            key_only: true,
            values: Vec::new(),
        }
        .require(relation, needed, operator),
        None => Ok(()),
    }
}

impl OldRow {
    /// Checks that this old row of `relation` carries the columns at `needed`, which
    /// `operator` reads: an old row sent with only its key lacks the others (they read
    /// NULL), and guessing would put a change in the wrong place. PostgreSQL logs old rows
    /// with each chunk's own replica identity, which `ALTER TABLE` on the parent does not
    /// change: a table set to FULL whose chunk sends a key-only row is that mismatch.
    pub fn require(&self, relation: &Relation, needed: &[usize], operator: &str) -> Result<()> {
        if !self.key_only {
            return Ok(());
        }
        let fix = format!(
            "run `lakets chronotable replica-identity {} full` (it sets every chunk, and the \
             chunks created later), then start again",
            relation.table
        );
        if relation.replica_identity == b'f' {
            return Err(Error::Unsupported(format!(
                "{} has REPLICA IDENTITY FULL, but one of its chunks sent the old row of an \
                 update or delete with only its key columns (the chunk's own replica identity \
                 is not FULL; PostgreSQL does not pass the setting on to partitions), so the \
                 {operator} cannot tell which row changed. Streaming stops here, nothing after \
                 it is acknowledged; {fix}",
                relation.table
            )));
        }
        let missing: Vec<&str> = needed
            .iter()
            .filter(|&&i| relation.columns.get(i).is_some_and(|c| !c.is_key))
            .map(|&i| relation.columns[i].name.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Unsupported(format!(
            "the {operator} needs {} of the old row of an update or delete on {}, but the \
             table's replica identity sends only its key. Streaming stops here, nothing after \
             it is acknowledged; {fix}",
            missing
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            relation.table
        )))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A table's shape as of this point in the transaction (first sight or a change).
    Schema {
        relation: Arc<Relation>,
        previous: Option<Arc<Relation>>,
    },
    Insert {
        relation: Arc<Relation>,
        new: Row,
    },
    Update {
        relation: Arc<Relation>,
        /// Present when the key changed or the identity is FULL.
        old: Option<OldRow>,
        new: Row,
    },
    Delete {
        relation: Arc<Relation>,
        old: OldRow,
    },
    Truncate {
        relations: Vec<Arc<Relation>>,
        cascade: bool,
        restart_identity: bool,
    },
    /// `pg_logical_emit_message(true, prefix, content)` inside the transaction.
    Message {
        prefix: String,
        content: Vec<u8>,
    },
}

impl Change {
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Schema { .. } => "schema",
            Change::Insert { .. } => "insert",
            Change::Update { .. } => "update",
            Change::Delete { .. } => "delete",
            Change::Truncate { .. } => "truncate",
            Change::Message { .. } => "message",
        }
    }
}

/// A piece of one committed transaction.
#[derive(Debug, Clone)]
pub struct TxnSlice {
    pub xid: u32,
    /// LSN of the commit record (known from Begin): orders transactions.
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time: i64,
    pub first: bool,
    /// Set on the last slice: the end of the commit record, the transaction's durable mark.
    pub end_lsn: Option<Lsn>,
    pub changes: Vec<Change>,
}

/// What the assembler hands on.
#[derive(Debug, Clone)]
pub enum Assembled {
    Slice(TxnSlice),
    /// Nothing the operators must see happened before this position (heartbeats).
    Position(Lsn),
}

pub struct Assembler {
    decoder: Decoder,
    relations: RelationCache,
    binary: bool,
    max_slice_changes: usize,
    max_slice_bytes: usize,
    /// Wire bytes of the changes in the current slice (a proxy for their memory).
    current_bytes: usize,
    current: Option<TxnSlice>,
    /// Schema changes seen outside a transaction, delivered with the next one.
    pending_schema: Vec<Change>,
}

/// A slice is also cut when its changes reach this many bytes on the wire, so that wide
/// rows (large jsonb, bytea) keep memory bounded too.
pub const DEFAULT_MAX_SLICE_BYTES: usize = 4 << 20;

/// Prefix of lakets' transactional messages (configuration changes, announced by its
/// catalog); messages with any other prefix are dropped undecoded.
pub const MESSAGE_PREFIX: &str = "lakets";

/// Prefix of the heartbeat messages the pipeline emits to move an idle slot forward.
pub const HEARTBEAT_PREFIX: &str = "lakets_heartbeat";

impl Assembler {
    pub fn new(binary: bool, max_slice_changes: usize) -> Self {
        Assembler {
            decoder: Decoder::new(),
            relations: RelationCache::default(),
            binary,
            max_slice_changes: max_slice_changes.max(1),
            max_slice_bytes: DEFAULT_MAX_SLICE_BYTES,
            current_bytes: 0,
            current: None,
            pending_schema: Vec::new(),
        }
    }

    /// The connection was lost: an unfinished transaction will be sent again from its start.
    /// Returns whether one was open (operators must then discard what they got of it).
    pub fn reset(&mut self) -> bool {
        self.decoder.reset();
        self.current.take().is_some()
    }

    pub fn in_transaction(&self) -> bool {
        self.current.is_some()
    }

    /// Feeds one XLogData payload; returns what is ready to hand on.
    pub fn push(&mut self, payload: &[u8]) -> Result<Option<Assembled>> {
        let message = self.decoder.decode(payload)?;
        self.current_bytes += payload.len();
        match message {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                if self.current.is_some() {
                    return Err(Error::Protocol(format!(
                        "Begin of transaction {xid} while another transaction is open"
                    )));
                }
                self.current = Some(TxnSlice {
                    xid,
                    commit_lsn: final_lsn,
                    commit_time,
                    first: true,
                    end_lsn: None,
                    changes: std::mem::take(&mut self.pending_schema),
                });
                self.current_bytes = 0;
                Ok(None)
            }
            Message::Commit { end_lsn, .. } => {
                let mut slice = self
                    .current
                    .take()
                    .ok_or_else(|| Error::Protocol("Commit without an open transaction".into()))?;
                slice.end_lsn = Some(end_lsn);
                Ok(Some(Assembled::Slice(slice)))
            }
            Message::Relation(r) => {
                let change = match self.relations.update(&r) {
                    RelationUpdate::Unchanged(_) => return Ok(None),
                    RelationUpdate::New(relation) => Change::Schema {
                        relation,
                        previous: None,
                    },
                    RelationUpdate::Changed { previous, current } => Change::Schema {
                        relation: current,
                        previous: Some(previous),
                    },
                };
                match self.current.as_mut() {
                    Some(txn) => txn.changes.push(change),
                    None => self.pending_schema.push(change),
                }
                Ok(None)
            }
            Message::Insert {
                relation_id, new, ..
            } => {
                let relation = self.relation(relation_id)?;
                let new = self.row(&relation, &new)?;
                self.add(Change::Insert { relation, new })
            }
            Message::Update {
                relation_id,
                old,
                new,
                ..
            } => {
                let relation = self.relation(relation_id)?;
                let old = old.map(|o| self.old_row(&relation, &o)).transpose()?;
                let new = self.row(&relation, &new)?;
                self.add(Change::Update { relation, old, new })
            }
            Message::Delete {
                relation_id, old, ..
            } => {
                let relation = self.relation(relation_id)?;
                let old = self.old_row(&relation, &old)?;
                self.add(Change::Delete { relation, old })
            }
            Message::Truncate {
                cascade,
                restart_identity,
                relation_ids,
                ..
            } => {
                let relations = relation_ids
                    .iter()
                    .map(|id| self.relation(*id))
                    .collect::<Result<Vec<_>>>()?;
                self.add(Change::Truncate {
                    relations,
                    cascade,
                    restart_identity,
                })
            }
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
                ..
            } => {
                if transactional && self.current.is_some() {
                    // Any role may emit messages: only lakets' own reach the operators
                    // (and are believed only once checked against the catalog); the
                    // others are dropped here, never copied.
                    if prefix != MESSAGE_PREFIX {
                        return Ok(None);
                    }
                    self.add(Change::Message {
                        prefix: prefix.to_owned(),
                        content: content.to_vec(),
                    })
                } else if self.current.is_none() {
                    Ok(Some(Assembled::Position(lsn)))
                } else {
                    // A non-transactional message in the middle of a transaction's changes
                    // cannot happen without streaming; ignore rather than reorder.
                    Ok(None)
                }
            }
            Message::Type { .. } | Message::Origin { .. } => Ok(None),
            Message::StreamStart { .. }
            | Message::StreamStop
            | Message::StreamCommit { .. }
            | Message::StreamAbort { .. } => Err(Error::Protocol(
                "received a streamed in-progress transaction, but streaming was not requested"
                    .into(),
            )),
        }
    }

    fn add(&mut self, change: Change) -> Result<Option<Assembled>> {
        let txn = self
            .current
            .as_mut()
            .ok_or_else(|| Error::Protocol(format!("{} outside a transaction", change.kind())))?;
        txn.changes.push(change);
        if txn.changes.len() < self.max_slice_changes && self.current_bytes < self.max_slice_bytes {
            return Ok(None);
        }
        self.current_bytes = 0;
        let next = TxnSlice {
            xid: txn.xid,
            commit_lsn: txn.commit_lsn,
            commit_time: txn.commit_time,
            first: false,
            end_lsn: None,
            changes: Vec::with_capacity(self.max_slice_changes),
        };
        let full = std::mem::replace(txn, next);
        Ok(Some(Assembled::Slice(full)))
    }

    fn relation(&self, id: u32) -> Result<Arc<Relation>> {
        self.relations.get(id).cloned().ok_or_else(|| {
            Error::Protocol(format!(
                "change for relation {id} before its Relation message"
            ))
        })
    }

    fn row(&self, relation: &Relation, tuple: &Tuple<'_>) -> Result<Row> {
        if tuple.len() != relation.columns.len() {
            return Err(Error::Protocol(format!(
                "a row of {} has {} columns, but its relation has {}",
                relation.table,
                tuple.len(),
                relation.columns.len()
            )));
        }
        relation
            .columns
            .iter()
            .zip(tuple.columns())
            .map(|(col, data)| match data {
                Column::Null => Ok(Value::Null),
                Column::UnchangedToast => Ok(Value::UnchangedToast),
                Column::Text(bytes) => value::decode_text(col.column_type, bytes),
                Column::Binary(bytes) => value::decode_binary(col.column_type, bytes),
            })
            .collect::<Result<Row>>()
            .map_err(|e| Error::Protocol(format!("{}: {e}", relation.table)))
    }

    fn old_row(&self, relation: &Relation, old: &OldTuple<'_>) -> Result<OldRow> {
        Ok(OldRow {
            key_only: old.key_only,
            values: self.row(relation, &old.tuple)?,
        })
    }

    /// The definite error for a frame too large to hold, naming what it was: a row of a
    /// table (in the transaction being assembled), or one of lakets' own messages.
    pub fn oversized(&self, frame: &super::source::Oversized, limit: usize) -> Error {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let what = match (frame.kind, frame.relation_id) {
            (b'I' | b'U' | b'D', Some(id)) => {
                let table = self
                    .relations
                    .get(id)
                    .map(|r| r.table.to_string())
                    .unwrap_or_else(|| format!("relation {id}"));
                let change = match frame.kind {
                    b'I' => "an inserted row",
                    b'U' => "an updated row",
                    _ => "a deleted row",
                };
                format!("{change} of {table}")
            }
            (b'M', _) => "a logical message".to_owned(),
            (kind, _) => format!("a pgoutput message of type {:?}", kind as char),
        };
        let txn = self
            .current
            .as_ref()
            .map(|t| format!(" in the transaction committing at {}", t.commit_lsn))
            .unwrap_or_default();
        Error::Unsupported(format!(
            "{what}{txn} is {:.1} MiB on the wire, more than the {:.0} MiB lakets holds per \
             message; streaming stops here (nothing after it is acknowledged). Store such values \
             outside the synced table, or raise service.max_message_bytes",
            mib(frame.bytes),
            mib(limit)
        ))
    }

    /// Whether values arrive in binary format (for metrics and logs).
    pub fn binary(&self) -> bool {
        self.binary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::encode;

    #[test]
    fn wide_rows_cut_slices_by_bytes_before_the_change_count_is_reached() {
        let mut a = Assembler::new(true, 1024);
        let wide = vec![b'x'; 1 << 20];
        let mut slices = Vec::new();
        let mut push = |a: &mut Assembler, m: Vec<u8>| {
            if let Some(Assembled::Slice(s)) = a.push(&m).unwrap() {
                slices.push(s);
            }
        };
        push(&mut a, encode::begin(0x10, 0, 1));
        push(
            &mut a,
            encode::relation(7, "public", "t", b'f', &[("v", 17, false)]),
        );
        for _ in 0..10 {
            push(&mut a, encode::insert(7, &[Some((b'b', &wide))]));
        }
        push(&mut a, encode::commit(0x10, 0x20, 0));
        // 10 MB of rows against a 4 MB budget: three slices, none holding more than ~4 MB.
        let sizes: Vec<usize> = slices.iter().map(|s| s.changes.len()).collect();
        assert_eq!(sizes, vec![5, 4, 2], "schema + 4 rows, 4 rows, 2 rows");
        let inserts = slices
            .iter()
            .flat_map(|s| &s.changes)
            .filter(|c| matches!(c, Change::Insert { .. }))
            .count();
        assert_eq!(inserts, 10);
        assert!(slices[0].first && !slices[1].first && !slices[2].first);
        assert_eq!(slices[2].end_lsn, Some(Lsn(0x20)));
        assert!(slices[..2].iter().all(|s| s.end_lsn.is_none()));
    }
}
