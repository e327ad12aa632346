//! The WAL pipeline against a real PostgreSQL: the chunk tracker's `last_write_lsn`, the
//! slot never acknowledged past what every operator stored, and an idle slot moving on.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::fresh_db;
use common::recording::Recording;
use common::wal::*;
use lakets::operators::chunk_tracker::ChunkTracker;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_tracker_stamps_the_last_writing_transaction_and_the_slot_waits_for_every_operator() {
    let mut db = fresh_db("pipeline").await;
    setup(&mut db).await;
    let now_chunk: String = db
        .scalar("SELECT 'events_' || to_char(date_trunc('hour', now() AT TIME ZONE 'UTC'), 'YYYYMMDD_HH24MISS')")
        .await;
    let old_chunk: String = db
        .scalar("SELECT 'events_' || to_char(date_trunc('hour', now() AT TIME ZONE 'UTC') - interval '1 hour', 'YYYYMMDD_HH24MISS')")
        .await;

    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let recording = Recording::new(db.connect().await, &db.name);
    let gate = recording.gate.clone();
    let tracker = ChunkTracker::new(db.connect().await, db.name.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let pipeline = lakets::operators::pipeline(db_config, config(&db.name))
        .operator(tracker)
        .operator(recording);
    let status = pipeline.status();
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    wait_for(
        "the slot is streaming",
        Duration::from_secs(20),
        async || slot_active(&db).await == Some(true),
    )
    .await;

    let (b1, a1) = bracket(&db, "INSERT INTO events VALUES (now(), 1, 'a')").await;
    let (b2, a2) = bracket(
        &db,
        "INSERT INTO events VALUES (now() - interval '1 hour', 2, 'b')",
    )
    .await;
    let (b3, a3) = bracket(&db, "UPDATE events SET v = 'c' WHERE id = 1").await;
    // Stored past txn 3's start (= txn 3 stored): WAL written after its commit by other
    // sessions (an operator's own progress commit) can put `a3` beyond its end.
    wait_for(
        "both operators stored txn 3",
        Duration::from_secs(20),
        async || durable(&db, "chunk_tracker").await > b3 && durable(&db, "recording").await > b3,
    )
    .await;
    let now_lsn = last_write_lsn(&db, &now_chunk)
        .await
        .expect("current chunk stamped");
    assert!(
        now_lsn > b3 && now_lsn <= a3,
        "{now_lsn} not in ({b3}, {a3}]"
    );
    let old_lsn = last_write_lsn(&db, &old_chunk)
        .await
        .expect("previous chunk stamped");
    assert!(
        old_lsn > b2 && old_lsn <= a2,
        "{old_lsn} not in ({b2}, {a2}]"
    );
    assert!(b1 < a1);
    let untouched: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE last_write_lsn IS NOT NULL")
        .await;
    assert_eq!(untouched, 2, "only the two written chunks are stamped");
    let recorded: Vec<(String, i64)> = db
        .client
        .query("SELECT kind, id FROM recorded ORDER BY commit_lsn", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        recorded,
        vec![
            ("insert".into(), 1),
            ("insert".into(), 2),
            ("update".into(), 1)
        ]
    );

    // A move between chunks touches both.
    let (b4, a4) = bracket(
        &db,
        "UPDATE events SET time = now() - interval '1 hour' WHERE id = 1",
    )
    .await;
    wait_for("txn 4 stored", Duration::from_secs(20), async || {
        durable(&db, "chunk_tracker").await > b4
    })
    .await;
    for chunk in [&now_chunk, &old_chunk] {
        let l = last_write_lsn(&db, chunk).await.unwrap();
        assert!(l > b4 && l <= a4, "{chunk}: {l} not in ({b4}, {a4}]");
    }

    // Stall one operator: the slot must never pass the first transaction it has not
    // stored, whatever the other operator does. (Before that transaction, an operator with
    // nothing pending may confirm heartbeat positions past its stored LSN: nothing there
    // concerns it.)
    wait_for("acknowledged", Duration::from_secs(20), async || {
        confirmed_flush(&db).await >= a4
    })
    .await;
    gate.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = durable(&db, "recording").await;
    let first_unstored = lsn_now(&db).await;
    for i in 0..20 {
        db.exec(&format!(
            "INSERT INTO events VALUES (now(), {}, 'x')",
            100 + i
        ))
        .await;
        let confirmed = confirmed_flush(&db).await;
        assert!(
            confirmed <= first_unstored,
            "slot confirmed {confirmed}, past the unstored transaction at {first_unstored}"
        );
        assert_eq!(durable(&db, "recording").await, stalled_at);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let tracker_ahead = durable(&db, "chunk_tracker").await;
    assert!(
        tracker_ahead > first_unstored,
        "the healthy operator kept going"
    );
    assert!(confirmed_flush(&db).await <= first_unstored);
    gate.store(true, Ordering::SeqCst);
    let end = lsn_now(&db).await;
    wait_for(
        "the stalled operator catches up and the slot follows",
        Duration::from_secs(20),
        async || confirmed_flush(&db).await >= end,
    )
    .await;
    let n: i64 = db
        .scalar("SELECT count(*) FROM recorded WHERE id >= 100")
        .await;
    assert_eq!(n, 20);

    // Idle: heartbeats move the slot past unrelated WAL.
    db.exec(
        "CREATE TABLE unrelated (x int); INSERT INTO unrelated SELECT generate_series(1, 1000)",
    )
    .await;
    let after_unrelated = lsn_now(&db).await;
    wait_for(
        "heartbeats advance the idle slot",
        Duration::from_secs(20),
        async || confirmed_flush(&db).await >= after_unrelated,
    )
    .await;
    let st = status.lock().unwrap().clone();
    assert!(st.transactions >= 24 && st.changes >= 24, "{st:?}");
    assert_eq!(st.operators.len(), 2);

    shutdown.cancel();
    run.await.unwrap().expect("clean shutdown");
    wait_for(
        "the replication connection is closed",
        Duration::from_secs(10),
        async || slot_active(&db).await == Some(false),
    )
    .await;
}

/// A transaction streamed before it is visible has an xid at or past the snapshot's xmax:
/// it is waited for (bounded, then a transient error, never a definite one), and a
/// committed one is widened to its full 64-bit id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_widened_to_their_full_id_and_future_ones_waited_for() {
    use lakets::catalog::announce::wait_until_visible_within;
    let db = fresh_db("pipeline_visibility").await;
    let committed: i64 = db.scalar("SELECT pg_current_xact_id()::text::bigint").await;
    let full = wait_until_visible_within(&db.client, committed as u32, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(full, committed);
    // An id no transaction has yet (what a commit not yet visible looks like from here).
    let next: i64 = db
        .scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        .await;
    let err =
        wait_until_visible_within(&db.client, (next + 1000) as u32, Duration::from_millis(200))
            .await
            .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("not become visible"), "{err}");
}

/// The tracker places a transaction's rows that fall in the chunk of the row before without
/// a lookup: rows alternating between chunks must still stamp each chunk, and the next
/// transaction's first row in the chunk the previous one ended in must stamp it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_alternating_between_chunks_stamp_each_and_the_next_transaction_stamps_again() {
    let mut db = fresh_db("tracker_alternating").await;
    setup(&mut db).await;
    let chunk = async |hours_ago: i32| -> String {
        db.scalar(&format!(
            "SELECT 'events_' || to_char(date_trunc('hour', now() AT TIME ZONE 'UTC') - \
             interval '{hours_ago} hour', 'YYYYMMDD_HH24MISS')"
        ))
        .await
    };
    let (now_chunk, old_chunk) = (chunk(0).await, chunk(1).await);
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let tracker = ChunkTracker::new(db.connect().await, db.name.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let pipeline = lakets::operators::pipeline(db_config, config(&db.name)).operator(tracker);
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    wait_for(
        "the slot is streaming",
        Duration::from_secs(20),
        async || slot_active(&db).await == Some(true),
    )
    .await;

    let (b1, a1) = bracket(
        &db,
        "INSERT INTO events VALUES (now(), 1, 'a'), (now() - interval '1 hour', 2, 'b'),
                                   (now(), 3, 'c'), (now() - interval '1 hour', 4, 'd')",
    )
    .await;
    // Ends in the old chunk, as the transaction before did.
    let (b2, a2) = bracket(
        &db,
        "INSERT INTO events VALUES (now() - interval '1 hour', 5, 'e')",
    )
    .await;
    wait_for("txn 2 stored", Duration::from_secs(20), async || {
        durable(&db, "chunk_tracker").await > b2
    })
    .await;
    let now_lsn = last_write_lsn(&db, &now_chunk).await.expect("stamped");
    assert!(
        now_lsn > b1 && now_lsn <= a1,
        "{now_lsn} not in ({b1}, {a1}]"
    );
    let old_lsn = last_write_lsn(&db, &old_chunk).await.expect("stamped");
    assert!(
        old_lsn > b2 && old_lsn <= a2,
        "{old_lsn} not in ({b2}, {a2}]"
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
