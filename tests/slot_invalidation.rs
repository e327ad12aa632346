//! The slot invalidated by `max_slot_wal_keep_size` while the service is stopped: the WAL
//! it still needed is gone, so the stream has a gap. The service must not stream into the
//! gap (it refuses to start, saying why and what to do), and no chunk may be tiered or
//! dropped on the strength of the lost slot, nor after the slot is dropped by hand. Then
//! `lakets resync` closes the gap: the Delta table, the cache and the rollup equal the
//! table again (`verify`), the dropped chunks' history stays in Delta, and the stream and
//! the drops resume. Its own test binary: it changes a setting of the cluster.

mod common;

use std::time::Duration;

use common::{dropped_chunks, fresh_db};
use lakets::lifecycle;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_the_stream_and_every_drop_until_resync() {
    let mut db = fresh_db("slot_lost").await;
    let dir = tempfile::tempdir().unwrap();
    let sync = common::synced_ticks_with_every_operator(&mut db, dir.path()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let pipeline = |cancel: CancellationToken| {
        let (db_config, slot) = (db_config.clone(), slot.clone());
        async move { common::wal::stream(&db_config, &slot, cancel).await }
    };

    // The service streams; the oldest chunks are tiered and dropped (their rows then live
    // only in Delta); it stops; writes go on (a new row, corrections, deletes); the server
    // recycles the WAL the slot still needs.
    let cancel = CancellationToken::new();
    let running = tokio::spawn(pipeline(cancel.clone()));
    // As of two hours ago, so that chunks are still due when the gap opens.
    let earlier = Some(chrono::Utc::now() - chrono::Duration::hours(2));
    lifecycle::tier(&db.config(), None, None, common::PATIENT_GATE, earlier)
        .await
        .unwrap();
    let report = lifecycle::retention(&db.config(), None, common::PATIENT_GATE, earlier)
        .await
        .unwrap();
    assert!(!report.moved.is_empty(), "{report:?}");
    let dropped = dropped_chunks(&db).await;
    let mut cold = Vec::new();
    for c in &dropped {
        cold.push(common::delta_rows_in(&sync.location, c.start, c.end).await);
    }
    cancel.cancel();
    running.await.unwrap().unwrap();
    let before_gap = common::chunk_status_counts(&db.client).await;
    for statement in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'",
        "SELECT pg_reload_conf()",
        "INSERT INTO ticks SELECT now() - interval '3 hours', 'GAP', 1",
        "UPDATE ticks SET price = price + 1000 WHERE symbol = 'S1' AND time > now() - interval '2 hours'",
        "DELETE FROM ticks WHERE symbol = 'S2' AND time > now() - interval '30 minutes'",
        "INSERT INTO ticks VALUES (now(), 'S3', -1)",
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
        let report = lifecycle::tier(&db.config(), None, None, common::QUICK_GATE, None)
            .await
            .unwrap();
        assert!(report.moved.is_empty(), "{report:?}");
        assert!(!report.deferred.is_empty());
        let report = lifecycle::retention(&db.config(), None, common::QUICK_GATE, None)
            .await
            .unwrap();
        assert!(report.moved.is_empty(), "{report:?}");
    }
    assert_eq!(
        common::chunk_status_counts(&db.client).await,
        before_gap,
        "nothing tiered or dropped"
    );
    let gap_row: i64 = db
        .scalar("SELECT count(*) FROM ticks WHERE symbol = 'GAP'")
        .await;
    assert_eq!(
        gap_row, 1,
        "the row written into the gap is still in PostgreSQL"
    );

    // Dropping the lost slot by hand does not open the door: the gap stays recorded, and
    // a slot that vanished with progress stored is recognised as a gap on its own.
    lakets::catalog::replication::drop_slot(&db.client, &slot, "lakets", true)
        .await
        .unwrap();
    db.exec("DELETE FROM lakets._stream_gaps").await;
    for _ in 0..2 {
        let err = pipeline(CancellationToken::new())
            .await
            .expect_err("streaming after the lost slot was dropped")
            .to_string();
        assert!(
            err.contains("dropped while lakets operators depended on it")
                && err.contains("lakets resync"),
            "{err}"
        );
    }
    let report = lifecycle::retention(&db.config(), None, common::QUICK_GATE, None)
        .await
        .unwrap();
    assert!(report.moved.is_empty(), "{report:?}");
    // Tiered chunks due for the drop wait for the resync (others wait for tiering).
    assert!(
        report
            .deferred
            .iter()
            .any(|(_, why)| why.contains("lakets resync"))
            && report.deferred.iter().all(|(_, why)| {
                why.contains("lakets resync") || why.starts_with("not tiered yet")
            }),
        "{report:?}"
    );

    // `lakets resync` closes the gap.
    let out = common::lakets_cli(&db.url, &["resync", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hot: i64 = db.scalar("SELECT count(*) FROM ticks").await;
    assert_eq!(report["tables"][0]["rows"], hot, "{report}");
    assert_eq!(
        report["tables"][0]["kept_ranges"],
        dropped.len(),
        "{report}"
    );
    assert_eq!(report["caches"][0]["keys"], 5, "{report}");
    assert_eq!(report["rollups"][0], "ticks_1min", "{report}");
    assert_eq!(report["slots_created"][0], slot.as_str(), "{report}");
    let again = common::lakets_cli(&db.url, &["resync"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing to resync"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The stream resumes from the new slot; later changes land on the resynced state.
    let cancel = CancellationToken::new();
    let running = tokio::spawn(pipeline(cancel.clone()));
    db.exec(
        "INSERT INTO ticks VALUES (now() + interval '1 second', 'AFTER', 7);
         UPDATE ticks SET price = price + 1 WHERE symbol = 'GAP';",
    )
    .await;
    let end: lakets::wal::Lsn = db
        .scalar::<String>("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .parse()
        .unwrap();
    common::wal::wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(60)).await;
    lakets::rollup::refresh::refresh(&mut db.client, None, true, true)
        .await
        .unwrap();
    let verified = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    assert!(verified.ok, "{:?}", verified.differences);
    assert_eq!(verified.lvc_differences, Some(0), "{verified:?}");
    assert_eq!(verified.rollups.len(), 1, "{verified:?}");
    for (c, rows) in dropped.iter().zip(&cold) {
        assert_eq!(
            common::delta_rows_in(&sync.location, c.start, c.end).await,
            *rows,
            "the history of dropped chunk {} stays in Delta",
            c.name
        );
    }
    // And the chunks held back by the gap move again.
    let report = lifecycle::tier(&db.config(), None, None, common::PATIENT_GATE, None)
        .await
        .unwrap();
    assert!(!report.moved.is_empty(), "{report:?}");
    assert!(report.deferred.is_empty(), "{report:?}");
    let report = lifecycle::retention(&db.config(), None, common::PATIENT_GATE, None)
        .await
        .unwrap();
    assert!(!report.moved.is_empty(), "{report:?}");
    assert!(report.deferred.is_empty(), "{report:?}");
    cancel.cancel();
    running.await.unwrap().unwrap();
}
