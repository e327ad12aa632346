//! A test operator that stores every change it applies in `recorded` (kind, id, time,
//! commit LSN), with its durable LSN in the same SQL transaction. Duplicates or gaps in
//! `recorded` after crashes disprove exactly-once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lakets::Result;
use lakets::error::PgResultExt;
use lakets::operators::{Operator, progress};
use lakets::wal::lsn::Lsn;
use lakets::wal::transaction::{Change, TxnSlice};
use lakets::wal::value::Value;

pub const RECORDED_DDL: &str = "CREATE TABLE recorded (kind text NOT NULL, id bigint, time timestamptz, commit_lsn pg_lsn NOT NULL)";

pub struct Recording {
    pub client: tokio_postgres::Client,
    pub slot: String,
    buffer: Vec<(String, Option<i64>, Option<i64>, String)>,
    /// While closed, flush waits: the operator stops making progress.
    pub gate: Arc<AtomicBool>,
}

impl Recording {
    pub fn new(client: tokio_postgres::Client, slot: &str) -> Self {
        Recording {
            client,
            slot: slot.to_owned(),
            buffer: Vec::new(),
            gate: Arc::new(AtomicBool::new(true)),
        }
    }
}

fn id_and_time(
    relation: &lakets::wal::relation::Relation,
    row: &[Value],
) -> (Option<i64>, Option<i64>) {
    let id = relation.column_index("id").and_then(|i| match row.get(i) {
        Some(Value::Int8(v)) => Some(*v),
        Some(Value::Int4(v)) => Some(i64::from(*v)),
        _ => None,
    });
    let time = relation
        .column_index("time")
        .and_then(|i| row.get(i)?.as_time_micros());
    (id, time)
}

impl Operator for Recording {
    fn name(&self) -> &str {
        "recording"
    }

    async fn durable_lsn(&mut self) -> Result<Lsn> {
        progress::load(&self.client, &self.slot, "recording").await
    }

    async fn apply(&mut self, slice: &TxnSlice) -> Result<()> {
        let lsn = slice.commit_lsn.to_string();
        for change in &slice.changes {
            let (kind, relation, row) = match change {
                Change::Insert { relation, new } => ("insert", relation, new),
                Change::Update { relation, new, .. } => ("update", relation, new),
                Change::Delete { relation, old } => ("delete", relation, &old.values),
                _ => continue,
            };
            if relation.table.name == "recorded" {
                continue;
            }
            let (id, time) = id_and_time(relation, row);
            self.buffer.push((kind.to_owned(), id, time, lsn.clone()));
        }
        Ok(())
    }

    async fn flush(&mut self, through: Lsn) -> Result<()> {
        while !self.gate.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let tx = self
            .client
            .transaction()
            .await
            .pg_context(|| "begin".into())?;
        let kinds: Vec<&str> = self.buffer.iter().map(|r| r.0.as_str()).collect();
        let ids: Vec<Option<i64>> = self.buffer.iter().map(|r| r.1).collect();
        let times: Vec<Option<i64>> = self.buffer.iter().map(|r| r.2).collect();
        let lsns: Vec<&str> = self.buffer.iter().map(|r| r.3.as_str()).collect();
        tx.execute(
            "INSERT INTO public.recorded (kind, id, time, commit_lsn)
             SELECT k, i, timestamptz 'epoch' + t * interval '1 microsecond', l::pg_lsn
               FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[]) AS u(k, i, t, l)",
            &[&kinds, &ids, &times, &lsns],
        )
        .await
        .pg_context(|| "recording".into())?;
        progress::store(&tx, &self.slot, "recording", through).await?;
        tx.commit().await.pg_context(|| "commit".into())?;
        self.buffer.clear();
        Ok(())
    }
}
