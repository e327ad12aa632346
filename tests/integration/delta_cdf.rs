//! Change Data Feed: a table synced with `--change-data-feed` carries, for every commit
//! that mirrors updates or deletes, `_change_data/` files holding each change of the commit,
//! in the same commit as its files and its LSN. Three independent readers read it back
//! (`tests/interop/check_cdf.py`): the `deltalake` package's `load_cdf` must equal, version
//! by version and row for row, the changes PostgreSQL's table went through (computed from
//! its states before and after each step, not from lakets); DuckDB's Delta extension and
//! Sail (PySpark API) must read PostgreSQL's final rows. Compaction and a checkpoint in
//! between add no change. A table synced without it is upgraded while the stream runs.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::fresh_db;
use common::wal::wait_until_confirmed;
use lakets::delta::schema::Partitioning;
use lakets::operators::delta_sink::DeltaSink;
use lakets::sync::Features;
use lakets::wal::lsn::Lsn;
use lakets::wal::{PipelineConfig, SourceSettings};
use tokio_util::sync::CancellationToken;

/// Change Data Feed alone, deletion vectors alone, both.
pub(crate) const CDF: Features = Features {
    change_data_feed: true,
    deletion_vectors: false,
};
const VECTORS: Features = Features {
    change_data_feed: false,
    deletion_vectors: true,
};
pub(crate) const CDF_AND_VECTORS: Features = Features {
    change_data_feed: true,
    deletion_vectors: true,
};

/// A row by key (symbol, time in epoch microseconds): (price text, volume).
pub(crate) type State = BTreeMap<(String, i64), (String, i64)>;

/// One change as the feed gives it: (change type, symbol, time us, price, volume).
type Change = (String, String, i64, String, i64);

pub(crate) async fn pg_state(db: &common::TestDb) -> State {
    db.client
        .query(
            "SELECT symbol, ((extract(epoch FROM time) * 1000000)::numeric)::bigint,
                    price::text, volume FROM ticks",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect()
}

/// The changes that take a table from `before` to `after`, net per key: a key only
/// after is an insert, only before a delete, in both with other values an update.
fn changes(before: &State, after: &State) -> Vec<Change> {
    let mut out = Vec::new();
    let row = |kind: &str, (s, t): &(String, i64), (p, v): &(String, i64)| {
        (kind.to_owned(), s.clone(), *t, p.clone(), *v)
    };
    for (key, new) in after {
        match before.get(key) {
            None => out.push(row("insert", key, new)),
            Some(old) if old != new => {
                out.push(row("update_preimage", key, old));
                out.push(row("update_postimage", key, new));
            }
            Some(_) => {}
        }
    }
    for (key, old) in before {
        if !after.contains_key(key) {
            out.push(row("delete", key, old));
        }
    }
    out.sort();
    out
}

async fn latest_version(location: &url::Url) -> i64 {
    lakets::delta::table::open(location)
        .await
        .unwrap()
        .unwrap()
        .version()
        .unwrap() as i64
}

fn start_sink(
    db: &common::TestDb,
    slot: &str,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<lakets::Result<()>> {
    let mut pc = PipelineConfig::new(SourceSettings::new(slot, "lakets"));
    pc.flush_interval = Duration::from_millis(100);
    pc.ack_interval = Duration::from_millis(100);
    let url = db.url.clone();
    let slot = slot.to_owned();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let client = common::user_connect(&url).await;
        lakets::operators::pipeline(lakets::db::parse_config(&url).unwrap(), pc)
            .operator(DeltaSink::new(client, slot.as_str()).await?)
            .run(shutdown)
            .await
    })
}

/// Runs `sql` as one transaction and waits until the sink has made it durable.
async fn step(db: &common::TestDb, slot: &str, sql: &str) {
    db.exec(sql).await;
    let end: Lsn = db
        .scalar::<String>("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .parse()
        .unwrap();
    wait_until_confirmed(&db.client, slot, end, Duration::from_secs(60)).await;
}

/// What `check_cdf.py` read; `starting_version`: only the feed, from there.
pub(crate) fn read_back(
    python: &str,
    path: &std::path::Path,
    starting_version: Option<i64>,
) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/check_cdf.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script).arg(path).env("PYTHONWARNINGS", "ignore");
    if let Some(v) = starting_version {
        cmd.arg(v.to_string());
    }
    let out = cmd.output().expect("running check_cdf.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the readers failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from check_cdf.py: {stdout}"));
    serde_json::from_str(line).unwrap()
}

/// The feed's entries `[version, type, symbol, time, price, volume]` by version.
pub(crate) fn feed_by_version(feed: &serde_json::Value) -> BTreeMap<i64, Vec<Change>> {
    let mut by_version: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
    for e in feed.as_array().expect("a feed is a list") {
        by_version.entry(e[0].as_i64().unwrap()).or_default().push((
            e[1].as_str().unwrap().to_owned(),
            e[2].as_str().unwrap().to_owned(),
            e[3].as_i64().unwrap(),
            e[4].as_str().unwrap().to_owned(),
            e[5].as_i64().unwrap(),
        ));
    }
    for changes in by_version.values_mut() {
        changes.sort();
    }
    by_version
}

/// The feed's changes in versions `(after, through]`.
fn feed_between(by_version: &BTreeMap<i64, Vec<Change>>, after: i64, through: i64) -> Vec<Change> {
    let mut out: Vec<Change> = by_version
        .range(after + 1..=through)
        .flat_map(|(_, c)| c.iter().cloned())
        .collect();
    out.sort();
    out
}

/// Applies the feed version by version (each version's deletes and pre-images, then its
/// inserts and post-images) and returns the table it builds. Fails on a change that does
/// not fit the table it meets: a row deleted that is not there (or not as the feed says), a
/// row inserted twice.
pub(crate) fn replay(by_version: &BTreeMap<i64, Vec<Change>>) -> State {
    let mut table = State::new();
    for (version, changes) in by_version {
        for (kind, symbol, time, price, volume) in changes {
            if kind == "delete" || kind == "update_preimage" {
                let old = table.remove(&(symbol.clone(), *time));
                assert_eq!(
                    old,
                    Some((price.clone(), *volume)),
                    "version {version}: {kind} of ({symbol}, {time}) meets {old:?}"
                );
            }
        }
        for (kind, symbol, time, price, volume) in changes {
            if kind == "insert" || kind == "update_postimage" {
                let old = table.insert((symbol.clone(), *time), (price.clone(), *volume));
                assert_eq!(
                    old, None,
                    "version {version}: {kind} of ({symbol}, {time}) twice"
                );
            }
        }
    }
    table
}

fn current_rows(state: &State) -> serde_json::Value {
    serde_json::Value::Array(
        state
            .iter()
            .map(|((s, t), (p, v))| serde_json::json!([s, t, p, v]))
            .collect(),
    )
}

/// The actions of one commit of the table at `path`, by kind ("add", "remove", "cdc", ...).
fn commit_actions(path: &std::path::Path, version: i64) -> BTreeMap<String, usize> {
    let log = path.join(format!("_delta_log/{version:020}.json"));
    let mut kinds = BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let action: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in action.as_object().unwrap().keys() {
            *kinds.entry(key.clone()).or_insert(0) += 1;
        }
    }
    kinds
}

async fn ticks_chronotable(db: &mut common::TestDb) {
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                             price numeric(12, 4) NOT NULL, volume bigint NOT NULL,
                             PRIMARY KEY (symbol, time));
         INSERT INTO ticks
           SELECT timestamptz '2026-11-19 00:00:00+00' + i * interval '97 seconds 1 microsecond',
                  'S' || (i % 5), i / 4.0, i
             FROM generate_series(1, 1000) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(12);
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_is_the_changes_postgres_made() {
    the_feed_equals_postgres("delta_cdf", CDF).await;
}

/// The same with deletion vectors: deletes and updates mark rows in their files' vectors,
/// which every reader (lakets' own included, for the rewrites) must apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_is_the_changes_postgres_made_with_deletion_vectors() {
    the_feed_equals_postgres("delta_cdf_dv", CDF_AND_VECTORS).await;
}

async fn the_feed_equals_postgres(label: &str, features: Features) {
    let Some(python) = common::interop_python(
        "deltalake, duckdb_extension_delta, pysail.spark, pyspark.sql",
        "deltalake, duckdb-extension-delta, pysail and pyspark-client",
    ) else {
        eprintln!("SKIPPED: set LAKETS_INTEROP_PYTHON to the interop venv's Python");
        return;
    };
    let mut db = fresh_db(label).await;
    ticks_chronotable(&mut db).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticks");
    let config = common::sync_with(&db, "ticks", &path, features).await;
    let protocol = lakets::sync::delta_protocol(&config)
        .await
        .unwrap()
        .unwrap();
    if features.deletion_vectors {
        assert_eq!(
            (protocol.min_reader_version, protocol.min_writer_version),
            (3, 7),
            "{protocol:?}"
        );
        assert!(protocol.deletion_vectors, "{protocol:?}");
        assert!(
            protocol
                .writer_features
                .contains(&"changeDataFeed".to_owned()),
            "{protocol:?}"
        );
    } else {
        assert_eq!(
            (protocol.min_reader_version, protocol.min_writer_version),
            (1, 4),
            "Change Data Feed at the legacy protocol every reader reads: {protocol:?}"
        );
    }
    assert!(protocol.change_data_feed, "{protocol:?}");

    // (state after, table version after) per step; the first: the initial copy.
    let mut states = vec![(State::new(), -1)];
    states.push((pg_state(&db).await, latest_version(&config.location).await));
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let shutdown = CancellationToken::new();
    let run = start_sink(&db, &slot, &shutdown);
    let steps = [
        // An append: its adds are its inserts.
        "INSERT INTO ticks SELECT timestamptz '2026-11-22 09:30:00+00' + i * interval '1 ms', 'N', i / 8.0, i FROM generate_series(1, 300) i",
        // Updates in place, then deletes.
        "UPDATE ticks SET price = price + 1, volume = volume * 2 WHERE symbol = 'S3'",
        "DELETE FROM ticks WHERE symbol = 'S4' AND time < '2026-11-19 12:00+00'",
        // One transaction of all three: its inserts must be change data too.
        "INSERT INTO ticks SELECT timestamptz '2026-11-20 01:00:00+00' + i * interval '1 s', 'M', i, i FROM generate_series(1, 50) i;
         UPDATE ticks SET volume = volume + 7 WHERE symbol = 'S1' AND volume % 3 = 0;
         DELETE FROM ticks WHERE symbol = 'S2' AND volume % 4 = 0",
        // A key that changes: a delete and an insert.
        "UPDATE ticks SET time = time + interval '1 day' WHERE symbol = 'N' AND volume % 10 = 0",
        // Rows inserted, updated and some deleted in one transaction: only the net inserts.
        "INSERT INTO ticks SELECT timestamptz '2026-11-21 05:00:00+00' + i * interval '1 s', 'Q', i, i FROM generate_series(1, 40) i;
         UPDATE ticks SET price = price * 3 WHERE symbol = 'Q';
         DELETE FROM ticks WHERE symbol = 'Q' AND volume % 2 = 0;
         UPDATE ticks SET price = price + 0.5 WHERE symbol = 'S0' AND volume < 200",
        // A row updated twice, then back to where it was: no net change for it.
        "UPDATE ticks SET volume = -1 WHERE symbol = 'M' AND volume = 1;
         UPDATE ticks SET volume = 1 WHERE symbol = 'M' AND volume = -1;
         UPDATE ticks SET volume = volume + 100 WHERE symbol = 'M' AND volume = 2",
    ];
    for sql in steps {
        step(&db, &slot, sql).await;
        states.push((pg_state(&db).await, latest_version(&config.location).await));
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();

    // Compaction (dataChange = false) and a checkpoint: no change in the feed.
    let mut delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = config.shape(&delta).unwrap();
    let compacted = lakets::delta::maintenance::compact(&mut delta, &shape, 2, 1 << 30)
        .await
        .unwrap()
        .expect("no other writer");
    assert!(compacted.files_removed >= 2, "{compacted:?}");
    lakets::delta::maintenance::checkpoint(&delta)
        .await
        .unwrap();
    let last = states.last().unwrap().0.clone();
    states.push((last, latest_version(&config.location).await));

    // A TRUNCATE and new rows in one transaction, streamed after the compaction.
    let shutdown = CancellationToken::new();
    let run = start_sink(&db, &slot, &shutdown);
    step(
        &db,
        &slot,
        "TRUNCATE ticks; INSERT INTO ticks VALUES ('2026-11-23 00:00:00+00', 'Z', 1.25, 5)",
    )
    .await;
    states.push((pg_state(&db).await, latest_version(&config.location).await));
    shutdown.cancel();
    run.await.unwrap().unwrap();

    // Commits that remove files carry change data; appends do not need it.
    let (_, append_version) = states[2];
    let append = commit_actions(&path, append_version);
    assert!(
        append.contains_key("add") && !append.contains_key("cdc"),
        "{append:?}"
    );
    let (_, update_version) = states[3];
    let update = commit_actions(&path, update_version);
    assert!(
        update.contains_key("cdc") && update.contains_key("remove"),
        "{update:?}"
    );
    // Every mirror commit names the WAL positions it holds.
    let log = std::fs::read_to_string(path.join(format!("_delta_log/{update_version:020}.json")))
        .unwrap();
    assert!(log.contains("\"lakets.lsnRange\""), "{log}");
    if features.deletion_vectors {
        // The updated rows' files come back with vectors, not as rewritten copies.
        assert!(log.contains("\"deletionVector\":{"), "{log}");
        assert!(
            std::fs::read_dir(&path).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("deletion_vector_")),
            "a deletion vector file at the table's root"
        );
    }

    let read = read_back(&python, &path, None);
    let by_version = feed_by_version(&read["feed"]);
    for pair in states.windows(2) {
        let ((before, after_version), (after, version)) = (&pair[0], &pair[1]);
        let want = changes(before, after);
        let got = feed_between(&by_version, *after_version, *version);
        assert_eq!(
            got.len(),
            want.len(),
            "versions {after_version}..={version}: the feed has {} changes, PostgreSQL made {}",
            got.len(),
            want.len()
        );
        assert_eq!(got, want, "versions {after_version}..={version}");
    }
    let final_rows = current_rows(&states.last().unwrap().0);
    assert_eq!(read["duckdb"], final_rows, "DuckDB's current rows");
    assert_eq!(read["sail"], final_rows, "Sail's current rows");
    // Sail's change feed, where it reads one, must agree too.
    match &read["sail_feed"] {
        serde_json::Value::String(e) => eprintln!("Sail reads no change feed: {e}"),
        feed => assert_eq!(feed_by_version(feed), by_version, "Sail's change feed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_data_feed_is_turned_on_while_the_stream_runs() {
    let Some(python) = common::interop_python("deltalake", "deltalake") else {
        eprintln!("SKIPPED: set LAKETS_INTEROP_PYTHON to the interop venv's Python");
        return;
    };
    let mut db = fresh_db("delta_cdf_upgrade").await;
    ticks_chronotable(&mut db).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticks");
    let config = common::sync_to(&db, "ticks", path.to_str().unwrap()).await;
    let before = lakets::sync::delta_protocol(&config)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (before.min_reader_version, before.min_writer_version),
        (1, 2)
    );
    assert!(!before.change_data_feed);

    // Asking for it on the existing table is refused with the way to get it.
    lakets::sync::disable_sync(&mut db.client, "ticks")
        .await
        .unwrap();
    let refused = lakets::sync::enable_sync_with_readers(
        &db.config(),
        "ticks",
        path.to_str().unwrap(),
        Partitioning::Day,
        None,
        CDF,
        1,
        |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(refused.contains("lakets sync upgrade"), "{refused}");
    let dir2 = tempfile::tempdir().unwrap();
    let config = common::sync_to(&db, "ticks", dir2.path().join("t").to_str().unwrap()).await;
    let path = dir2.path().join("t");

    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let shutdown = CancellationToken::new();
    let run = start_sink(&db, &slot, &shutdown);
    step(
        &db,
        &slot,
        "UPDATE ticks SET volume = volume + 1 WHERE symbol = 'S1'",
    )
    .await;
    let plain = latest_version(&config.location).await;
    assert!(!commit_actions(&path, plain).contains_key("cdc"));

    let upgraded = lakets::sync::upgrade_sync(&db.client, "ticks", CDF)
        .await
        .unwrap();
    let from = upgraded.version.expect("the upgrade commits");
    assert_eq!(upgraded.protocol.min_writer_version, 4);
    assert!(upgraded.protocol.change_data_feed);
    // Again: nothing to do.
    let again = lakets::sync::upgrade_sync(&db.client, "ticks", CDF)
        .await
        .unwrap();
    assert_eq!(again.version, None);

    let before = pg_state(&db).await;
    step(
        &db,
        &slot,
        "UPDATE ticks SET price = price * 2 WHERE symbol = 'S2' AND volume < 500;
         DELETE FROM ticks WHERE symbol = 'S3' AND volume > 900",
    )
    .await;
    let after = pg_state(&db).await;
    let through = latest_version(&config.location).await;
    assert!(commit_actions(&path, through).contains_key("cdc"));

    // Deletion vectors next, still streaming: the legacy writer 4's features are listed.
    let upgraded = lakets::sync::upgrade_sync(&db.client, "ticks", VECTORS)
        .await
        .unwrap();
    let p = &upgraded.protocol;
    assert_eq!(
        (p.min_reader_version, p.min_writer_version),
        (3, 7),
        "{p:?}"
    );
    assert!(p.deletion_vectors && p.change_data_feed, "{p:?}");
    for f in [
        "appendOnly",
        "invariants",
        "changeDataFeed",
        "deletionVectors",
    ] {
        assert!(p.writer_features.iter().any(|w| w == f), "{f}: {p:?}");
    }
    let marked_from = upgraded.version.unwrap();
    step(
        &db,
        &slot,
        "UPDATE ticks SET price = price + 3 WHERE symbol = 'S1' AND volume < 300",
    )
    .await;
    let last = pg_state(&db).await;
    let marked = latest_version(&config.location).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let log = std::fs::read_to_string(path.join(format!("_delta_log/{marked:020}.json"))).unwrap();
    assert!(log.contains("\"deletionVector\":{"), "{log}");

    let read = read_back(&python, &path, Some(from));
    let by_version = feed_by_version(&read["feed"]);
    assert_eq!(
        feed_between(&by_version, from, through),
        changes(&before, &after)
    );
    assert_eq!(
        feed_between(&by_version, marked_from, marked),
        changes(&after, &last)
    );

    // `lakets sync show` names the protocol and the feature.
    let show = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lakets"))
            .env("LAKETS_DATABASE_URL", &db.url)
            .args(["sync", "show"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = show(&[]);
    assert!(
        text.contains("change data feed on, deletion vectors on"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&show(&["--json"])).unwrap();
    assert_eq!(json[0]["delta"]["min_writer_version"], 7, "{json}");
    assert_eq!(json[0]["delta"]["deletion_vectors"], true, "{json}");
    assert_eq!(json[0]["delta"]["change_data_feed"], true, "{json}");
    assert_eq!(json[0]["table"]["name"], "ticks", "{json}");
}
