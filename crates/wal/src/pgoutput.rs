//! A zero-copy decoder of the pgoutput logical replication protocol (versions 1 to 4).
//!
//! Every message borrows from the XLogData payload; tuples are walked lazily, column by
//! column, so decoding allocates nothing but the column list of a Relation message. The
//! decoder keeps one piece of state: whether it is inside a streamed-transaction block,
//! where data messages carry the (sub)transaction id right after their tag.
//!
//! Reference: PostgreSQL's "Logical Replication Message Formats" and
//! `src/backend/replication/logical/proto.c`.

use crate::error::{Error, Result};

use super::lsn::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    Begin {
        final_lsn: Lsn,
        /// Microseconds since the Unix epoch.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        origin_lsn: Lsn,
        name: &'a str,
    },
    Relation(RelationMessage<'a>),
    Type {
        xid: Option<u32>,
        type_oid: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        xid: Option<u32>,
        relation_id: u32,
        new: Tuple<'a>,
    },
    Update {
        xid: Option<u32>,
        relation_id: u32,
        old: Option<OldTuple<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        xid: Option<u32>,
        relation_id: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        xid: Option<u32>,
        cascade: bool,
        restart_identity: bool,
        relation_ids: Vec<u32>,
    },
    Message {
        xid: Option<u32>,
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationMessage<'a> {
    pub xid: Option<u32>,
    pub relation_id: u32,
    pub namespace: &'a str,
    pub name: &'a str,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn<'a> {
    pub is_key: bool,
    pub name: &'a str,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The old row of an update or delete: the replica identity key only (`K`), or the whole
/// row (`O`, with REPLICA IDENTITY FULL).
#[derive(Debug, Clone, PartialEq)]
pub struct OldTuple<'a> {
    pub key_only: bool,
    pub tuple: Tuple<'a>,
}

/// A row as sent on the wire; walk it with [`Tuple::columns`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuple<'a> {
    count: u16,
    data: &'a [u8],
}

/// One column of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column<'a> {
    Null,
    /// A TOASTed value the update did not change: it is not in the WAL, keep the old one.
    UnchangedToast,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

impl<'a> Tuple<'a> {
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn columns(&self) -> TupleColumns<'a> {
        TupleColumns {
            remaining: self.count,
            data: self.data,
        }
    }
}

pub struct TupleColumns<'a> {
    remaining: u16,
    data: &'a [u8],
}

impl<'a> Iterator for TupleColumns<'a> {
    type Item = Column<'a>;

    fn next(&mut self) -> Option<Column<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The tuple was validated when it was parsed, so these reads cannot fail.
        let (kind, rest) = self.data.split_first()?;
        match kind {
            b'n' => {
                self.data = rest;
                Some(Column::Null)
            }
            b'u' => {
                self.data = rest;
                Some(Column::UnchangedToast)
            }
            _ => {
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let value = rest.get(4..4 + len)?;
                self.data = &rest[4 + len..];
                Some(if *kind == b't' {
                    Column::Text(value)
                } else {
                    Column::Binary(value)
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.remaining);
        (n, Some(n))
    }
}

/// Decodes pgoutput messages, tracking streamed-transaction blocks.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    in_stream: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Forgets the streaming state (after a reconnect).
    pub fn reset(&mut self) {
        self.in_stream = false;
    }

    pub fn decode<'a>(&mut self, payload: &'a [u8]) -> Result<Message<'a>> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let tag = r.u8()?;
        let msg = match tag {
            b'B' => Message::Begin {
                final_lsn: Lsn(r.u64()?),
                commit_time: pg_time(r.i64()?),
                xid: r.u32()?,
            },
            b'C' => Message::Commit {
                flags: r.u8()?,
                commit_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                commit_time: pg_time(r.i64()?),
            },
            b'O' => Message::Origin {
                origin_lsn: Lsn(r.u64()?),
                name: r.cstr()?,
            },
            b'R' => {
                let xid = self.stream_xid(&mut r)?;
                let relation_id = r.u32()?;
                let namespace = r.cstr()?;
                let name = r.cstr()?;
                let replica_identity = r.u8()?;
                let count = r.u16()?;
                let mut columns = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    columns.push(RelationColumn {
                        is_key: r.u8()? & 1 == 1,
                        name: r.cstr()?,
                        type_oid: r.u32()?,
                        type_modifier: r.i32()?,
                    });
                }
                Message::Relation(RelationMessage {
                    xid,
                    relation_id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }
            b'Y' => Message::Type {
                xid: self.stream_xid(&mut r)?,
                type_oid: r.u32()?,
                namespace: r.cstr()?,
                name: r.cstr()?,
            },
            b'I' => {
                let xid = self.stream_xid(&mut r)?;
                let relation_id = r.u32()?;
                r.expect(b'N', "insert")?;
                Message::Insert {
                    xid,
                    relation_id,
                    new: r.tuple()?,
                }
            }
            b'U' => {
                let xid = self.stream_xid(&mut r)?;
                let relation_id = r.u32()?;
                let old = match r.u8()? {
                    kind @ (b'K' | b'O') => {
                        let tuple = r.tuple()?;
                        r.expect(b'N', "update")?;
                        Some(OldTuple {
                            key_only: kind == b'K',
                            tuple,
                        })
                    }
                    b'N' => None,
                    other => return Err(bad(format!("update: unexpected tuple kind {other:#x}"))),
                };
                Message::Update {
                    xid,
                    relation_id,
                    old,
                    new: r.tuple()?,
                }
            }
            b'D' => {
                let xid = self.stream_xid(&mut r)?;
                let relation_id = r.u32()?;
                let key_only = match r.u8()? {
                    b'K' => true,
                    b'O' => false,
                    other => return Err(bad(format!("delete: unexpected tuple kind {other:#x}"))),
                };
                Message::Delete {
                    xid,
                    relation_id,
                    old: OldTuple {
                        key_only,
                        tuple: r.tuple()?,
                    },
                }
            }
            b'T' => {
                let xid = self.stream_xid(&mut r)?;
                let count = r.u32()?;
                let options = r.u8()?;
                let mut relation_ids = Vec::with_capacity(count.min(1024) as usize);
                for _ in 0..count {
                    relation_ids.push(r.u32()?);
                }
                Message::Truncate {
                    xid,
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                    relation_ids,
                }
            }
            b'M' => {
                let xid = self.stream_xid(&mut r)?;
                let transactional = r.u8()? & 1 == 1;
                let lsn = Lsn(r.u64()?);
                let prefix = r.cstr()?;
                let len = r.u32()? as usize;
                Message::Message {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content: r.bytes(len)?,
                }
            }
            b'S' => {
                self.in_stream = true;
                Message::StreamStart {
                    xid: r.u32()?,
                    first_segment: r.u8()? == 1,
                }
            }
            b'E' => {
                self.in_stream = false;
                Message::StreamStop
            }
            b'c' => Message::StreamCommit {
                xid: r.u32()?,
                flags: r.u8()?,
                commit_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                commit_time: pg_time(r.i64()?),
            },
            b'A' => Message::StreamAbort {
                xid: r.u32()?,
                subxid: r.u32()?,
            },
            b'b' | b'P' | b'K' | b'r' | b'p' => {
                return Err(bad(format!(
                    "two-phase message {:?} received, but two-phase decoding is not enabled",
                    tag as char
                )));
            }
            other => return Err(bad(format!("unknown message type {other:#x}"))),
        };
        Ok(msg)
    }

    fn stream_xid(&self, r: &mut Reader<'_>) -> Result<Option<u32>> {
        if self.in_stream {
            Ok(Some(r.u32()?))
        } else {
            Ok(None)
        }
    }
}

fn pg_time(micros_since_2000: i64) -> i64 {
    micros_since_2000.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

fn bad(why: String) -> Error {
    Error::Protocol(format!("malformed pgoutput message: {why}"))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(bad(format!(
                "needed {n} bytes at offset {} of a {}-byte message",
                self.pos,
                self.buf.len()
            ))),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        self.take(n)
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<()> {
        let got = self.u8()?;
        if got == byte {
            Ok(())
        } else {
            Err(bad(format!(
                "{what}: expected {:?}, found {got:#x}",
                byte as char
            )))
        }
    }

    fn cstr(&mut self) -> Result<&'a str> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| bad("unterminated string".into()))?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| bad("string is not UTF-8".into()))?;
        self.pos += nul + 1;
        Ok(s)
    }

    /// Validates a TupleData block and returns it for lazy walking.
    fn tuple(&mut self) -> Result<Tuple<'a>> {
        let count = self.u16()?;
        let start = self.pos;
        for _ in 0..count {
            match self.u8()? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    self.take(len)?;
                }
                other => return Err(bad(format!("unknown column kind {other:#x}"))),
            }
        }
        Ok(Tuple {
            count,
            data: &self.buf[start..self.pos],
        })
    }
}

/// Builds pgoutput messages (tests and benchmarks feed these to the decoder).
pub mod encode {
    use super::PG_EPOCH_OFFSET_MICROS;

    pub fn begin(final_lsn: u64, commit_time: i64, xid: u32) -> Vec<u8> {
        let mut b = vec![b'B'];
        b.extend(final_lsn.to_be_bytes());
        b.extend((commit_time - PG_EPOCH_OFFSET_MICROS).to_be_bytes());
        b.extend(xid.to_be_bytes());
        b
    }

    pub fn commit(commit_lsn: u64, end_lsn: u64, commit_time: i64) -> Vec<u8> {
        let mut b = vec![b'C', 0];
        b.extend(commit_lsn.to_be_bytes());
        b.extend(end_lsn.to_be_bytes());
        b.extend((commit_time - PG_EPOCH_OFFSET_MICROS).to_be_bytes());
        b
    }

    /// A Relation message; columns are (name, type oid, is_key).
    pub fn relation(
        id: u32,
        namespace: &str,
        name: &str,
        identity: u8,
        columns: &[(&str, u32, bool)],
    ) -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(id.to_be_bytes());
        cstr(&mut b, namespace);
        cstr(&mut b, name);
        b.push(identity);
        b.extend((columns.len() as u16).to_be_bytes());
        for (col, oid, key) in columns {
            b.push(u8::from(*key));
            cstr(&mut b, col);
            b.extend(oid.to_be_bytes());
            b.extend((-1i32).to_be_bytes());
        }
        b
    }

    /// A column for [`tuple`]: `None` is NULL; `Some((kind, bytes))` with kind `t`, `b` or `u`.
    pub type Col<'a> = Option<(u8, &'a [u8])>;

    pub fn tuple(b: &mut Vec<u8>, columns: &[Col<'_>]) {
        b.extend((columns.len() as u16).to_be_bytes());
        for c in columns {
            match c {
                None => b.push(b'n'),
                Some((b'u', _)) => b.push(b'u'),
                Some((kind, data)) => {
                    b.push(*kind);
                    b.extend((data.len() as u32).to_be_bytes());
                    b.extend(*data);
                }
            }
        }
    }

    pub fn insert(relation_id: u32, columns: &[Col<'_>]) -> Vec<u8> {
        let mut b = vec![b'I'];
        b.extend(relation_id.to_be_bytes());
        b.push(b'N');
        tuple(&mut b, columns);
        b
    }

    fn cstr(b: &mut Vec<u8>, s: &str) {
        b.extend(s.as_bytes());
        b.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;

    #[test]
    fn decodes_transaction_framing() {
        let mut d = Decoder::new();
        let t = 1_774_000_000_000_000;
        assert_eq!(
            d.decode(&begin(0x1_0000_0010, t, 42)).unwrap(),
            Message::Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time: t,
                xid: 42
            }
        );
        assert_eq!(
            d.decode(&commit(0x10, 0x20, t)).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: Lsn(0x10),
                end_lsn: Lsn(0x20),
                commit_time: t
            }
        );
    }

    #[test]
    fn decodes_relations_and_tuples_without_copying() {
        let mut d = Decoder::new();
        let rel = relation(
            7,
            "public",
            "ticks",
            b'f',
            &[("time", 1184, false), ("sym", 25, true)],
        );
        let Message::Relation(r) = d.decode(&rel).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.relation_id, r.namespace, r.name, r.replica_identity),
            (7, "public", "ticks", b'f')
        );
        assert_eq!(r.columns[1].name, "sym");
        assert!(r.columns[1].is_key);

        let msg = insert(
            7,
            &[
                Some((b't', b"2026-01-01")),
                None,
                Some((b'u', b"")),
                Some((b'b', &[1, 2])),
            ],
        );
        let Message::Insert {
            relation_id,
            new,
            xid,
        } = d.decode(&msg).unwrap()
        else {
            panic!()
        };
        assert_eq!((relation_id, xid), (7, None));
        let cols: Vec<Column<'_>> = new.columns().collect();
        assert_eq!(
            cols,
            vec![
                Column::Text(b"2026-01-01"),
                Column::Null,
                Column::UnchangedToast,
                Column::Binary(&[1, 2])
            ]
        );
    }

    #[test]
    fn decodes_type_origin_truncate_and_message() {
        let mut d = Decoder::new();
        let mut ty = vec![b'Y'];
        ty.extend(16_500u32.to_be_bytes());
        ty.extend(b"public\0mood\0");
        assert_eq!(
            d.decode(&ty).unwrap(),
            Message::Type {
                xid: None,
                type_oid: 16_500,
                namespace: "public",
                name: "mood"
            }
        );
        let mut origin = vec![b'O'];
        origin.extend(0x42u64.to_be_bytes());
        origin.extend(b"upstream\0");
        assert_eq!(
            d.decode(&origin).unwrap(),
            Message::Origin {
                origin_lsn: Lsn(0x42),
                name: "upstream"
            }
        );
        let mut trunc = vec![b'T'];
        trunc.extend(2u32.to_be_bytes());
        trunc.push(3);
        trunc.extend(7u32.to_be_bytes());
        trunc.extend(8u32.to_be_bytes());
        assert_eq!(
            d.decode(&trunc).unwrap(),
            Message::Truncate {
                xid: None,
                cascade: true,
                restart_identity: true,
                relation_ids: vec![7, 8]
            }
        );
        let mut msg = vec![b'M', 1];
        msg.extend(0x99u64.to_be_bytes());
        msg.extend(b"pfx\0");
        msg.extend(3u32.to_be_bytes());
        msg.extend(b"abc");
        assert_eq!(
            d.decode(&msg).unwrap(),
            Message::Message {
                xid: None,
                transactional: true,
                lsn: Lsn(0x99),
                prefix: "pfx",
                content: b"abc"
            }
        );
    }

    #[test]
    fn streamed_blocks_carry_the_subtransaction_id() {
        let mut d = Decoder::new();
        let mut start = vec![b'S'];
        start.extend(99u32.to_be_bytes());
        start.push(1);
        assert_eq!(
            d.decode(&start).unwrap(),
            Message::StreamStart {
                xid: 99,
                first_segment: true
            }
        );
        let mut ins = vec![b'I'];
        ins.extend(100u32.to_be_bytes()); // subtransaction xid
        ins.extend(&insert(7, &[None])[1..]);
        let Message::Insert {
            xid, relation_id, ..
        } = d.decode(&ins).unwrap()
        else {
            panic!()
        };
        assert_eq!((xid, relation_id), (Some(100), 7));
        assert_eq!(d.decode(b"E").unwrap(), Message::StreamStop);
        let Message::Insert { xid, .. } = d.decode(&insert(7, &[None])).unwrap() else {
            panic!()
        };
        assert_eq!(xid, None);
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        let mut d = Decoder::new();
        let full = insert(7, &[Some((b't', b"hello"))]);
        for cut in 0..full.len() {
            assert!(d.decode(&full[..cut]).is_err(), "cut at {cut}");
        }
        assert!(d.decode(b"Z").is_err());
        assert!(
            d.decode(b"P")
                .unwrap_err()
                .to_string()
                .contains("two-phase")
        );
        let mut bad_len = full.clone();
        let n = bad_len.len();
        bad_len[n - 6] = 0xff; // length field of the text column
        assert!(d.decode(&bad_len).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut d = Decoder::new();
            if let Ok(Message::Insert { new, .. }) = d.decode(&data) {
                let _ = new.columns().count();
            }
        }
    }
}
