//! Decoding real pgoutput from a real PostgreSQL: every message kind and column type, in
//! text and binary mode, updates with and without REPLICA IDENTITY FULL, unchanged TOAST,
//! TRUNCATE, logical messages, and a schema change mid-stream.

use crate::common;

use common::{TestDb, fresh_db};
use lakets::wal::source::{SourceSettings, WalSource};
use lakets::wal::transaction::{Assembled, Assembler, Change, TxnSlice};
use lakets::wal::value::Value;

/// The end marker: a message with lakets' prefix (messages with other prefixes are
/// dropped by the assembler).
const END: &str = "test_end";
const PREFIX: &str = lakets::wal::transaction::MESSAGE_PREFIX;

/// Creates a publication and slot for `tables`, runs `workload`, and returns every
/// transaction decoded up to the marker message the workload ends with.
async fn capture(db: &TestDb, tables: &str, binary: bool, workload: &str) -> Vec<TxnSlice> {
    let slot = format!("s_{}_{}", db.name, binary);
    db.exec(&format!("CREATE PUBLICATION p_{binary} FOR TABLE {tables}"))
        .await;
    db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ))
    .await;
    // One transaction per statement.
    for statement in workload.split(";\n").filter(|s| !s.trim().is_empty()) {
        db.exec(statement).await;
    }
    db.exec(&format!(
        "SELECT pg_logical_emit_message(true, '{PREFIX}', '{END}')"
    ))
    .await;
    let config = lakets::db::parse_config(&db.url).unwrap();
    let mut settings = SourceSettings::new(&slot, format!("p_{binary}"));
    settings.binary = binary;
    let mut source = WalSource::start(&config, &settings).await.unwrap();
    let mut assembler = Assembler::new(binary, 1024);
    let mut txns: Vec<TxnSlice> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no end marker after 30 s"
        );
        let Some(frame) = source.next_frame().await.unwrap() else {
            continue;
        };
        if let Some(Assembled::Slice(slice)) = assembler.push(&frame.data).unwrap() {
            let done = slice
                .changes
                .iter()
                .any(|c| matches!(c, Change::Message { prefix, content } if prefix == PREFIX && content == END.as_bytes()));
            match txns.last_mut() {
                Some(last) if !slice.first => last.changes.extend(slice.changes.clone()),
                _ => txns.push(slice.clone()),
            }
            if done && slice.end_lsn.is_some() {
                return txns;
            }
        }
    }
}

fn rows(txns: &[TxnSlice]) -> Vec<&Change> {
    txns.iter()
        .flat_map(|t| &t.changes)
        .filter(|c| !matches!(c, Change::Schema { .. } | Change::Message { .. }))
        .collect()
}

const ALL_TYPES: &str = "CREATE TABLE all_types (
    id int4 PRIMARY KEY, tz timestamptz, ts timestamp, d date, t text, vc varchar(10),
    i2 int2, i8 int8, f4 float4, f8 float8, n numeric(12,4), b bool, by bytea, u uuid, j jsonb)";

const ALL_VALUES: &str = "INSERT INTO all_types VALUES
    (1, '2026-03-20 10:00:00.123456+00', '2026-03-20 10:00:00', '2026-03-20', 'héllo', 'vc',
     -7, 9007199254740993, 1.5, 2.718281828459045, -12.3400, true, '\\x00ff', 
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, 2]}'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (3, 'infinity', '-infinity', 'infinity', '', '', 0, 0, 'NaN', '-Infinity', 'NaN', false, '', 
     '00000000-0000-0000-0000-000000000000', '[]')";

fn expected_row1() -> Vec<Value> {
    vec![
        Value::Int4(1),
        Value::Timestamptz(1_774_000_800_123_456),
        Value::Timestamp(1_774_000_800_000_000),
        Value::Date(20_532),
        Value::Text("héllo".into()),
        Value::Text("vc".into()),
        Value::Int2(-7),
        Value::Int8(9_007_199_254_740_993),
        Value::Float4(1.5),
        Value::Float8(std::f64::consts::E),
        Value::Numeric("-12.3400".into()),
        Value::Bool(true),
        Value::Bytea(vec![0, 255]),
        Value::Uuid([
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ]),
        Value::Json("{\"k\": [1, 2]}".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_mode_decodes_every_column_type_whatever_the_server_time_zone() {
    let db = fresh_db("decode_text").await;
    // The walsender prints timestamptz in the database's time zone: parse the offset.
    db.exec(ALL_TYPES).await;
    db.exec(&format!(
        "ALTER DATABASE {} SET TimeZone = 'Asia/Kolkata'",
        db.name
    ))
    .await;
    let txns = capture(&db, "all_types", false, ALL_VALUES).await;
    let text_rows = rows(&txns);
    assert_eq!(text_rows.len(), 3);
    let Change::Insert { new, relation } = text_rows[0] else {
        panic!("{:?}", text_rows[0])
    };
    assert_eq!(relation.table.name, "all_types");
    assert_eq!(relation.columns.len(), 15);
    assert_eq!(*new, expected_row1(), "text mode");
    let Change::Insert { new, .. } = text_rows[1] else {
        panic!()
    };
    assert!(new[1..].iter().all(Value::is_null), "NULLs: {new:?}");
    let Change::Insert { new, .. } = text_rows[2] else {
        panic!()
    };
    assert_eq!(new[1], Value::Timestamptz(i64::MAX));
    assert_eq!(new[2], Value::Timestamp(i64::MIN));
    assert_eq!(new[3], Value::Date(i32::MAX));
    assert!(matches!(new[8], Value::Float4(f) if f.is_nan()));
    assert_eq!(new[9], Value::Float8(f64::NEG_INFINITY));
    assert_eq!(new[10], Value::Numeric("NaN".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_decodes_every_column_type() {
    let db = fresh_db("decode_binary").await;
    db.exec(ALL_TYPES).await;
    let txns = capture(&db, "all_types", true, ALL_VALUES).await;
    let r = rows(&txns);
    let Change::Insert { new, .. } = r[0] else {
        panic!()
    };
    assert_eq!(*new, expected_row1(), "binary mode");
    let Change::Insert { new, .. } = r[2] else {
        panic!()
    };
    assert_eq!(new[1], Value::Timestamptz(i64::MAX));
    assert_eq!(new[3], Value::Date(i32::MAX));
    assert_eq!(new[10], Value::Numeric("NaN".into()));
    assert_eq!(new[12], Value::Bytea(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_deletes_toast_truncate_messages_and_schema_changes() {
    let db = fresh_db("decode_kinds").await;
    db.exec(
        "CREATE TABLE keyed (id int PRIMARY KEY, v text, big text);
         CREATE TABLE full_rows (id int, v text);
         ALTER TABLE full_rows REPLICA IDENTITY FULL;",
    )
    .await;
    // An incompressible value large enough to be stored out of line (TOAST).
    let workload = "
        INSERT INTO keyed SELECT 1, 'a', string_agg(md5(i::text), '') FROM generate_series(1, 200) i;
        INSERT INTO full_rows VALUES (1, 'x'), (2, 'y');
        UPDATE keyed SET v = 'b' WHERE id = 1;
        UPDATE keyed SET id = 10 WHERE id = 1;
        UPDATE full_rows SET v = 'z' WHERE id = 1;
        DELETE FROM keyed WHERE id = 10;
        DELETE FROM full_rows WHERE id = 2;
        SELECT pg_logical_emit_message(true, 'audit', 'not for lakets');
        SELECT pg_logical_emit_message(true, 'lakets', 'hello');
        ALTER TABLE full_rows ADD COLUMN extra int DEFAULT 7;
        INSERT INTO full_rows VALUES (3, 'w', 8);
        TRUNCATE keyed, full_rows RESTART IDENTITY CASCADE";
    let txns = capture(&db, "keyed, full_rows", true, workload).await;
    let all: Vec<&Change> = txns.iter().flat_map(|t| &t.changes).collect();
    let kinds: Vec<&str> = all.iter().map(|c| c.kind()).collect();
    assert_eq!(
        kinds,
        vec![
            "schema", "insert", // keyed
            "schema", "insert", "insert", // full_rows
            "update", "update", "update", "delete", "delete", "message", "schema",
            "insert", // full_rows after ADD COLUMN
            "truncate", "message"
        ],
        "{all:#?}"
    );
    // Update not touching the key: no old row; the toasted column is unchanged, not NULL.
    let Change::Update { old, new, .. } = all[5] else {
        panic!()
    };
    assert!(old.is_none());
    assert_eq!(new[1], Value::Text("b".into()));
    assert_eq!(new[2], Value::UnchangedToast);
    // Key change: the old key only.
    let Change::Update {
        old: Some(old),
        new,
        ..
    } = all[6]
    else {
        panic!("{:?}", all[6])
    };
    assert!(old.key_only);
    assert_eq!(old.values[0], Value::Int4(1));
    assert_eq!(old.values[1], Value::Null, "non-key columns are not sent");
    assert_eq!(new[0], Value::Int4(10));
    // REPLICA IDENTITY FULL: the whole old row.
    let Change::Update { old: Some(old), .. } = all[7] else {
        panic!()
    };
    assert!(!old.key_only);
    assert_eq!(old.values, vec![Value::Int4(1), Value::Text("x".into())]);
    let Change::Delete { old, .. } = all[8] else {
        panic!()
    };
    assert!(old.key_only);
    assert_eq!(old.values[0], Value::Int4(10));
    let Change::Delete { old, .. } = all[9] else {
        panic!()
    };
    assert_eq!(old.values, vec![Value::Int4(2), Value::Text("y".into())]);
    let Change::Message { prefix, content } = all[10] else {
        panic!()
    };
    // Only the message with lakets' prefix arrives; the other one was dropped.
    assert_eq!(
        (prefix.as_str(), content.as_slice()),
        ("lakets", b"hello".as_slice())
    );
    // The schema change comes before the first row with the new column.
    let Change::Schema {
        relation,
        previous: Some(previous),
    } = all[11]
    else {
        panic!("{:?}", all[11])
    };
    assert_eq!(previous.columns.len(), 2);
    assert_eq!(relation.columns.len(), 3);
    assert_eq!(relation.columns[2].name, "extra");
    let Change::Insert { new, .. } = all[12] else {
        panic!()
    };
    assert_eq!(new[2], Value::Int4(8));
    let Change::Truncate {
        relations,
        cascade,
        restart_identity,
    } = all[13]
    else {
        panic!()
    };
    assert!(*cascade && *restart_identity);
    let mut names: Vec<&str> = relations.iter().map(|r| r.table.name.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["full_rows", "keyed"]);
    // Transactions arrive in commit order with increasing LSNs.
    for pair in txns.windows(2) {
        assert!(pair[0].end_lsn.unwrap() <= pair[1].commit_lsn);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chronotable_publishes_rows_as_rows_of_the_parent() {
    let mut db = fresh_db("decode_partitioned").await;
    db.exec("CREATE TABLE ticks (time timestamptz NOT NULL, sym text, px float8)")
        .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    let config = lakets::db::parse_config(&db.url).unwrap();
    let client = lakets::db::connect_with(&config).await.unwrap();
    lakets::catalog::replication::ensure_publication(&client, "lakets")
        .await
        .unwrap();
    let via_root: bool = db
        .scalar("SELECT pubviaroot FROM pg_publication WHERE pubname = 'lakets'")
        .await;
    assert!(via_root);
    db.exec("SELECT pg_create_logical_replication_slot('s_part', 'pgoutput')")
        .await;
    db.exec(&format!(
        "INSERT INTO ticks VALUES (now(), 'A', 1), (now() - interval '1 hour', 'B', 2);
         UPDATE ticks SET px = 3 WHERE sym = 'B';
         SELECT pg_logical_emit_message(true, '{PREFIX}', '{END}')"
    ))
    .await;
    let mut source = WalSource::start(&config, &SourceSettings::new("s_part", "lakets"))
        .await
        .unwrap();
    let mut assembler = Assembler::new(true, 1024);
    let mut changes = Vec::new();
    while !changes
        .iter()
        .any(|c: &Change| matches!(c, Change::Message { .. }))
    {
        if let Some(frame) = source.next_frame().await.unwrap()
            && let Some(Assembled::Slice(s)) = assembler.push(&frame.data).unwrap()
        {
            changes.extend(s.changes);
        }
    }
    let tables: Vec<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Insert { relation, .. } | Change::Update { relation, .. } => {
                Some(relation.table.name.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(tables, vec!["ticks", "ticks", "ticks"]);
    // No primary key: the conversion set REPLICA IDENTITY FULL, so updates carry the old row.
    let Some(Change::Update { old: Some(old), .. }) =
        changes.iter().find(|c| matches!(c, Change::Update { .. }))
    else {
        panic!("{changes:?}")
    };
    assert!(!old.key_only);
}
