//! Interoperability: a Delta table written by lakets, read by an independent reader
//! (DuckDB's Delta extension, `tests/interop/check_delta.py`). Row counts, sums,
//! per-partition counts, exact microsecond timestamps, per-version counts and the
//! statistics logged per file must match what PostgreSQL and lakets say.
//!
//! The reader needs a Python with `duckdb-extension-delta==1.5.5`; `.ci/run` installs one
//! and sets `LAKETS_INTEROP_PYTHON`. Without it the test says so and passes, unless
//! `LAKETS_REQUIRE_INTEROP=1` (set by CI) makes that a failure.

use crate::common;

use std::time::Duration;

use common::fresh_db;
use common::wal::wait_until_confirmed;
use lakets::delta::mirror::shape_of;
use lakets::delta::schema::Partitioning;
use lakets::operators::delta_sink::DeltaSink;
use lakets::wal::lsn::Lsn;
use lakets::wal::{PipelineConfig, SourceSettings};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_what_postgres_holds() {
    let python = match std::env::var("LAKETS_INTEROP_PYTHON") {
        Ok(p) => p,
        Err(_) => {
            assert!(
                std::env::var("LAKETS_REQUIRE_INTEROP").is_err(),
                "LAKETS_REQUIRE_INTEROP is set but LAKETS_INTEROP_PYTHON is not"
            );
            eprintln!(
                "SKIPPED: set LAKETS_INTEROP_PYTHON to a Python with duckdb-extension-delta==1.5.5"
            );
            return;
        }
    };
    let mut db = fresh_db("delta_interop").await;
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                             price numeric(12, 4), volume bigint, PRIMARY KEY (symbol, time));
         INSERT INTO ticks
           SELECT timestamptz '2026-11-19 00:00:00+00' + i * interval '97 seconds 123.457 milliseconds'
                    + (i % 1000) * interval '1 microsecond',
                  'S' || (i % 9), (i % 5000) / 3.0, i
             FROM generate_series(1, 3000) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(12);
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticks");
    let config = common::sync_to(&db, "ticks", path.to_str().unwrap()).await;

    // A few commits of the stream: appends, then updates and deletes (file rewrites).
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let mut pc = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
    pc.flush_interval = Duration::from_millis(100);
    pc.ack_interval = Duration::from_millis(100);
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
    let steps = [
        "INSERT INTO ticks SELECT timestamptz '2026-11-22 09:30:00.000001+00' + i * interval '1 ms', 'N', i / 7.0, i FROM generate_series(1, 500) i",
        "UPDATE ticks SET price = price * 2, volume = volume + 1 WHERE symbol = 'S3'",
        "DELETE FROM ticks WHERE symbol = 'S4' AND time < '2026-11-20'",
        "UPDATE ticks SET time = time + interval '1 day' WHERE symbol = 'N' AND volume % 10 = 0",
    ];
    for step in steps {
        db.exec(step).await;
        let end: Lsn = db
            .scalar::<String>("SELECT pg_current_wal_insert_lsn()::text")
            .await
            .parse()
            .unwrap();
        wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(60)).await;
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();

    // What PostgreSQL says.
    let totals = db
        .client
        .query_one(
            "SELECT count(*), sum(volume)::bigint, sum(price)::text FROM ticks",
            &[],
        )
        .await
        .unwrap();
    let per_day: Vec<(String, i64)> = db
        .client
        .query(
            "SELECT to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*) FROM ticks GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let times: Vec<(String, i64)> = db
        .client
        .query(
            "SELECT symbol, ((extract(epoch FROM time) * 1000000)::numeric)::bigint FROM ticks ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    // What lakets' own reader says for every version (the per-version counts).
    let mut delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let latest = delta.version().unwrap();
    assert!(latest >= 4, "expected several versions, got {latest}");
    let mut versions = Vec::new();
    for v in 0..=latest {
        delta.load_version(v).await.unwrap();
        let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
        let n = lakets::delta::read::scan(&delta, &shape)
            .await
            .unwrap()
            .len();
        versions.push((v, n));
    }
    assert_eq!(versions.last().unwrap().1 as i64, totals.get::<_, i64>(0));

    let expected = serde_json::json!({
        "count": totals.get::<_, i64>(0),
        "sum_volume": totals.get::<_, i64>(1),
        "sum_price": totals.get::<_, String>(2),
        "per_day": per_day,
        "times": times,
        "versions": versions,
        "partition_column": "time_day",
    });
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/check_delta.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(&path)
        .arg(&expected_path)
        .output()
        .expect("running the interop script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    if let Ok(keep) = std::env::var("LAKETS_KEEP_DELTA") {
        let _ = std::process::Command::new("cp")
            .args(["-r", path.to_str().unwrap(), &keep])
            .status();
        let _ = std::fs::copy(&expected_path, format!("{keep}.expected.json"));
    }
    assert!(
        out.status.success(),
        "DuckDB disagrees:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
