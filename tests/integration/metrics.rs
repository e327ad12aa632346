//! The Prometheus endpoint against a real pipeline: replication lag and per-operator
//! durable positions are exported, histograms have buckets, and /healthz answers.

use crate::common;

use std::io::{Read, Write};
use std::time::Duration;

use common::fresh_db;
use common::wal::{setup_streaming, wait_until_confirmed};
use lakets::operators::chunk_tracker::ChunkTracker;
use tokio_util::sync::CancellationToken;

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_lag_and_operator_positions_are_exported() {
    let mut db = fresh_db("metrics").await;
    setup_streaming(&mut db).await;
    let shutdown = CancellationToken::new();
    let (addr, server) = lakets::http::serve("127.0.0.1:0".parse().unwrap(), shutdown.clone())
        .await
        .unwrap();
    let tracker = ChunkTracker::new(db.connect().await, db.name.clone())
        .await
        .unwrap();
    let run = tokio::spawn(
        lakets::operators::pipeline(
            lakets::db::parse_config(&db.url).unwrap(),
            common::wal::config(&db.name),
        )
        .operator(tracker)
        .run(shutdown.clone()),
    );
    db.exec("INSERT INTO events SELECT now(), i, 'v' FROM generate_series(1, 100) i")
        .await;
    let end = common::wal::lsn_now(&db).await;
    wait_until_confirmed(&db.client, &db.name, end, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for needle in [
        "lakets_replication_lag_bytes",
        "lakets_replication_lag_seconds",
        "lakets_wal_acknowledged_lsn",
        "lakets_operator_durable_lsn{operator=\"chunk_tracker\"}",
        "lakets_wal_changes_total{kind=\"insert\"}",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    let health = tokio::task::spawn_blocking(move || get(addr, "/healthz"))
        .await
        .unwrap();
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );

    shutdown.cancel();
    run.await.unwrap().unwrap();
    server.await.unwrap().unwrap();
}
