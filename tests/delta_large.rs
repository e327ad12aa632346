//! A transaction of 1,000,000 rows (about 250 MB as buffered cells) reaches the Delta
//! table in bounded memory: the mirror streams it to Parquet files while it arrives and
//! commits them once, at the transaction's end, with one `txn` action. Its own test binary,
//! so that no other test moves the process's peak RSS.

mod common;

use std::time::Duration;

use common::fresh_db;
use common::wal::wait_until_confirmed;
use lakets::delta::schema::Partitioning;
use lakets::operators::delta_sink::DeltaSink;
use lakets::wal::lsn::Lsn;
use lakets::wal::{PipelineConfig, SourceSettings};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_reaches_delta_in_bounded_memory() {
    const ROWS: i64 = 1_000_000;
    let mut db = fresh_db("delta_large").await;
    db.exec("CREATE TABLE big (time timestamptz NOT NULL, id bigint NOT NULL, payload text)")
        .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::days(1);
    lakets::chronotable::create_chronotable(&mut db.client, "big", &opts)
        .await
        .unwrap();
    let lake = tempfile::tempdir().unwrap();
    let sync = common::sync_to(&db, "big", lake.path().join("big").to_str().unwrap()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let mut pc = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
    pc.flush_interval = Duration::from_millis(200);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        lakets::operators::pipeline(lakets::db::parse_config(&db.url).unwrap(), pc)
            .operator(
                DeltaSink::new(db.connect().await, slot.as_str())
                    .await
                    .unwrap(),
            )
            .run(shutdown.clone()),
    );

    let before = common::peak_rss_bytes();
    db.exec(&format!(
        "INSERT INTO big SELECT now(), i, repeat(md5(i::text), 4) FROM generate_series(1, {ROWS}) i"
    ))
    .await;
    let end: Lsn = db
        .scalar::<String>("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .parse()
        .unwrap();
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(600)).await;
    let grown = common::peak_rss_bytes().saturating_sub(before);
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let mut delta = lakets::delta::table::open(&sync.location)
        .await
        .unwrap()
        .unwrap();
    let shape = lakets::delta::mirror::shape_of(&delta, "time", Partitioning::Day).unwrap();
    let rows = lakets::delta::read::scan(&delta, &shape).await.unwrap();
    assert_eq!(rows.len() as i64, ROWS);
    let mut ids: Vec<i64> = rows.iter().map(|r| r[1].as_int().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as i64, ROWS, "no duplicate, no loss");
    // One commit for the whole transaction: the version after the snapshot's.
    let version = delta.version().unwrap();
    delta.load_version(version - 1).await.unwrap();
    assert_eq!(
        lakets::delta::read::scan(&delta, &shape)
            .await
            .unwrap()
            .len(),
        0,
        "the transaction became visible in one commit"
    );
    // Each row holds ~250 bytes as cells: buffering the transaction would take > 240 MB.
    eprintln!("peak RSS grew by {} MB", grown >> 20);
    assert!(
        grown < 120 << 20,
        "peak RSS grew by {} MB for a 1M-row transaction",
        grown >> 20
    );
}
