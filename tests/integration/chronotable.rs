//! ChronoTables against a real PostgreSQL: conversion, routing, provisioning, interval
//! changes, chunk drops, teardown, and every bad input refused with nothing changed.

use crate::common;

use common::{TestDb, fresh_db, fresh_empty_db, ts};
use lakets::Error;
use lakets::catalog::registry::{self, ChunkStatus};
use lakets::chronotable::{self, CreateOptions};
use lakets::ident::TableName;
use lakets::interval::Interval;

/// The clock the tests place the rolling window around (a Monday, mid-morning UTC).
const NOW: &str = "2026-03-23T10:00:00Z";

fn options(time_column: &str, interval: Interval, premake: i32) -> CreateOptions {
    let mut o = CreateOptions::new(time_column);
    o.chunk_interval = interval;
    o.premake = premake;
    o.at = Some(ts(NOW));
    o
}

/// Row count and an order-independent digest of every row's text form.
async fn fingerprint(db: &TestDb, table: &str) -> (i64, String) {
    let row = db
        .client
        .query_one(
            &format!(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))
                   FROM {table} t"
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Everything a refused conversion must leave untouched.
async fn table_state(db: &TestDb, table: &str) -> String {
    let relkind: Option<String> = db
        .client
        .query_one(
            "SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1))",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    let chunk_like: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE $1 || '\\_2%' OR relname LIKE '\\_lakets\\_old%'",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    let registered: i64 = db
        .scalar("SELECT count(*) FROM lakets._chronotable_registry")
        .await;
    let fp = if relkind.is_some() {
        format!("{:?}", fingerprint(db, table).await)
    } else {
        "-".into()
    };
    format!("relkind={relkind:?} chunks={chunk_like} registered={registered} data={fp}")
}

async fn metrics_table(db: &TestDb) {
    db.exec(
        "CREATE TABLE metrics (
             id      bigint GENERATED ALWAYS AS IDENTITY,
             time    timestamptz NOT NULL,
             device  text NOT NULL DEFAULT 'unknown',
             value   double precision,
             note    text,
             PRIMARY KEY (id, time)
         );
         CREATE INDEX metrics_device_time ON metrics (device, time DESC);
         COMMENT ON TABLE metrics IS 'device readings';
         COMMENT ON COLUMN metrics.value IS 'it''s the reading';
         INSERT INTO metrics (time, device, value, note)
         SELECT timestamptz '2026-03-14 00:00:00+00' + (i * interval '37 minutes'),
                'dev' || (i % 7),
                CASE WHEN i % 5 = 0 THEN NULL ELSE i * 1.5 END,
                CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' || i END
           FROM generate_series(0, 349) i;",
    )
    .await;
}

#[tokio::test]
async fn converts_table_with_data_keeping_rows_keys_identity_defaults_indexes() {
    let mut db = fresh_db("convert").await;
    metrics_table(&db).await;
    let before = fingerprint(&db, "metrics").await;
    let nulls_before: i64 = db
        .scalar("SELECT count(*) FROM metrics WHERE value IS NULL")
        .await;
    let max_id: i64 = db.scalar("SELECT max(id) FROM metrics").await;

    let report = chronotable::create_chronotable(
        &mut db.client,
        "metrics",
        &options("time", Interval::days(1), 2),
    )
    .await
    .unwrap();
    assert_eq!(report.rows_copied, 350);

    // Same rows, same NULLs, now partitioned.
    assert_eq!(fingerprint(&db, "metrics").await, before);
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM metrics WHERE value IS NULL")
            .await,
        nulls_before
    );
    assert_eq!(
        db.scalar::<String>("SELECT relkind::text FROM pg_class WHERE oid = 'metrics'::regclass")
            .await,
        "p"
    );

    // Chunks: data from Mar 14 (350 * 37 min reaches Mar 23) plus the window (Mar 22 to 26).
    let chunks = registry::list_chunks(&db.client, &TableName::new("public", "metrics"), false)
        .await
        .unwrap();
    assert_eq!(report.chunks.len(), chunks.len());
    assert_eq!(
        chunks.first().unwrap().chunk_name,
        "metrics_20260314_000000"
    );
    assert_eq!(chunks.last().unwrap().chunk_name, "metrics_20260325_000000");
    assert_eq!(chunks.len(), 12);
    for pair in chunks.windows(2) {
        assert_eq!(pair[0].range_end, pair[1].range_start, "no gap, no overlap");
    }
    for c in &chunks {
        assert_eq!(c.range_start.timestamp() % 86_400, 0, "UTC-aligned");
        assert_eq!(c.status, ChunkStatus::Active);
    }
    let attached: i64 = db
        .scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'metrics'::regclass")
        .await;
    assert_eq!(attached, 12);

    // Every row sits in the chunk its time says.
    let misplaced: i64 = db
        .scalar(
            "SELECT count(*) FROM metrics
              WHERE tableoid::regclass::text <> 'metrics_' || to_char(date_trunc('day', time AT TIME ZONE 'UTC'), 'YYYYMMDD') || '_000000'",
        )
        .await;
    assert_eq!(misplaced, 0);

    // Identity continues after the copied values; the default still applies.
    let row = db
        .client
        .query_one(
            "INSERT INTO metrics (time) VALUES ('2026-03-23 11:00:00+00') RETURNING id, device",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), max_id + 1);
    assert_eq!(row.get::<_, String>(1), "unknown");
    let identity_seq: String = db
        .scalar("SELECT pg_get_serial_sequence('metrics', 'id')")
        .await;
    assert_eq!(
        identity_seq, "public.metrics_id_seq",
        "sequence keeps its name"
    );

    // Keys, indexes, comments carried over; chunks got the indexes too.
    let constraints: Vec<String> = db
        .client
        .query("SELECT conname::text FROM pg_constraint WHERE conrelid = 'metrics'::regclass ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(constraints, vec!["metrics_pkey".to_string()]);
    let index_def: String = db
        .scalar("SELECT pg_get_indexdef('metrics_device_time'::regclass)")
        .await;
    assert!(index_def.contains("(device, \"time\" DESC)"), "{index_def}");
    let chunk_indexes: i64 = db
        .scalar("SELECT count(*) FROM pg_indexes WHERE tablename = 'metrics_20260320_000000'")
        .await;
    assert_eq!(chunk_indexes, 2);
    assert_eq!(
        db.scalar::<String>("SELECT obj_description('metrics'::regclass, 'pg_class')")
            .await,
        "device readings"
    );
    assert_eq!(
        db.scalar::<String>("SELECT col_description('metrics'::regclass, 4)")
            .await,
        "it's the reading"
    );
    // With a primary key the default replica identity (the key) serves.
    assert_eq!(
        db.scalar::<String>(
            "SELECT relreplident::text FROM pg_class WHERE relname = 'metrics_20260320_000000'"
        )
        .await,
        "d"
    );

    let ct = registry::find_chronotable(&db.client, "metrics")
        .await
        .unwrap();
    assert_eq!(ct.time_column, "time");
    assert_eq!(ct.chunk_interval, Interval::days(1));
    assert_eq!(ct.premake, 2);
    assert!(!ct.sync_enabled && !ct.tiering_enabled);
}

#[tokio::test]
async fn rows_outside_every_chunk_are_rejected_by_postgres_with_a_clear_error() {
    let mut db = fresh_db("outside").await;
    metrics_table(&db).await;
    chronotable::create_chronotable(
        &mut db.client,
        "metrics",
        &options("time", Interval::days(1), 1),
    )
    .await
    .unwrap();
    let err = db
        .client
        .execute(
            "INSERT INTO metrics (time) VALUES ('2030-01-01 00:00:00+00')",
            &[],
        )
        .await
        .unwrap_err();
    let text = lakets::error::describe_pg_error(&err);
    assert!(
        text.contains("no partition of relation \"metrics\" found for row"),
        "{text}"
    );
    assert!(
        text.contains("2030-01-01"),
        "the failing time is named: {text}"
    );
    // In range: routed to the right chunk.
    let chunk: String = db
        .client
        .query_one(
            "INSERT INTO metrics (time) VALUES ('2026-03-24 23:59:59.999999+00') RETURNING tableoid::regclass::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(chunk, "metrics_20260324_000000");
}

#[tokio::test]
async fn ensure_partitions_is_idempotent_and_safe_when_run_concurrently() {
    let mut db = fresh_db("ensure").await;
    db.exec("CREATE TABLE ev (time timestamptz NOT NULL, v int)")
        .await;
    chronotable::create_chronotable(
        &mut db.client,
        "ev",
        &options("time", Interval::hours(1), 3),
    )
    .await
    .unwrap();
    let initial: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata")
        .await;
    assert_eq!(initial, 5, "one past, current, three future");

    // A day later, eight concurrent runs must together create each chunk exactly once.
    let later = Some(ts("2026-03-24T10:30:00Z"));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut client = db.connect().await;
        handles.push(tokio::spawn(async move {
            chronotable::ensure_partitions(&mut client, Some("ev"), later).await
        }));
    }
    let mut created = 0;
    for h in handles {
        let reports = h
            .await
            .unwrap()
            .expect("concurrent ensure_partitions must not fail");
        created += reports.iter().map(|r| r.created.len()).sum::<usize>();
    }
    // Contiguous from the last chunk (Mar 23 14:00) to the window's end (Mar 24 14:00), so
    // late rows of the hours in between still have a home.
    assert_eq!(created, 24);
    let again = chronotable::ensure_partitions(&mut db.client, None, later)
        .await
        .unwrap();
    assert!(again.iter().all(|r| r.created.is_empty()), "idempotent");
    let registered: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata")
        .await;
    let attached: i64 = db
        .scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'ev'::regclass")
        .await;
    assert_eq!((registered, attached), (29, 29));
    // New chunks inherit the replica identity (FULL: the table has no primary key).
    let not_full: i64 = db
        .scalar(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'ev'::regclass AND c.relreplident <> 'f'",
        )
        .await;
    assert_eq!(not_full, 0);
    assert_eq!(
        db.scalar::<String>("SELECT relreplident::text FROM pg_class WHERE oid = 'ev'::regclass")
            .await,
        "f"
    );
}

#[tokio::test]
async fn interval_change_bridges_to_the_next_aligned_boundary() {
    let mut db = fresh_db("set_interval").await;
    db.exec("CREATE TABLE ev (time timestamptz NOT NULL, v int)")
        .await;
    chronotable::create_chronotable(&mut db.client, "ev", &options("time", Interval::days(1), 1))
        .await
        .unwrap();
    chronotable::set_chunk_interval(&mut db.client, "ev", Interval::days(7))
        .await
        .unwrap();
    // Existing chunks: Mar 22, 23, 24 (ends Mar 25). Ensure a week later.
    chronotable::ensure_partitions(&mut db.client, Some("ev"), Some(ts("2026-03-27T00:00:00Z")))
        .await
        .unwrap();
    let chunks = registry::list_chunks(&db.client, &TableName::new("public", "ev"), false)
        .await
        .unwrap();
    let ranges: Vec<(String, String)> = chunks
        .iter()
        .map(|c| (c.range_start.to_rfc3339(), c.range_end.to_rfc3339()))
        .collect();
    for pair in chunks.windows(2) {
        assert_eq!(
            pair[0].range_end, pair[1].range_start,
            "no gap, no overlap: {ranges:?}"
        );
    }
    // Bridge: Mar 25 to the next 7-day boundary from the epoch (a Thursday, Mar 26).
    let bridge = chunks
        .iter()
        .find(|c| c.range_start == ts("2026-03-25T00:00:00Z"))
        .unwrap();
    assert_eq!(bridge.range_end, ts("2026-03-26T00:00:00Z"), "{ranges:?}");
    let after = chunks
        .iter()
        .find(|c| c.range_start == ts("2026-03-26T00:00:00Z"))
        .unwrap();
    assert_eq!(after.range_end, ts("2026-04-02T00:00:00Z"), "{ranges:?}");
    assert_eq!(
        chunks.last().unwrap().range_end,
        ts("2026-04-09T00:00:00Z"),
        "{ranges:?}"
    );
    let ct = registry::find_chronotable(&db.client, "ev").await.unwrap();
    assert_eq!(ct.chunk_interval, Interval::days(7));
}

#[tokio::test]
async fn timestamp_and_date_columns_and_utc_alignment_under_any_session_time_zone() {
    let mut db = fresh_db("time_types").await;
    db.exec(
        "SET TimeZone = 'America/New_York';
         CREATE TABLE local_ev (ts timestamp NOT NULL, v int);
         INSERT INTO local_ev VALUES ('2026-03-08 01:30:00', 1), ('2026-03-08 03:30:00', 2);
         CREATE TABLE daily (day date NOT NULL, v int, PRIMARY KEY (day));
         INSERT INTO daily SELECT d::date, 1 FROM generate_series(date '2026-03-01', date '2026-03-20', interval '1 day') d;
         CREATE TABLE zoned (time timestamptz NOT NULL, v int);
         INSERT INTO zoned VALUES ('2026-03-08 01:30:00-05', 1);",
    )
    .await;
    // timestamp: wall-clock values bucketed as if UTC; the US DST jump does not matter.
    chronotable::create_chronotable(
        &mut db.client,
        "local_ev",
        &options("ts", Interval::hours(1), 1),
    )
    .await
    .unwrap();
    let where_: String = db
        .scalar("SELECT tableoid::regclass::text FROM local_ev WHERE v = 2")
        .await;
    assert_eq!(where_, "local_ev_20260308_030000");

    // date: whole days only.
    let err = chronotable::create_chronotable(
        &mut db.client,
        "daily",
        &options("day", Interval::hours(1), 1),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("whole number of days"), "{err}");
    chronotable::create_chronotable(
        &mut db.client,
        "daily",
        &options("day", Interval::days(7), 1),
    )
    .await
    .unwrap();
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM daily").await, 20);
    let first = registry::list_chunks(&db.client, &TableName::new("public", "daily"), false)
        .await
        .unwrap()[0]
        .range_start;
    assert_eq!(
        first,
        ts("2026-02-26T00:00:00Z"),
        "7-day chunks align to the epoch's Thursday"
    );

    // timestamptz in a New York session: chunks still start at UTC midnight.
    chronotable::create_chronotable(
        &mut db.client,
        "zoned",
        &options("time", Interval::days(1), 0),
    )
    .await
    .unwrap();
    let chunks = registry::list_chunks(&db.client, &TableName::new("public", "zoned"), false)
        .await
        .unwrap();
    assert_eq!(chunks[0].range_start, ts("2026-03-08T00:00:00Z"));
    assert!(
        chunks
            .iter()
            .all(|c| c.range_start.timestamp() % 86_400 == 0)
    );
    let where_: String = db
        .scalar("SELECT tableoid::regclass::text FROM zoned")
        .await;
    assert_eq!(
        where_, "zoned_20260308_000000",
        "01:30-05 is 06:30 UTC on Mar 8"
    );
}

#[tokio::test]
async fn serial_columns_grants_and_tables_in_other_schemas_are_carried_over() {
    let mut db = fresh_db("serial_grants").await;
    db.exec(
        "CREATE SCHEMA \"Market Data\";
         CREATE ROLE lakets_test_reader_serial;
         CREATE TABLE \"Market Data\".\"Quotes\" (id serial, t timestamptz NOT NULL, px numeric(12,4));
         GRANT SELECT ON \"Market Data\".\"Quotes\" TO lakets_test_reader_serial;
         INSERT INTO \"Market Data\".\"Quotes\" (t, px) VALUES ('2026-03-20 10:00+00', 1.5), ('2026-03-21 10:00+00', 2.25);",
    )
    .await;
    chronotable::create_chronotable(
        &mut db.client,
        "\"Market Data\".\"Quotes\"",
        &options("t", Interval::days(1), 1),
    )
    .await
    .unwrap();
    let next: i32 = db
        .scalar("INSERT INTO \"Market Data\".\"Quotes\" (t) VALUES ('2026-03-23 12:00+00') RETURNING id")
        .await;
    assert_eq!(next, 3, "serial sequence continues");
    let can_read: bool = db
        .scalar("SELECT has_table_privilege('lakets_test_reader_serial', '\"Market Data\".\"Quotes\"', 'SELECT')")
        .await;
    assert!(can_read, "grants carried over");
    let chunk_schema: String = db
        .scalar("SELECT schema_name FROM lakets._chunk_metadata LIMIT 1")
        .await;
    assert_eq!(chunk_schema, "Market Data");
    // The sequence now belongs to the new table and goes with it.
    chronotable::drop_chronotable(&mut db.client, "\"Market Data\".\"Quotes\"")
        .await
        .unwrap();
    let seq_left: i64 = db
        .scalar("SELECT count(*) FROM pg_class WHERE relkind = 'S' AND relname = 'Quotes_id_seq'")
        .await;
    assert_eq!(seq_left, 0);
}

#[tokio::test]
async fn show_chunks_counts_rows_and_drop_chunks_records_and_drops() {
    let mut db = fresh_db("drop_chunks").await;
    metrics_table(&db).await;
    chronotable::create_chronotable(
        &mut db.client,
        "metrics",
        &options("time", Interval::days(1), 1),
    )
    .await
    .unwrap();
    let shown = chronotable::show_chunks(&mut db.client, "metrics", false)
        .await
        .unwrap();
    let total: i64 = shown.iter().map(|c| c.row_count.unwrap()).sum();
    assert_eq!(total, 350);
    let mar15 = shown
        .iter()
        .find(|c| c.chunk_name == "metrics_20260315_000000")
        .unwrap();
    let expected: i64 = db
        .scalar(
            "SELECT count(*) FROM metrics WHERE time >= '2026-03-15+00' AND time < '2026-03-16+00'",
        )
        .await;
    assert_eq!(mar15.row_count, Some(expected));
    assert!(mar15.size_bytes.unwrap() > 0);

    // Older than 5 days before Mar 23 10:00 = ranges ending by Mar 18 10:00: Mar 14..17.
    let report =
        chronotable::drop_chunks(&db.config(), "metrics", Interval::days(5), Some(ts(NOW)))
            .await
            .unwrap();
    assert_eq!(
        report.dropped,
        vec![
            "metrics_20260314_000000",
            "metrics_20260315_000000",
            "metrics_20260316_000000",
            "metrics_20260317_000000"
        ]
    );
    assert!(report.deferred.is_empty());
    let left: i64 = db.scalar("SELECT count(*) FROM metrics").await;
    let kept: i64 = db
        .scalar("SELECT count(*) FROM metrics WHERE time >= '2026-03-18+00'")
        .await;
    assert_eq!(left, kept);
    let all = chronotable::show_chunks(&mut db.client, "metrics", true)
        .await
        .unwrap();
    let dropped = all
        .iter()
        .find(|c| c.chunk_name == "metrics_20260315_000000")
        .unwrap();
    assert_eq!(dropped.status, ChunkStatus::Dropped);
    assert_eq!(
        dropped.row_count,
        Some(expected),
        "row count at the drop is kept"
    );
    assert!(dropped.dropped_at.is_some());
    let exists: bool = db
        .scalar("SELECT to_regclass('metrics_20260315_000000') IS NOT NULL")
        .await;
    assert!(!exists);
    // A second run finds nothing more to drop.
    let again = chronotable::drop_chunks(&db.config(), "metrics", Interval::days(5), Some(ts(NOW)))
        .await
        .unwrap();
    assert!(again.dropped.is_empty());

    // A table marked synced without an active sync: every drop is deferred (fail closed),
    // with the reason.
    db.exec("UPDATE lakets._chronotable_registry SET sync_enabled = true")
        .await;
    let report =
        chronotable::drop_chunks(&db.config(), "metrics", Interval::days(1), Some(ts(NOW)))
            .await
            .unwrap();
    assert!(report.dropped.is_empty(), "{report:?}");
    assert!(!report.deferred.is_empty());
    assert!(
        report
            .deferred
            .iter()
            .all(|(_, r)| r.contains("sync is not active")),
        "{report:?}"
    );
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM metrics").await, left);
}

#[tokio::test]
async fn drop_chronotable_removes_table_chunks_and_registry() {
    let mut db = fresh_db("drop_table").await;
    metrics_table(&db).await;
    chronotable::create_chronotable(
        &mut db.client,
        "metrics",
        &options("time", Interval::days(1), 1),
    )
    .await
    .unwrap();
    chronotable::drop_chronotable(&mut db.client, "metrics")
        .await
        .unwrap();
    assert!(
        !db.scalar::<bool>("SELECT to_regclass('metrics') IS NOT NULL")
            .await
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM pg_class WHERE relname LIKE 'metrics\\_2%'")
            .await,
        0
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM lakets._chunk_metadata")
            .await,
        0
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM lakets._chronotable_registry")
            .await,
        0
    );
    let err = chronotable::drop_chronotable(&mut db.client, "metrics")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

/// Each bad input is refused with a message naming the problem, and changes nothing.
#[tokio::test]
async fn bad_inputs_are_refused_with_clear_errors_and_no_change() {
    let mut db = fresh_db("bad_inputs").await;
    db.exec(
        "CREATE TABLE x (id int);
         CREATE TABLE plain (time timestamptz NOT NULL, label text, v int);
         INSERT INTO plain SELECT timestamptz '2026-03-20 00:00+00' + i * interval '1 hour', 'l', i FROM generate_series(1, 50) i;",
    )
    .await;
    let long_name = "t".repeat(48);
    db.exec(&format!(
        "CREATE TABLE {long_name} (time timestamptz NOT NULL)"
    ))
    .await;

    struct Case {
        setup: &'static str,
        table: String,
        column: &'static str,
        interval: Interval,
        expect: &'static str,
    }
    let case = |setup, table: &str, column, interval, expect| Case {
        setup,
        table: table.to_owned(),
        column,
        interval,
        expect,
    };
    let day = Interval::days(1);
    let cases = vec![
        case("", "nope", "time", day, "table nope does not exist"),
        case("", "plain", "missing", day, "has no column \"missing\""),
        case(
            "",
            "plain",
            "label",
            day,
            "must be timestamptz, timestamp or date",
        ),
        case(
            "",
            "plain",
            "time",
            Interval::from_micros(500_000),
            "out of range",
        ),
        case("", "plain", "time", Interval::days(5000), "out of range"),
        case("", r#"a"; drop table x; --"#, "time", day, "invalid name"),
        case("", "x; drop table x", "time", day, "invalid name"),
        case(
            "",
            "plain",
            r#"time"; drop table x; --"#,
            day,
            "invalid name",
        ),
        case("", &long_name, "time", day, "at most 47 bytes"),
        case(
            "ALTER TABLE plain ALTER COLUMN label SET DEFAULT 'a;b'",
            "plain",
            "time",
            day,
            "contains \";\"",
        ),
        case(
            "ALTER TABLE plain ALTER COLUMN label SET DEFAULT 'a--b'",
            "plain",
            "time",
            day,
            "contains \"--\"",
        ),
        case(
            "ALTER TABLE plain ALTER COLUMN label SET DEFAULT '/*x*/'",
            "plain",
            "time",
            day,
            "contains \"/*\"",
        ),
        case(
            "ALTER TABLE plain ADD PRIMARY KEY (v)",
            "plain",
            "time",
            day,
            "does not include the time column",
        ),
        case(
            "CREATE UNIQUE INDEX plain_v ON plain (v)",
            "plain",
            "time",
            day,
            "unique index \"plain_v\" does not include",
        ),
        case(
            "CREATE UNIQUE INDEX plain_vi ON plain (v) INCLUDE (time)",
            "plain",
            "time",
            day,
            "unique index \"plain_vi\" does not include",
        ),
        case(
            "ALTER TABLE plain REPLICA IDENTITY NOTHING",
            "plain",
            "time",
            day,
            "REPLICA IDENTITY is NOTHING",
        ),
        case(
            "CREATE VIEW plain_view AS SELECT * FROM plain",
            "plain",
            "time",
            day,
            "views depend on it (plain_view)",
        ),
        case(
            "ALTER TABLE plain ALTER COLUMN time DROP NOT NULL; INSERT INTO plain (v) VALUES (-1)",
            "plain",
            "time",
            day,
            "1 rows have no value in the time column",
        ),
        case(
            "INSERT INTO plain (time, v) VALUES ('infinity', -2)",
            "plain",
            "time",
            day,
            "infinity",
        ),
        case(
            "INSERT INTO plain (time, v) VALUES ('1990-01-01+00', -3)",
            "plain",
            "time",
            Interval::hours(1),
            "choose a larger --chunk-interval",
        ),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        // Each case gets its own copy of `plain`, so setups do not interfere.
        let t = format!("plain_{i}");
        let own = |text: &str| text.replace("plain", &t);
        db.exec(&format!(
            "CREATE TABLE {t} (LIKE plain INCLUDING ALL); INSERT INTO {t} SELECT * FROM plain;"
        ))
        .await;
        if !c.setup.is_empty() {
            db.exec(&own(c.setup)).await;
        }
        let before = table_state(&db, &t).await;
        let x_before = table_state(&db, "x").await;
        let err = chronotable::create_chronotable(
            &mut db.client,
            &own(&c.table),
            &options(c.column, c.interval, 1),
        )
        .await
        .expect_err(&format!("case {i} ({}) must be refused", c.expect))
        .to_string();
        let expect = own(c.expect);
        assert!(
            err.contains(&expect),
            "case {i}: expected an error mentioning {expect:?}, got: {err}"
        );
        assert_eq!(table_state(&db, &t).await, before, "case {i}: {t} changed");
        assert_eq!(table_state(&db, "x").await, x_before, "case {i}: x changed");
    }

    // Already a ChronoTable.
    chronotable::create_chronotable(
        &mut db.client,
        "plain",
        &options("time", Interval::days(1), 1),
    )
    .await
    .unwrap();
    let before = table_state(&db, "plain").await;
    let err = chronotable::create_chronotable(
        &mut db.client,
        "plain",
        &options("time", Interval::days(1), 1),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already a ChronoTable"), "{err}");
    assert_eq!(table_state(&db, "plain").await, before);
    // Out-of-range premake and interval changes are refused too.
    let mut bad = options("time", Interval::days(1), -1);
    bad.premake = -1;
    assert!(
        chronotable::create_chronotable(&mut db.client, "x", &bad)
            .await
            .is_err()
    );
    let err = chronotable::set_chunk_interval(&mut db.client, "plain", Interval::from_micros(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = chronotable::show_chunks(&mut db.client, "x", false)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("ChronoTable x does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn commands_refuse_a_database_without_the_lakets_schema() {
    let mut db = fresh_empty_db("no_schema").await;
    db.exec("CREATE TABLE ev (time timestamptz NOT NULL)").await;
    let err = chronotable::create_chronotable(
        &mut db.client,
        "ev",
        &options("time", Interval::days(1), 1),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("run `lakets init` first"), "{err}");
    assert!(matches!(err, Error::NotReady(_)));
    // And init is idempotent.
    let first = lakets::catalog::migrate(&mut db.client).await.unwrap();
    let second = lakets::catalog::migrate(&mut db.client).await.unwrap();
    assert_eq!(
        first,
        (1..=lakets::catalog::latest_version()).collect::<Vec<_>>()
    );
    assert_eq!(lakets::catalog::latest_version(), 13);
    assert!(second.is_empty());
}

#[tokio::test]
async fn a_new_chronotable_joins_every_consumer_publication_at_once() {
    let mut db = fresh_db("publication").await;
    lakets::catalog::replication::ensure_publication(&db.client, "lakets")
        .await
        .unwrap();
    lakets::catalog::replication::ensure_publication(&db.client, "custom")
        .await
        .unwrap();
    lakets::catalog::replication::register_consumer(&db.client, "some_slot", "custom")
        .await
        .unwrap();
    db.exec("CREATE PUBLICATION unrelated").await;
    db.exec("CREATE TABLE ev (time timestamptz NOT NULL, v int)")
        .await;
    chronotable::create_chronotable(&mut db.client, "ev", &options("time", Interval::days(1), 1))
        .await
        .unwrap();
    let members: Vec<String> = db
        .client
        .query(
            "SELECT pubname::text FROM pg_publication_tables WHERE tablename = 'ev' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(members, vec!["custom".to_string(), "lakets".to_string()]);
}

#[tokio::test]
async fn replica_identity_using_a_unique_constraint_index_is_kept_on_every_chunk() {
    let mut db = fresh_db("replident_index").await;
    db.exec(
        "CREATE TABLE ev (id int NOT NULL, time timestamptz NOT NULL, v text,
                          CONSTRAINT ev_id_time UNIQUE (id, time));
         ALTER TABLE ev REPLICA IDENTITY USING INDEX ev_id_time;
         INSERT INTO ev VALUES (1, '2026-03-22 12:00+00', 'a');",
    )
    .await;
    chronotable::create_chronotable(&mut db.client, "ev", &options("time", Interval::days(1), 1))
        .await
        .unwrap();
    let identities: Vec<String> = db
        .client
        .query(
            "SELECT DISTINCT c.relreplident::text FROM pg_class c
              WHERE c.oid = 'ev'::regclass
                 OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'ev'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(identities, vec!["i".to_string()]);
    // Updates and deletes work (they would fail without a replica identity once published).
    lakets::catalog::replication::ensure_publication(&db.client, "lakets")
        .await
        .unwrap();
    db.exec("UPDATE ev SET v = 'b' WHERE id = 1; DELETE FROM ev WHERE id = 1")
        .await;
}
