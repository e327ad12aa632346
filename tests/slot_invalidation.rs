//! The slot invalidated by `max_slot_wal_keep_size` while the service is stopped: the WAL
//! it still needed is gone, so the stream has a gap. The service must not stream into the
//! gap (it refuses to start, saying why and what to do), and no chunk may be tiered or
//! dropped on the strength of the lost slot. Its own test binary: it changes a setting of
//! the cluster.

mod common;

use std::time::Duration;

use common::fresh_db;
use lakets::interval::Interval;
use lakets::lifecycle::{self, GateSettings};
use lakets::wal::{PipelineConfig, SourceSettings};
use tokio_util::sync::CancellationToken;

const QUICK: GateSettings = GateSettings {
    lock_timeout: Duration::from_secs(2),
    wait: Duration::from_secs(2),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_the_stream_and_every_drop() {
    let mut db = fresh_db("slot_lost").await;
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price float8);
         INSERT INTO ticks SELECT now() - i * interval '1 minute', 'S' || (i % 4), i
           FROM generate_series(1, 600) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = Interval::hours(1);
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    common::sync_to(&db, "ticks", dir.path().join("ticks").to_str().unwrap()).await;
    lifecycle::policy::set_policy(
        &db.client,
        "ticks",
        Some(Interval::hours(2)),
        Some(Interval::hours(4)),
    )
    .await
    .unwrap();
    let slot = lakets::wal::setup::default_slot_name(&db.name);
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let pipeline = |cancel: CancellationToken| {
        let (db_config, slot) = (db_config.clone(), slot.clone());
        async move {
            let mut config = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
            config.flush_interval = Duration::from_millis(100);
            config.ack_interval = Duration::from_millis(100);
            lakets::service::standard_pipeline(&db_config, config, Default::default(), None)
                .await?
                .run(cancel)
                .await
        }
    };

    // The service streams for a while, then stops; writes go on; the server recycles
    // the WAL the slot still needs.
    let cancel = CancellationToken::new();
    let running = tokio::spawn(pipeline(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    cancel.cancel();
    running.await.unwrap().unwrap();
    for statement in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'",
        "SELECT pg_reload_conf()",
        "INSERT INTO ticks SELECT now() - interval '7 hours', 'GAP', 1",
        "CREATE TABLE filler (x text)",
    ] {
        db.exec(statement).await;
    }
    let mut lost = false;
    for _ in 0..10 {
        for statement in [
            "INSERT INTO filler SELECT repeat(md5(i::text), 30) FROM generate_series(1, 40000) i",
            "TRUNCATE filler",
            "SELECT pg_switch_wal()",
            "CHECKPOINT",
        ] {
            db.exec(statement).await;
        }
        let status: Option<String> = db
            .client
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            lost = true;
            break;
        }
    }
    db.exec("ALTER SYSTEM RESET max_slot_wal_keep_size").await;
    db.exec("SELECT pg_reload_conf()").await;
    assert!(lost, "the slot was not invalidated");

    // The service refuses to stream into the gap, and says what happened and what to do.
    let err = pipeline(CancellationToken::new())
        .await
        .expect_err("streaming from an invalidated slot")
        .to_string();
    for needle in [
        "was invalidated",
        "max_slot_wal_keep_size",
        "nothing will be dropped",
        "resync",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }

    // No chunk leaves the hot tier on the strength of the lost slot, however often asked.
    for _ in 0..2 {
        let report = lifecycle::tier(&mut db.client, None, None, QUICK, None)
            .await
            .unwrap();
        assert!(report.moved.is_empty(), "{report:?}");
        assert!(!report.deferred.is_empty());
        let report = lifecycle::retention(&mut db.client, None, QUICK, None)
            .await
            .unwrap();
        assert!(report.moved.is_empty(), "{report:?}");
    }
    let gone: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE status <> 'active'")
        .await;
    assert_eq!(gone, 0, "nothing tiered or dropped");
    let gap_row: i64 = db
        .scalar("SELECT count(*) FROM ticks WHERE symbol = 'GAP'")
        .await;
    assert_eq!(
        gap_row, 1,
        "the row written into the gap is still in PostgreSQL"
    );
}
