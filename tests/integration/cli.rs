//! The `lakets` command line as users script it: commands, output formats, exit codes,
//! error messages, and the demo's start-up and shutdown.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fresh_db, fresh_empty_db};

fn lakets() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakets"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("LAKETS_DATABASE_URL")
        .env_remove("PGPASSWORD")
        .env("LAKETS_LOG", "warn");
    cmd
}

fn run(url: &str, args: &[&str]) -> Output {
    lakets()
        .env("LAKETS_DATABASE_URL", url)
        .args(args)
        .output()
        .expect("running lakets")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[tokio::test]
async fn init_and_the_chronotable_commands_work_end_to_end() {
    let db = fresh_empty_db("cli_flow").await;
    let first = run(&db.url, &["init"]);
    assert_ok(&first);
    assert!(
        stdout(&first).contains("installed at version"),
        "{}",
        stdout(&first)
    );
    let second = run(&db.url, &["init"]);
    assert_ok(&second);
    assert!(
        stdout(&second).contains("up to date"),
        "{}",
        stdout(&second)
    );

    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text, price float8);
         INSERT INTO ticks SELECT now() - i * interval '10 minutes', 'S' || (i % 3), i FROM generate_series(0, 100) i;",
    )
    .await;
    let created = run(
        &db.url,
        &[
            "chronotable",
            "create",
            "ticks",
            "--time-column",
            "time",
            "--chunk-interval",
            "1 hour",
            "--premake",
            "2",
        ],
    );
    assert_ok(&created);
    assert!(
        stdout(&created).contains("101 rows copied"),
        "{}",
        stdout(&created)
    );

    let shown = run(&db.url, &["chronotable", "show-chunks", "ticks", "--json"]);
    assert_ok(&shown);
    let chunks: Vec<serde_json::Value> = serde_json::from_str(&stdout(&shown)).unwrap();
    assert!(
        chunks.len() >= 18,
        "17 hours of data plus the window: {}",
        chunks.len()
    );
    for key in [
        "chunk_name",
        "range_start",
        "range_end",
        "status",
        "row_count",
        "size_bytes",
        "last_write_lsn",
    ] {
        assert!(
            chunks[0].get(key).is_some(),
            "missing key {key}: {}",
            chunks[0]
        );
    }
    let total: i64 = chunks
        .iter()
        .map(|c| c["row_count"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 101);
    assert!(chunks.iter().all(|c| c["status"] == "active"));

    let text = run(&db.url, &["chronotable", "show-chunks", "ticks"]);
    assert_ok(&text);
    assert!(stdout(&text).starts_with("chunk_name"), "{}", stdout(&text));
    assert!(stdout(&text).lines().count() == chunks.len() + 1);

    assert_ok(&run(
        &db.url,
        &["chronotable", "set-interval", "ticks", "2 hours"],
    ));
    let ensured = run(&db.url, &["chronotable", "ensure-partitions", "--json"]);
    assert_ok(&ensured);
    let reports: serde_json::Value = serde_json::from_str(&stdout(&ensured)).unwrap();
    assert_eq!(reports[0]["table"]["name"], "ticks");

    let dropped = run(
        &db.url,
        &[
            "chronotable",
            "drop-chunks",
            "ticks",
            "--older-than",
            "6 hours",
            "--json",
        ],
    );
    assert_ok(&dropped);
    let report: serde_json::Value = serde_json::from_str(&stdout(&dropped)).unwrap();
    let n = report["dropped"].as_array().unwrap().len();
    assert!(
        (10..=12).contains(&n),
        "about 11 hourly chunks end more than 6 h ago: {report}"
    );
    let remaining: i64 = db.scalar("SELECT count(*) FROM ticks").await;
    assert!(remaining < 101 && remaining > 30, "{remaining}");
    let all = run(
        &db.url,
        &["chronotable", "show-chunks", "ticks", "--json", "--all"],
    );
    let all: Vec<serde_json::Value> = serde_json::from_str(&stdout(&all)).unwrap();
    assert_eq!(all.iter().filter(|c| c["status"] == "dropped").count(), n);

    assert_ok(&run(&db.url, &["chronotable", "drop", "ticks"]));
    assert!(
        !db.scalar::<bool>("SELECT to_regclass('ticks') IS NOT NULL")
            .await
    );
}

#[tokio::test]
async fn bad_input_exits_2_with_a_message_and_changes_nothing() {
    let db = fresh_db("cli_bad").await;
    db.exec("CREATE TABLE x (id int); CREATE TABLE ev (time timestamptz NOT NULL, v int)")
        .await;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "chronotable",
                "create",
                r#"a"; drop table x; --"#,
                "--time-column",
                "time",
            ],
            "invalid name",
        ),
        (
            vec!["chronotable", "create", "ev", "--time-column", "v"],
            "must be timestamptz",
        ),
        (
            vec!["chronotable", "create", "missing", "--time-column", "time"],
            "does not exist",
        ),
        (
            vec![
                "chronotable",
                "create",
                "ev",
                "--time-column",
                "time",
                "--chunk-interval",
                "1 month",
            ],
            "no fixed length",
        ),
        (
            vec![
                "chronotable",
                "create",
                "ev",
                "--time-column",
                "time",
                "--chunk-interval",
                "soon",
            ],
            "invalid interval",
        ),
        (
            vec![
                "chronotable",
                "create",
                "ev",
                "--time-column",
                "time",
                "--premake=-5",
            ],
            "premake",
        ),
        (
            vec!["chronotable", "show-chunks", "ev"],
            "ChronoTable ev does not exist",
        ),
        (
            vec!["chronotable", "drop-chunks", "ev", "--older-than=-1 day"],
            "negative",
        ),
        (
            vec!["chronotable", "set-interval", "x", "1 day"],
            "does not exist",
        ),
    ];
    for (args, expected) in cases {
        let out = run(&db.url, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: expected {expected:?} in {}",
            stderr(&out)
        );
    }
    assert!(
        db.scalar::<bool>("SELECT to_regclass('x') IS NOT NULL")
            .await
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM lakets._chronotable_registry")
            .await,
        0
    );
    assert_eq!(
        db.scalar::<String>("SELECT relkind::text FROM pg_class WHERE oid = 'ev'::regclass")
            .await,
        "r"
    );
}

#[tokio::test]
async fn secrets_stay_off_the_command_line_and_missing_setup_is_explained() {
    let with_password = lakets()
        .args([
            "--database-url",
            "postgres://u:hunter2@127.0.0.1:1/db",
            "init",
        ])
        .output()
        .unwrap();
    assert_eq!(with_password.status.code(), Some(1));
    assert!(
        stderr(&with_password).contains("contains a password"),
        "{}",
        stderr(&with_password)
    );
    assert!(
        !stderr(&with_password).contains("hunter2"),
        "the secret is not echoed"
    );

    let none = lakets().arg("init").output().unwrap();
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("no database given"),
        "{}",
        stderr(&none)
    );

    let db = fresh_empty_db("cli_no_schema").await;
    let out = run(&db.url, &["chronotable", "show-chunks", "t"]);
    assert!(
        stderr(&out).contains("run `lakets init` first"),
        "{}",
        stderr(&out)
    );

    // A password from the environment is used, and not logged.
    let out = lakets()
        .env("LAKETS_DATABASE_URL", "postgres://someone@127.0.0.1:9/db")
        .env("PGPASSWORD", "s3cret-value")
        .env("LAKETS_LOG", "debug")
        .arg("init")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("connecting to PostgreSQL at 127.0.0.1:9/db"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("s3cret-value"));
}

#[test]
fn missing_server_binaries_name_the_package_to_install() {
    let out = lakets()
        .env("LAKETS_PG_BINDIR", "/nonexistent")
        .args(["demo", "--duration", "1s", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not contain initdb and postgres"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("apt-get install postgresql-15"),
        "{}",
        stderr(&out)
    );
}

struct Demo {
    child: Child,
    port: u16,
    pg_dir: String,
}

/// Starts `lakets demo`, waits until it streams, and reads its port and cluster directory.
fn start_demo(data_dir: &std::path::Path) -> Demo {
    let mut child = lakets()
        .env("LAKETS_LOG", "info")
        .env("LAKETS_LOG_FORMAT", "json")
        .args(["demo", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Collects stderr; the cluster directory is in the start-up log line.
    let (dir_tx, dir_rx) = std::sync::mpsc::channel::<Result<String, String>>();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(dir) = v["fields"]["dir"].as_str()
                && !sent
            {
                sent = dir_tx.send(Ok(dir.to_owned())).is_ok();
            }
        }
        if !sent {
            let _ = dir_tx.send(Err(seen));
        }
    });
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut port = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = stdout.lines();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if line.starts_with("Connect with:")
            && let Some(rest) = line.split("127.0.0.1:").nth(1)
        {
            port = rest.split('/').next().and_then(|p| p.parse().ok());
        }
        if line.starts_with("Streaming ticks") {
            break;
        }
    }
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let pg_dir = match dir_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(dir)) => dir,
        Ok(Err(stderr)) => panic!("the demo did not start; stderr:\n{stderr}"),
        Err(e) => panic!("no start-up log from the demo: {e}"),
    };
    let port = port.expect("the demo printed its connection string");
    Demo {
        child,
        port,
        pg_dir,
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn demo_stops_its_cluster_on_ctrl_c_and_even_when_killed() {
    let data = tempfile::tempdir().unwrap();
    let mut demo = start_demo(data.path());
    assert!(port_open(demo.port));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(demo.child.id() as i32, libc::SIGINT) };
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "Ctrl-C is a clean exit: {status:?}");
    assert!(!port_open(demo.port), "the server is stopped");
    assert!(
        !std::path::Path::new(&demo.pg_dir).exists(),
        "the cluster directory is removed"
    );

    // kill -9 leaves no server behind: the kernel signals it when its parent dies.
    let mut demo = start_demo(data.path());
    demo.child.kill().unwrap();
    demo.child.wait().unwrap();
    wait_until("the orphaned server exits", Duration::from_secs(20), || {
        !port_open(demo.port)
    });
    let _ = std::fs::remove_dir_all(&demo.pg_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_until_sigterm_and_slot_commands_report_and_protect() {
    let db = fresh_db("cli_run").await;
    db.exec("CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price float8)")
        .await;
    assert_ok(&run(
        &db.url,
        &[
            "chronotable",
            "create",
            "ticks",
            "--time-column",
            "time",
            "--chunk-interval",
            "1 hour",
        ],
    ));
    assert_ok(&run(
        &db.url,
        &[
            "lvc",
            "enable",
            "ticks",
            "--key",
            "symbol",
            "--columns",
            "price",
        ],
    ));
    assert_ok(&run(
        &db.url,
        &[
            "rollup",
            "create",
            "ticks_1min",
            "--source",
            "ticks",
            "--bucket",
            "1 minute",
            "--group-by",
            "symbol",
            "--aggregate",
            "max(price), count(*)",
        ],
    ));
    let bad = run(
        &db.url,
        &[
            "rollup",
            "create",
            "x",
            "--source",
            "ticks",
            "--bucket",
            "soon",
            "--aggregate",
            "max(price)",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("invalid interval"),
        "{}",
        stderr(&bad)
    );
    let mut child = lakets()
        .env("LAKETS_DATABASE_URL", &db.url)
        .env("LAKETS_LOG", "info")
        // Operators store every 3 s: `verify` right after a write must wait for that.
        .env("LAKETS_SERVICE_FLUSH_INTERVAL", "3 seconds")
        .args([
            "run",
            "--rollups-every",
            "1 second",
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let slot = format!("lakets_{}", db.name);
    wait_until("the slot is streaming", Duration::from_secs(30), || {
        let out = run(&db.url, &["slot", "show", "--json"]);
        out.status.success()
            && serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()["active"] == true
    });
    db.exec("INSERT INTO ticks VALUES (now(), 'A', 1.5)").await;
    let mut stamped = false;
    for _ in 0..100 {
        stamped = db
            .scalar::<bool>(
                "SELECT bool_or(last_write_lsn IS NOT NULL) FROM lakets._chunk_metadata",
            )
            .await;
        if stamped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stamped, "the chunk tracker stamped the written chunk");
    let mut cached = String::new();
    for _ in 0..100 {
        let out = run(&db.url, &["lvc", "get", "ticks", "A"]);
        if out.status.success() {
            cached = stdout(&out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cached: serde_json::Value = serde_json::from_str(&cached).expect("lvc get prints JSON");
    assert_eq!(cached["price"], 1.5);
    assert_eq!(cached["symbol"], "A");
    let missing = run(&db.url, &["lvc", "get", "ticks", "ZZZ"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no cached row for key ZZZ"),
        "{}",
        stderr(&missing)
    );

    // A late row reaches the rollup through the invalidation operator and the scheduled
    // cascade refresh.
    db.exec("INSERT INTO ticks VALUES (now() - interval '10 minutes', 'B', 7)")
        .await;
    let mut rolled = 0i64;
    for _ in 0..150 {
        rolled = db
            .scalar("SELECT count(*) FROM ticks_1min WHERE symbol = 'B' AND max_price = 7")
            .await;
        if rolled == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rolled, 1, "the late row's bucket was refreshed by the job");
    let shown = run(&db.url, &["rollup", "show", "--json"]);
    assert_ok(&shown);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(shown[0]["name"], "ticks_1min");
    assert!(shown[0]["watermark"].is_i64(), "{shown}");
    let refreshed = run(&db.url, &["rollup", "refresh", "--json"]);
    assert_ok(&refreshed);
    // verify compares the cache table and the Delta table, which the operators store on
    // their flush interval (the rollup's refresh above says nothing of them): verify waits
    // until the slot has stored what was committed before it began, so a row written just
    // before is no difference.
    db.exec("INSERT INTO ticks VALUES (now(), 'C', 3)").await;
    let verified = run(&db.url, &["verify", "ticks"]);
    assert_ok(&verified);
    assert!(
        stdout(&verified).contains("ok   rollup ticks_1min"),
        "{}",
        stdout(&verified)
    );
    assert!(
        stdout(&verified).contains(&format!("ok   stream {slot}: stored through")),
        "verify waited for the stream: {}",
        stdout(&verified)
    );
    let missing = run(&db.url, &["rollup", "drop", "nope"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("rollup nope does not exist"),
        "{}",
        stderr(&missing)
    );

    // The slot is in use: dropping it is refused.
    let out = run(&db.url, &["slot", "drop", &slot]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        status.success(),
        "SIGTERM is a clean exit: {status:?}\n{err}"
    );
    assert!(err.contains("pipeline stopped"), "{err}");

    let shown = run(&db.url, &["slot", "show"]);
    assert_ok(&shown);
    assert!(
        stdout(&shown).contains(&format!("slot {slot}: inactive")),
        "{}",
        stdout(&shown)
    );
    // Everything was confirmed at shutdown, so a plain drop is allowed now.
    let out = run(&db.url, &["slot", "drop", &slot]);
    assert_ok(&out);
}
