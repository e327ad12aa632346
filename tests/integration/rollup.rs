//! The RollUp DAG against a real PostgreSQL and a real pipeline (the invalidation
//! operator): randomized in-order and late ticks, corrections and deletes, then every
//! rollup equals the same aggregation recomputed from scratch; topological refresh order;
//! concurrent refreshes; refresh_lag; bad requests.

use crate::common;

use std::time::Duration;

use common::wal::wait_until_confirmed;
use common::{TestDb, fresh_db};
use lakets::interval::Interval;
use lakets::operators::invalidations::Invalidations;
use lakets::rollup::{self, CreateRollup, check::check_rollup, refresh::refresh};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn seed() -> u64 {
    std::env::var("LAKETS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1
}

/// `ticks` (no primary key: REPLICA IDENTITY FULL) with three days of history.
async fn ticks_table(db: &mut TestDb) {
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                             price double precision, volume bigint);
         INSERT INTO ticks
         SELECT date_trunc('minute', now()) - i * interval '347 seconds', 'S' || (i % 5),
                100 + (i % 37), 1 + i % 11
           FROM generate_series(1, 750) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = Interval::days(1);
    opts.premake = 2;
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
}

fn request(
    name: &str,
    source: &str,
    bucket: &str,
    group_by: &str,
    aggregate: &str,
) -> CreateRollup {
    CreateRollup {
        name: name.into(),
        source: source.into(),
        bucket: Interval::parse(bucket).unwrap(),
        group_by: group_by
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        aggregate: aggregate.into(),
        refresh_lag: Interval::ZERO,
    }
}

const SPEC: &str = "ohlcv(price, volume), avg(price), count(*)";

/// The spec's three-level DAG, plus an ungrouped hourly rollup of the 1-minute one.
async fn spec_dag(db: &mut TestDb) {
    for r in [
        request("ohlcv_1min", "ticks", "1 minute", "symbol", SPEC),
        request("ohlcv_1hour", "ohlcv_1min", "1 hour", "symbol", SPEC),
        request("ohlcv_1day", "ohlcv_1hour", "1 day", "symbol", SPEC),
        request(
            "market_1hour",
            "ohlcv_1min",
            "1 hour",
            "",
            "min(price), max(price), sum(volume), avg(price)",
        ),
    ] {
        rollup::create_rollup(&mut db.client, &r).await.unwrap();
    }
}

/// A pipeline with the invalidation operator on the default slot.
async fn start_pipeline(
    db: &TestDb,
) -> (CancellationToken, JoinHandle<lakets::Result<()>>, String) {
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let config = common::wal::config(&slot);
    let op = Invalidations::new(db.connect().await, slot.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        lakets::operators::pipeline(lakets::db::parse_config(&db.url).unwrap(), config)
            .operator(op)
            .run(shutdown.clone()),
    );
    (shutdown, run, slot)
}

async fn caught_up(db: &TestDb, slot: &str) {
    let end = common::wal::lsn_now(db).await;
    wait_until_confirmed(&db.client, slot, end, Duration::from_secs(60)).await;
}

/// Every rollup equals its recomputation from scratch below its watermark.
async fn assert_all_equal(db: &TestDb, when: &str) {
    for r in rollup::list_rollups(&db.client).await.unwrap() {
        let check = check_rollup(&db.client, &r).await.unwrap();
        assert!(
            check.ok,
            "{when}: rollup {} differs from its recomputation in {} rows: {:?} (pending {})",
            r.name, check.differing_rows, check.examples, check.pending_invalidations
        );
    }
}

/// The exact columns of the real-time view against the aggregation over all rows.
async fn realtime_differences(db: &TestDb, rollup: &str, scratch: &str) -> i64 {
    let cols = "bucket, symbol, open, high, low, close, volume, count_all";
    db.scalar(&format!(
        "SELECT count(*) FROM (
            (SELECT {cols} FROM {rollup}_realtime EXCEPT ALL SELECT {cols} FROM ({scratch}) s)
            UNION ALL
            (SELECT {cols} FROM ({scratch}) s EXCEPT ALL SELECT {cols} FROM {rollup}_realtime)) d"
    ))
    .await
}

fn scratch(bucket: &str) -> String {
    format!(
        "SELECT date_bin('{bucket}', time, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket, symbol,
                (array_agg(price ORDER BY time, price) FILTER (WHERE price IS NOT NULL))[1] AS open,
                max(price) AS high, min(price) AS low,
                (array_agg(price ORDER BY time DESC, price DESC) FILTER (WHERE price IS NOT NULL))[1] AS close,
                sum(volume) AS volume, count(*) AS count_all
           FROM ticks GROUP BY 1, 2"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dag_equals_a_recomputation_under_late_rows_corrections_and_deletes() {
    let mut db = fresh_db("rollup_random").await;
    ticks_table(&mut db).await;
    spec_dag(&mut db).await;
    let (shutdown, run, slot) = start_pipeline(&db).await;

    let reports = refresh(&mut db.client, None, true, false).await.unwrap();
    let order: Vec<&str> = reports.iter().map(|r| r.rollup.as_str()).collect();
    assert_eq!(
        order,
        ["ohlcv_1min", "market_1hour", "ohlcv_1hour", "ohlcv_1day"]
    );
    assert!(
        reports
            .iter()
            .all(|r| r.watermark_after.is_some() && r.rows_written > 0)
    );
    assert_all_equal(&db, "first refresh").await;

    let seed = seed();
    eprintln!("rollup seed {seed} (LAKETS_TEST_SEED to replay)");
    let mut rng = Rng(seed);
    for step in 0..400 {
        let symbol = format!("S{}", rng.below(6));
        let sql = match rng.below(12) {
            // In order (now, a few seconds ahead).
            0..=3 => format!(
                "INSERT INTO ticks VALUES (now() + {} * interval '1 second', '{symbol}', {}, {})",
                rng.below(5),
                rng.below(1000),
                rng.below(100)
            ),
            // Late: up to three days back, several rows in one statement.
            4 | 5 => format!(
                "INSERT INTO ticks SELECT now() - {} * interval '1 minute' - i * interval '13 seconds',
                        '{symbol}', {}, i FROM generate_series(1, {}) i",
                rng.below(3 * 24 * 60),
                rng.below(1000),
                1 + rng.below(4)
            ),
            // Correct a price.
            6 => format!(
                "UPDATE ticks SET price = price * 2 WHERE ctid = (SELECT ctid FROM ticks
                   WHERE symbol = '{symbol}' ORDER BY random() LIMIT 1)"
            ),
            // Move a row in time (to another bucket) or to another symbol.
            7 => format!(
                "UPDATE ticks SET time = greatest(time - {} * interval '1 minute', now() - interval '3 days'),
                        symbol = 'S{}'
                  WHERE ctid = (SELECT ctid FROM ticks WHERE symbol = '{symbol}' ORDER BY random() LIMIT 1)",
                rng.below(600),
                rng.below(6)
            ),
            // A NULL price (ignored by first/last/min/max/avg, counted by count(*)).
            8 => format!(
                "UPDATE ticks SET price = NULL WHERE ctid = (SELECT ctid FROM ticks
                   WHERE symbol = '{symbol}' ORDER BY random() LIMIT 1)"
            ),
            // Delete one row, or a whole old minute of a symbol.
            9 => format!(
                "DELETE FROM ticks WHERE ctid = (SELECT ctid FROM ticks
                   WHERE symbol = '{symbol}' ORDER BY random() LIMIT 1)"
            ),
            10 => format!(
                "DELETE FROM ticks WHERE symbol = '{symbol}' AND date_trunc('minute', time) =
                   (SELECT date_trunc('minute', time) FROM ticks WHERE symbol = '{symbol}'
                     ORDER BY random() LIMIT 1)"
            ),
            // A tie in time with a different price (first/last break ties by value).
            _ => format!(
                "INSERT INTO ticks SELECT time, symbol, price + 1, 1 FROM ticks
                  WHERE symbol = '{symbol}' ORDER BY random() LIMIT 1"
            ),
        };
        db.exec(&sql).await;
        if step % 97 == 0 {
            // Refreshes while the stream is behind: whatever they miss is logged later.
            refresh(&mut db.client, None, true, false).await.unwrap();
        }
    }
    caught_up(&db, &slot).await;
    assert!(!run.is_finished(), "the pipeline stopped early");
    refresh(&mut db.client, None, true, false).await.unwrap();
    assert_all_equal(&db, "after the workload").await;
    // Buckets not yet materialized come from the source in the real-time view: the whole
    // chain is current.
    for (name, bucket) in [
        ("ohlcv_1min", "1 minute"),
        ("ohlcv_1hour", "1 hour"),
        ("ohlcv_1day", "1 day"),
    ] {
        assert_eq!(
            realtime_differences(&db, name, &scratch(bucket)).await,
            0,
            "{name}_realtime differs from the aggregation over all rows"
        );
    }

    // A bulk in-order load is logged as ranges, not rows: one per symbol touched.
    let before: i64 = db
        .scalar(
            "SELECT count(*) FROM lakets._rollup_invalidation_log WHERE rollup_name = 'ohlcv_1min'",
        )
        .await;
    db.exec(
        "INSERT INTO ticks SELECT date_trunc('hour', now()) - interval '1 day' + i * interval '30 ms',
                'S' || (i % 5), i % 100, 1 FROM generate_series(1, 20000) i",
    )
    .await;
    caught_up(&db, &slot).await;
    let logged: i64 = db
        .scalar(
            "SELECT count(*) FROM lakets._rollup_invalidation_log WHERE rollup_name = 'ohlcv_1min'",
        )
        .await;
    assert!(
        logged - before <= 5,
        "20,000 ticks over 10 minutes and 5 symbols logged {} invalidation rows",
        logged - before
    );
    let report = refresh(&mut db.client, Some("ohlcv_1min"), true, false)
        .await
        .unwrap();
    assert_eq!(report.len(), 4, "ohlcv_1min and its three readers");
    assert_all_equal(&db, "after the bulk load").await;
    let pending: i64 = db
        .scalar("SELECT count(*) FROM lakets._rollup_invalidation_log")
        .await;
    assert_eq!(pending, 0, "a cascade consumes every invalidation");

    // TRUNCATE invalidates everything.
    db.exec("TRUNCATE ticks").await;
    caught_up(&db, &slot).await;
    refresh(&mut db.client, None, true, false).await.unwrap();
    assert_all_equal(&db, "after TRUNCATE").await;
    let left: i64 = db.scalar("SELECT count(*) FROM ohlcv_1day").await;
    assert_eq!(left, 0);

    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cascade_refreshes_sources_before_readers_not_alphabetically() {
    let mut db = fresh_db("rollup_topo").await;
    ticks_table(&mut db).await;
    spec_dag(&mut db).await;
    let (shutdown, run, slot) = start_pipeline(&db).await;
    refresh(&mut db.client, None, true, false).await.unwrap();
    // Alphabetically ohlcv_1day < ohlcv_1hour < ohlcv_1min: a naive pass would refresh
    // the day first, from stale hours, and leave it behind for a whole run.
    let day_watermark: String = db
        .scalar(
            "SELECT watermark::text FROM lakets._rollup_registry WHERE rollup_name = 'ohlcv_1day'",
        )
        .await;
    let today: String = db
        .scalar("SELECT date_bin('1 day', now(), TIMESTAMPTZ '1970-01-01 00:00:00+00')::text")
        .await;
    assert_eq!(
        day_watermark, today,
        "one run brings the day level to today"
    );

    // A late tick two days back with an extreme price reaches the day candle in one run.
    db.exec("INSERT INTO ticks VALUES (now() - interval '2 days', 'S1', 1e6, 5)")
        .await;
    caught_up(&db, &slot).await;
    refresh(&mut db.client, None, true, false).await.unwrap();
    let high: f64 = db
        .scalar(
            "SELECT high FROM ohlcv_1day WHERE symbol = 'S1'
                AND bucket = date_bin('1 day', now() - interval '2 days', TIMESTAMPTZ '1970-01-01 00:00:00+00')",
        )
        .await;
    assert_eq!(high, 1e6);
    assert_all_equal(&db, "after one cascade").await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_neither_double_apply_nor_lose_invalidations() {
    let mut db = fresh_db("rollup_concurrent").await;
    ticks_table(&mut db).await;
    spec_dag(&mut db).await;
    let (shutdown, run, slot) = start_pipeline(&db).await;
    let stop = CancellationToken::new();
    let mut refreshers = Vec::new();
    for _ in 0..3 {
        let mut client = db.connect().await;
        let stop = stop.clone();
        refreshers.push(tokio::spawn(async move {
            let mut runs = 0;
            while !stop.is_cancelled() {
                refresh(&mut client, None, true, false).await.unwrap();
                runs += 1;
            }
            runs
        }));
    }
    let mut rng = Rng(seed());
    for _ in 0..300 {
        let symbol = format!("S{}", rng.below(5));
        let sql = match rng.below(4) {
            0 => format!(
                "INSERT INTO ticks VALUES (now() - {} * interval '1 minute', '{symbol}', {}, 1)",
                rng.below(3 * 24 * 60),
                rng.below(1000)
            ),
            1 => format!(
                "INSERT INTO ticks VALUES (now(), '{symbol}', {}, 2)",
                rng.below(1000)
            ),
            2 => format!(
                "UPDATE ticks SET volume = volume + 1 WHERE ctid = (SELECT ctid FROM ticks
                   WHERE symbol = '{symbol}' ORDER BY random() LIMIT 1)"
            ),
            _ => format!(
                "DELETE FROM ticks WHERE ctid = (SELECT ctid FROM ticks
                   WHERE symbol = '{symbol}' ORDER BY random() LIMIT 1)"
            ),
        };
        db.exec(&sql).await;
    }
    stop.cancel();
    for r in refreshers {
        assert!(r.await.unwrap() > 0);
    }
    caught_up(&db, &slot).await;
    refresh(&mut db.client, None, true, false).await.unwrap();
    assert_all_equal(&db, "after concurrent refreshes").await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_lag_gates_and_force_overrides() {
    let mut db = fresh_db("rollup_lag").await;
    ticks_table(&mut db).await;
    let mut r = request("lagged", "ticks", "1 hour", "symbol", "max(price)");
    r.refresh_lag = Interval::hours(1);
    rollup::create_rollup(&mut db.client, &r).await.unwrap();
    rollup::create_rollup(
        &mut db.client,
        &request("eager", "ticks", "1 hour", "", "count(*)"),
    )
    .await
    .unwrap();
    let first = refresh(&mut db.client, None, true, false).await.unwrap();
    assert!(first.iter().all(|r| r.skipped.is_none()), "{first:?}");
    let second = refresh(&mut db.client, None, true, false).await.unwrap();
    let lagged = second.iter().find(|r| r.rollup == "lagged").unwrap();
    assert!(
        lagged
            .skipped
            .as_deref()
            .is_some_and(|s| s.contains("1 hour")),
        "{lagged:?}"
    );
    assert!(
        second
            .iter()
            .find(|r| r.rollup == "eager")
            .unwrap()
            .skipped
            .is_none()
    );
    let forced = refresh(&mut db.client, Some("lagged"), false, true)
        .await
        .unwrap();
    assert!(forced[0].skipped.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_reasons_and_change_nothing() {
    let mut db = fresh_db("rollup_bad").await;
    ticks_table(&mut db).await;
    db.exec(
        "CREATE TABLE keyed (id bigint, time timestamptz NOT NULL, symbol text, price float8,
                             PRIMARY KEY (id, time));
         CREATE TABLE taken (x int);",
    )
    .await;
    let opts = lakets::chronotable::CreateOptions::new("time");
    lakets::chronotable::create_chronotable(&mut db.client, "keyed", &opts)
        .await
        .unwrap();
    rollup::create_rollup(
        &mut db.client,
        &request("m1", "ticks", "1 minute", "symbol", "max(price), count(*)"),
    )
    .await
    .unwrap();
    let cases: Vec<(CreateRollup, &str)> = vec![
        (
            request("x", "ticks", "1 minute", "symbol", "max(nope)"),
            "has no column \"nope\"",
        ),
        (
            request("x", "ticks", "1 minute", "nope", "max(price)"),
            "--group-by \"nope\"",
        ),
        (
            request("x", "ticks", "1 minute", "time", "max(price)"),
            "is the time column",
        ),
        (
            request("x", "ticks", "1 minute", "", "sum(symbol)"),
            "not numeric",
        ),
        (
            request("x", "ticks", "1 minute", "", "median(price)"),
            "unknown function",
        ),
        (
            request("x", "ticks", "1 minute", "", "max(price"),
            "unbalanced",
        ),
        (
            request("x", "ticks", "1 minute", "", ""),
            "names no aggregate",
        ),
        (
            request("x", "ticks", "1 minute", "", "max(price); DROP TABLE ticks"),
            "does not end with",
        ),
        (
            request("x", "nope", "1 minute", "", "max(price)"),
            "ChronoTable or rollup nope does not exist",
        ),
        (
            request("x", "m1", "90 seconds", "symbol", "max(price)"),
            "not a whole number of m1's buckets",
        ),
        (
            request("x", "m1", "1 hour", "symbol", "avg(price)"),
            "cannot be re-aggregated from m1",
        ),
        (
            request("x", "m1", "1 hour", "symbol", "min(price)"),
            "cannot be re-aggregated from m1",
        ),
        (
            request("x", "m1", "1 hour", "price", "max(price)"),
            "m1 is not grouped by it",
        ),
        (
            request("m1", "ticks", "1 minute", "", "max(price)"),
            "already exists",
        ),
        (
            request("taken", "ticks", "1 minute", "", "max(price)"),
            "already exists",
        ),
        (
            request("x", "x", "1 minute", "", "max(price)"),
            "cannot read itself",
        ),
        (
            request("x; drop table ticks", "ticks", "1 minute", "", "max(price)"),
            "invalid name",
        ),
        (
            request(&"n".repeat(60), "ticks", "1 minute", "", "max(price)"),
            "too long",
        ),
        (
            request("x", "ticks", "1 minute", "", "max(price), max(price)"),
            "two columns named",
        ),
        (
            request("x", "keyed", "1 minute", "symbol", "max(price)"),
            "REPLICA IDENTITY FULL",
        ),
    ];
    let registry_before: i64 = db
        .scalar("SELECT count(*) FROM lakets._rollup_registry")
        .await;
    let relations_before: i64 = db.scalar("SELECT count(*) FROM pg_class").await;
    for (req, why) in cases {
        let err = rollup::create_rollup(&mut db.client, &req)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{req:?}: expected {why:?} in {err:?}");
    }
    let mut zero = request("x", "ticks", "1 minute", "", "max(price)");
    zero.bucket = Interval::ZERO;
    let err = rollup::create_rollup(&mut db.client, &zero)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("longer than zero"), "{err}");
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM lakets._rollup_registry")
            .await,
        registry_before
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM pg_class").await,
        relations_before
    );
    let ticks: i64 = db.scalar("SELECT count(*) FROM ticks").await;
    assert_eq!(ticks, 750);

    // A rollup with readers cannot be dropped; a reader can, then the rollup.
    rollup::create_rollup(
        &mut db.client,
        &request("h1", "m1", "1 hour", "symbol", "max(price)"),
    )
    .await
    .unwrap();
    let err = rollup::drop_rollup(&mut db.client, "m1").await.unwrap_err();
    assert!(err.to_string().contains("is read by h1"), "{err}");
    // A cycle made by hand in the registry is refused at refresh.
    db.exec(
        "ALTER TABLE lakets._rollup_registry DISABLE TRIGGER ALL;
         UPDATE lakets._rollup_registry SET source_rollup = 'h1' WHERE rollup_name = 'm1';
         ALTER TABLE lakets._rollup_registry ENABLE TRIGGER ALL;",
    )
    .await;
    let err = refresh(&mut db.client, None, true, false)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("h1, m1 read each other in a cycle"),
        "{err}"
    );
    db.exec("UPDATE lakets._rollup_registry SET source_rollup = NULL WHERE rollup_name = 'm1'")
        .await;
    rollup::drop_rollup(&mut db.client, "h1").await.unwrap();
    let gone: bool = db.scalar("SELECT to_regclass('h1_realtime') IS NULL").await;
    assert!(gone);

    // drop_chronotable tears the rollups down with the table.
    lakets::chronotable::drop_chronotable(&mut db.client, "ticks")
        .await
        .unwrap();
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM lakets._rollup_registry")
            .await,
        0
    );
    assert!(db.scalar::<bool>("SELECT to_regclass('m1') IS NULL").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_and_date_time_columns_bucket_as_utc() {
    let mut db = fresh_db("rollup_types").await;
    db.exec(
        "CREATE TABLE readings (time timestamp NOT NULL, sensor int NOT NULL, value numeric(10,2));
         INSERT INTO readings SELECT localtimestamp - i * interval '5 minutes', i % 3, i / 7.0
           FROM generate_series(1, 600) i;
         CREATE TABLE daily (day date NOT NULL, sensor int NOT NULL, value bigint);
         INSERT INTO daily SELECT current_date - i, i % 2, i FROM generate_series(1, 60) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = Interval::hours(6);
    lakets::chronotable::create_chronotable(&mut db.client, "readings", &opts)
        .await
        .unwrap();
    let mut opts = lakets::chronotable::CreateOptions::new("day");
    opts.chunk_interval = Interval::days(7);
    lakets::chronotable::create_chronotable(&mut db.client, "daily", &opts)
        .await
        .unwrap();
    for r in [
        request(
            "readings_15min",
            "readings",
            "15 minutes",
            "sensor",
            "avg(value), first(value), last(value), count(*)",
        ),
        request(
            "readings_2h",
            "readings_15min",
            "2 hours",
            "sensor",
            "avg(value), first(value), last(value), count(*)",
        ),
        request(
            "readings_6h",
            "readings_15min",
            "6 hours",
            "",
            "avg(value), count(*)",
        ),
        request(
            "daily_week",
            "daily",
            "7 days",
            "sensor",
            "sum(value), min(value)",
        ),
    ] {
        rollup::create_rollup(&mut db.client, &r).await.unwrap();
    }
    let (shutdown, run, slot) = start_pipeline(&db).await;
    refresh(&mut db.client, None, true, false).await.unwrap();
    assert_all_equal(&db, "first refresh").await;
    db.exec(
        "INSERT INTO readings VALUES (localtimestamp - interval '20 hours', 1, 999.99);
         UPDATE readings SET value = -1 WHERE time = (SELECT min(time) FROM readings);
         DELETE FROM readings WHERE sensor = 2 AND time < localtimestamp - interval '40 hours';
         INSERT INTO daily VALUES (current_date - 30, 1, 1000000);
         DELETE FROM daily WHERE day = current_date - 45;",
    )
    .await;
    caught_up(&db, &slot).await;
    let reports = refresh(&mut db.client, None, true, false).await.unwrap();
    assert!(reports.iter().all(|r| r.skipped.is_none()));
    assert_all_equal(&db, "after late rows, corrections and deletes").await;
    let bucket_type: String = db
        .scalar("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'daily_week'::regclass AND attname = 'bucket'")
        .await;
    assert_eq!(bucket_type, "timestamp without time zone");
    let live: i64 = db.scalar("SELECT count(*) FROM readings_2h_realtime").await;
    let expected: i64 = db
        .scalar("SELECT count(DISTINCT (date_bin('2 hours', time, TIMESTAMP '1970-01-01'), sensor)) FROM readings")
        .await;
    assert_eq!(live, expected, "the real-time view covers every bucket");
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// PostgreSQL does not recurse `ALTER TABLE ... REPLICA IDENTITY` into partitions: a FULL
/// set on the table alone leaves the chunks at their primary key, whose old rows lack the
/// group column. Refused with the fix named; `lakets chronotable replica-identity` sets
/// every chunk (and new chunks follow); an operator meeting such a row anyway stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_identity_set_on_the_table_only_is_refused_until_every_chunk_has_it() {
    let mut db = fresh_db("rollup_identity").await;
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, id bigint NOT NULL, symbol text NOT NULL,
                             price double precision, PRIMARY KEY (id, time));
         INSERT INTO ticks SELECT now() - i * interval '7 minutes', i, 'S' || (i % 3), i
           FROM generate_series(1, 40) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = Interval::hours(1);
    opts.premake = 2;
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    // As a user would: on the table.
    db.exec("ALTER TABLE ticks REPLICA IDENTITY FULL").await;
    let by_symbol = request(
        "ticks_1h",
        "ticks",
        "1 hour",
        "symbol",
        "count(*), max(price)",
    );
    let err = rollup::create_rollup(&mut db.client, &by_symbol)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REPLICA IDENTITY FULL")
            && err.contains("ticks_2")
            && err.contains("lakets chronotable replica-identity public.ticks full"),
        "{err}"
    );
    let err = lakets::lvc::enable_lvc(
        &mut db.client,
        "ticks",
        &["symbol".into()],
        &["price".into()],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("replica-identity"), "{err}");
    let lake = tempfile::tempdir().unwrap();
    let err = lakets::sync::enable_sync(
        &db.config(),
        "ticks",
        lake.path().join("t").to_str().unwrap(),
        lakets::delta::schema::Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("replica-identity"), "{err}");
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM lakets._rollup_registry")
            .await,
        0
    );

    // The command sets the table and every chunk; a chunk created later follows.
    let report = lakets::chronotable::replica_identity::set_replica_identity(
        &mut db.client,
        "ticks",
        lakets::chronotable::replica_identity::Identity::Full,
    )
    .await
    .unwrap();
    assert!(!report.chunks_changed.is_empty());
    lakets::chronotable::set_chunk_interval(&mut db.client, "ticks", Interval::hours(2))
        .await
        .unwrap();
    lakets::chronotable::ensure_partitions(
        &mut db.client,
        Some("ticks"),
        Some(chrono::Utc::now() + chrono::Duration::hours(12)),
    )
    .await
    .unwrap();
    let not_full: i64 = db
        .scalar(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'ticks'::regclass AND c.relreplident <> 'f'",
        )
        .await;
    assert_eq!(not_full, 0);
    rollup::create_rollup(&mut db.client, &by_symbol)
        .await
        .unwrap();

    // A chunk set back by hand: the invalidation operator stops instead of invalidating
    // the wrong (NULL) group.
    let (shutdown, run, slot) = start_pipeline(&db).await;
    let chunk: String = db
        .scalar("SELECT tableoid::regclass::text FROM ticks WHERE id = 5")
        .await;
    db.exec(&format!("ALTER TABLE {chunk} REPLICA IDENTITY DEFAULT"))
        .await;
    db.exec("UPDATE ticks SET symbol = 'MOVED' WHERE id = 5")
        .await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the operator stopped")
        .unwrap();
    let err = outcome.unwrap_err();
    assert!(matches!(err, lakets::Error::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("replica-identity"), "{err}");
    assert!(!lakets::wal::pipeline::is_retryable(&err));
    let _ = (shutdown, slot);
}

/// A name the user quoted keeps its case and characters, and every path finds it: the
/// scheduled refresh of all rollups, a refresh named the way the user typed it, `show`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_mixed_case_rollup_name_refreshes_like_any_other() {
    let mut db = fresh_db("rollup_quoted").await;
    ticks_table(&mut db).await;
    rollup::create_rollup(
        &mut db.client,
        &request("\"Candles-1m\"", "ticks", "1 minute", "symbol", SPEC),
    )
    .await
    .unwrap();
    let all = refresh(&mut db.client, None, false, true).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].rollup, "Candles-1m");
    assert!(all[0].rows_written > 0, "{:?}", all[0]);
    let named = refresh(&mut db.client, Some("\"Candles-1m\""), false, true)
        .await
        .unwrap();
    assert_eq!(named[0].rollup, "Candles-1m");
    let rows: i64 = db.scalar("SELECT count(*) FROM \"Candles-1m\"").await;
    assert!(rows > 0);
}
