//! A transaction of 1,000,000 rows streams through in bounded memory: the consumer's peak
//! RSS grows by far less than the transaction's size, and operators receive it in slices.
//! An operator stalling longer than `wal_sender_timeout` does not cost the connection.
//! Its own test binary, so that no other test moves the process's peak RSS.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::fresh_db;
use common::wal::publish_and_create_slot;
use lakets::Result;
use lakets::operators::Operator;
use lakets::wal::lsn::Lsn;
use lakets::wal::transaction::{Change, TxnSlice};
use lakets::wal::{PipelineConfig, SourceSettings};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Counts {
    rows: AtomicUsize,
    largest_slice: AtomicUsize,
    slices: AtomicUsize,
}

struct Counting(Arc<Counts>);

impl Operator for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    async fn durable_lsn(&mut self) -> Result<Lsn> {
        Ok(Lsn::ZERO)
    }
    async fn apply(&mut self, slice: &TxnSlice) -> Result<()> {
        let rows = slice
            .changes
            .iter()
            .filter(|c| matches!(c, Change::Insert { .. }))
            .count();
        self.0.rows.fetch_add(rows, Ordering::SeqCst);
        self.0.slices.fetch_add(1, Ordering::SeqCst);
        self.0
            .largest_slice
            .fetch_max(slice.changes.len(), Ordering::SeqCst);
        // A slow operator: the reader must wait, not buffer. Once, it stalls for longer than
        // wal_sender_timeout: the connection must survive on status updates.
        if self.0.slices.load(Ordering::SeqCst) == 100 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        tokio::time::sleep(Duration::from_micros(50)).await;
        Ok(())
    }
    async fn flush(&mut self, _through: Lsn) -> Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_streams_in_bounded_memory() {
    const ROWS: usize = 1_000_000;
    let mut db = fresh_db("large").await;
    db.exec("ALTER SYSTEM SET wal_sender_timeout = '2s'").await;
    db.exec("SELECT pg_reload_conf()").await;
    db.exec("CREATE TABLE big (time timestamptz NOT NULL, id bigint, payload text)")
        .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    lakets::chronotable::create_chronotable(&mut db.client, "big", &opts)
        .await
        .unwrap();
    publish_and_create_slot(&db).await;
    // ~300 bytes of text per row: about 300 MB if the transaction were held in memory.
    db.exec(&format!(
        "INSERT INTO big SELECT now(), i, repeat(md5(i::text), 9) FROM generate_series(1, {ROWS}) i"
    ))
    .await;

    let baseline = common::peak_rss_bytes();
    let counts = Arc::new(Counts::default());
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let shutdown = CancellationToken::new();
    let pipeline = lakets::operators::pipeline(
        db_config,
        PipelineConfig::new(SourceSettings::new(&db.name, "lakets")),
    )
    .operator(Counting(counts.clone()));
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    while counts.rows.load(Ordering::SeqCst) < ROWS {
        assert!(
            Instant::now() < deadline,
            "only {} rows after 10 minutes",
            counts.rows.load(Ordering::SeqCst)
        );
        assert!(!run.is_finished(), "pipeline stopped early");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let growth = common::peak_rss_bytes().saturating_sub(baseline);
    eprintln!(
        "1M-row transaction: {} slices, largest {} changes, peak RSS growth {} MB",
        counts.slices.load(Ordering::SeqCst),
        counts.largest_slice.load(Ordering::SeqCst),
        growth / (1 << 20)
    );
    assert_eq!(counts.rows.load(Ordering::SeqCst), ROWS);
    assert!(counts.largest_slice.load(Ordering::SeqCst) <= 1024);
    assert!(
        growth < 100 << 20,
        "peak RSS grew by {} MB for a ~300 MB transaction",
        growth >> 20
    );
}
