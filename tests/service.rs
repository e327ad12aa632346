//! The service and its surfaces, from outside: `lakets demo --duration` end to end, the
//! gRPC API (LVC Get/Subscribe, admin calls and the token), a metrics scrape, the config
//! (errors, reconcile, drift), `lakets status` and `lakets ingest`. Its own test binary:
//! it reads the process's metrics (a restart counted elsewhere would show here).

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{TestDb, fresh_db};
use lakets::config::Config;
use lakets::grpc::proto;
use tokio_stream::StreamExt;

fn lakets(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakets"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("PGPASSWORD")
        .env("LAKETS_DATABASE_URL", url)
        .env("LAKETS_LOG", "warn");
    cmd
}

fn output(url: &str, args: &[&str]) -> Output {
    lakets(url).args(args).output().expect("running lakets")
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_duration_runs_every_stage_end_to_end() {
    let db = fresh_db("svc_demo").await;
    let data = tempfile::tempdir().unwrap();
    let out = lakets(&db.url)
        .args([
            "demo",
            "--duration",
            "40 seconds",
            "--history-hours",
            "5",
            "--rate",
            "200",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    let printed = ok(&out);
    assert!(printed.contains("Duration reached"), "{printed}");

    // Rows in PostgreSQL, and the same rows in the Delta table, the LVC and the rollups:
    // verify compares every chunk, the cache and every rollup with recomputations.
    let rows: i64 = db.scalar("SELECT count(*) FROM stock_ticks").await;
    assert!(
        rows > 100_000,
        "history and live ticks are in the table: {rows}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&ok(&output(&db.url, &["verify", "stock_ticks", "--json"]))).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["rollups"].as_array().unwrap().len() == 3, "{report}");

    // LVC entries for every symbol, each the latest row.
    let symbols: i64 = db
        .scalar("SELECT count(DISTINCT symbol) FROM stock_ticks")
        .await;
    let cached: i64 = db
        .scalar("SELECT count(*) FROM lakets.lvc_stock_ticks")
        .await;
    assert_eq!((symbols, cached), (10, 10));
    let stale: i64 = db
        .scalar(
            "SELECT count(*) FROM lakets.lvc_stock_ticks c
              WHERE c.time <> (SELECT max(time) FROM stock_ticks t WHERE t.symbol = c.symbol)",
        )
        .await;
    assert_eq!(stale, 0);

    // Rollups advanced at all three levels, with live ticks in the newest minute candles.
    let minute_lag: f64 = db
        .scalar(
            "SELECT extract(epoch FROM now() - watermark)::float8 FROM lakets._rollup_registry
              WHERE rollup_name = 'ohlcv_1min'",
        )
        .await;
    assert!(
        minute_lag < 180.0,
        "ohlcv_1min's watermark is recent: {minute_lag} s behind"
    );
    let watermarks: i64 = db
        .scalar("SELECT count(watermark) FROM lakets._rollup_registry")
        .await;
    assert_eq!(watermarks, 3, "every level was refreshed");
    // Materialized below the watermark; the real-time view adds the open buckets (the
    // current day is never complete in a demo).
    for (rollup, min_rows) in [
        ("ohlcv_1min", 290),
        ("ohlcv_1hour", 40),
        ("ohlcv_1day_realtime", 10),
    ] {
        let n: i64 = db.scalar(&format!("SELECT count(*) FROM {rollup}")).await;
        assert!(n >= min_rows, "{rollup} has {n} rows");
    }
    // The newest day candle agrees with the raw ticks still in the table.
    let off: i64 = db
        .scalar(
            "SELECT count(*) FROM ohlcv_1day_realtime d
               JOIN (SELECT symbol, max(price) hi FROM stock_ticks
                      WHERE time >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                      GROUP BY symbol) t USING (symbol)
              WHERE d.bucket = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                AND d.high < t.hi",
        )
        .await;
    assert_eq!(off, 0, "no day candle is below a tick of its day");

    // Chunks: pre-created ahead of now, tiered and dropped on the demo's schedule.
    let ahead: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE range_start > now()")
        .await;
    let tiered: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE status = 'tiered'")
        .await;
    let dropped: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE status = 'dropped'")
        .await;
    assert!(
        ahead >= 3 && tiered >= 1 && dropped >= 1,
        "ahead {ahead}, tiered {tiered}, dropped {dropped}"
    );

    // Every dropped chunk's rows are in Delta, and gone from PostgreSQL.
    let location = data.path().join("delta").join("stock_ticks");
    let url = lakets::delta::table::parse_location(&location.display().to_string()).unwrap();
    for chunk in common::dropped_chunks(&db).await {
        let name = &chunk.name;
        assert!(chunk.rows > 0, "{name} held history");
        let in_delta = common::delta_rows_in(&url, chunk.start, chunk.end).await;
        assert_eq!(
            in_delta, chunk.rows as u64,
            "Delta holds every row of dropped chunk {name}"
        );
        let left: i64 = db
            .scalar(&format!(
                "SELECT count(*) FROM stock_ticks WHERE time >= to_timestamp({}::float8 / 1e6)
                   AND time < to_timestamp({}::float8 / 1e6)",
                chunk.start, chunk.end
            ))
            .await;
        assert_eq!(left, 0, "{name} is gone from PostgreSQL");
    }
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    r
}

/// A plain HTTP/1.0 GET: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: lakets\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Prometheus text format: the value of the first sample of `name` whose labels contain
/// every one of `labels`.
fn sample(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let metric = series.split('{').next().unwrap_or("");
            metric == name && labels.iter().all(|label| series.contains(label))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

async fn service_config(db: &TestDb, token_file: &std::path::Path) -> Config {
    let text = format!(
        r#"
[http]
listen = "127.0.0.1:0"
[grpc]
listen = "127.0.0.1:0"
admin_token_file = "{}"
[jobs]
enabled = false
[service]
flush_interval = "200 milliseconds"
[[tables]]
name = "ticks"
time_column = "time"
chunk_interval = "1 hour"
[tables.lvc]
key = ["symbol"]
columns = ["price"]
"#,
        token_file.display()
    );
    let mut config = Config::parse_with_env(&text, "test", &[]).unwrap();
    config.database.url = Some(db.url.clone());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_lvc_subscribe_admin_token_metrics_and_probes() {
    let db = fresh_db("svc_grpc").await;
    db.exec("CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price float8)")
        .await;
    db.exec("INSERT INTO ticks VALUES (now() - interval '1 minute', 'A', 1.0), (now(), 'B', 2.0)")
        .await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let config = service_config(&db, &token_file).await;
    let dbc = config.database_config().unwrap();
    let report = lakets::config::reconcile::reconcile(&dbc, &config)
        .await
        .unwrap();
    assert_eq!(report.created.len(), 2, "{report:?}");
    let cancel = tokio_util::sync::CancellationToken::new();
    let service = lakets::service::start(&config, dbc, cancel.clone())
        .await
        .unwrap();
    let http = service.http_addr.unwrap();
    let grpc = format!("http://{}", service.grpc_addr.unwrap());

    // Ready once streaming.
    let mut ready = false;
    for _ in 0..100 {
        if http_get(http, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz turns 200 once streaming");
    assert_eq!(http_get(http, "/healthz").await.0, 200);

    let mut lvc = proto::last_value_cache_client::LastValueCacheClient::connect(grpc.clone())
        .await
        .unwrap();
    let key = |k: &str| proto::Key {
        values: vec![k.to_string()],
    };
    let got = lvc
        .get(proto::GetRequest {
            table: "ticks".into(),
            key: Some(key("A")),
        })
        .await
        .unwrap()
        .into_inner()
        .value
        .expect("A is cached");
    assert_eq!(got.values.get("price").map(String::as_str), Some("1"));
    let missing = lvc
        .get(proto::GetRequest {
            table: "ticks".into(),
            key: Some(key("Z")),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(missing.value.is_none());
    let err = lvc
        .get(proto::GetRequest {
            table: "nope".into(),
            key: Some(key("A")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // Subscribe to A: the current row, then every update as rows are inserted.
    let mut stream = lvc
        .subscribe(proto::SubscribeRequest {
            table: "public.ticks".into(),
            keys: vec![key("A")],
            updates_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.values["price"], "1");
    for price in [3, 4, 5] {
        db.exec(&format!(
            "INSERT INTO ticks VALUES (now(), 'A', {price}), (now(), 'B', 99)"
        ))
        .await;
        let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an update arrives")
            .unwrap()
            .unwrap();
        assert_eq!(
            update.key.unwrap().values,
            vec!["A"],
            "only the subscribed key"
        );
        assert_eq!(update.values["price"], price.to_string());
    }
    db.exec("DELETE FROM ticks WHERE symbol = 'A'").await;
    let gone = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(gone.deleted);
    let all = lvc
        .batch_get(proto::BatchGetRequest {
            table: "ticks".into(),
            keys: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.values.len(), 1, "only B is left");

    // Admin calls need the token.
    let mut admin = proto::admin_client::AdminClient::connect(grpc.clone())
        .await
        .unwrap();
    let err = admin.status(proto::StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(proto::StatusRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        admin.status(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut status = proto::StatusResponse::default();
    for _ in 0..100 {
        status = admin
            .status(authed(proto::StatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        if status.operators.len() == 4 && status.received_lsn != "0/0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status.slot, format!("lakets_{}", db.name));
    assert!(status.streaming && status.slot_active, "{status:?}");
    assert_eq!(
        status.operators.len(),
        4,
        "every operator reports: {status:?}"
    );
    assert!(status.received_lsn != "0/0", "{status:?}");
    let chunks = admin
        .chunks(authed(proto::ChunksRequest {
            table: "ticks".into(),
            include_dropped: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        chunks
            .chunks
            .iter()
            .all(|c| c.table == "public.ticks" && c.status == "active")
    );
    assert!(chunks.chunks.len() >= 4, "{chunks:?}");
    let bad = admin
        .set_ingest_profile(authed(proto::IngestProfile {
            symbols: 0,
            rate: 10,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad}");
    admin
        .set_ingest_profile(authed(proto::IngestProfile {
            symbols: 3,
            rate: 50,
            burst: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    let profile = admin
        .get_ingest_profile(authed(proto::GetIngestProfileRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (profile.symbols, profile.rate, profile.burst),
        (3, 50, true)
    );

    // The metrics scrape, parsed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, scrape) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    let lag = sample(&scrape, "lakets_replication_lag_seconds", &[]).expect("lag is exported");
    assert!((0.0..60.0).contains(&lag), "{lag}");
    let changes: f64 = ["insert", "delete"]
        .iter()
        .filter_map(|kind| {
            sample(
                &scrape,
                "lakets_wal_changes_total",
                &[&format!("kind=\"{kind}\"")],
            )
        })
        .sum();
    assert!(
        changes >= 9.0,
        "8 inserts and a delete were streamed: {changes}\n{scrape}"
    );
    assert_eq!(
        sample(&scrape, "lakets_lvc_keys", &["table=\"public.ticks\""]),
        Some(1.0)
    );
    assert!(
        sample(
            &scrape,
            "lakets_operator_durable_lsn",
            &["operator=\"lvc\""]
        )
        .unwrap()
            > 0.0
    );
    assert!(
        scrape.contains("lakets_lvc_update_latency_seconds_bucket"),
        "a histogram, not a summary"
    );
    assert!(!scrape.contains("s3cret"), "no secret in metrics");

    // Graceful stop: flushed and acknowledged, then Ok.
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), service.wait())
        .await
        .expect("stops promptly")
        .unwrap();
    let stored: i64 = db.scalar("SELECT count(*) FROM lakets.lvc_ticks").await;
    assert_eq!(stored, 1, "the cache table holds B only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_reconcile_drift_status_and_ingest() {
    let db = fresh_db("svc_config").await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };

    // Refused with what and why, exit code 2, nothing created.
    for (text, expect) in [
        (
            "[[tables]]\nname = \"t\"\ntime_column = \"time\"\nchunk_intervall = \"1 hour\"\n",
            "unknown field `chunk_intervall`",
        ),
        (
            "[jobs]\ntiering_every = \"every now and then\"\n",
            "every now and then",
        ),
        (
            "[[tables]]\nname = \"missing_table\"\ntime_column = \"time\"\n",
            "does not exist",
        ),
    ] {
        let file = write("bad.toml", text);
        let out = output(&db.url, &["config", "apply", "--config", &file]);
        assert_eq!(out.status.code(), Some(2), "{text}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{text}: {err}");
    }
    let registered: i64 = db
        .scalar("SELECT count(*) FROM lakets._chronotable_registry")
        .await;
    assert_eq!(registered, 0);
    // An environment override with a bad value names the variable.
    let file = write("good.toml", "");
    let out = lakets(&db.url)
        .env("LAKETS_JOBS_RETENTION_EVERY", "sometimes")
        .args(["config", "check", "--config", &file])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LAKETS_JOBS_RETENTION_EVERY"));

    // Reconcile: created once, then idempotent; safe changes applied, the rest reported.
    db.exec("CREATE TABLE quotes (time timestamptz NOT NULL, symbol text NOT NULL, bid float8, ask float8)")
        .await;
    let base = "[[tables]]\nname = \"quotes\"\ntime_column = \"time\"\nchunk_interval = \"1 hour\"\n\
                [tables.lvc]\nkey = [\"symbol\"]\ncolumns = [\"bid\"]\n\
                [[rollups]]\nname = \"quotes_1h\"\nsource = \"quotes_1m\"\nbucket = \"1 hour\"\ngroup_by = [\"symbol\"]\naggregate = \"max(bid)\"\n\
                [[rollups]]\nname = \"quotes_1m\"\nsource = \"quotes\"\nbucket = \"1 minute\"\ngroup_by = [\"symbol\"]\naggregate = \"max(bid), min(ask)\"\n";
    let file = write("lakets.toml", base);
    let apply = |file: &str| -> serde_json::Value {
        serde_json::from_str(&ok(&output(
            &db.url,
            &["config", "apply", "--config", file, "--json"],
        )))
        .unwrap()
    };
    let first = apply(&file);
    assert_eq!(first["created"].as_array().unwrap().len(), 4, "{first}");
    let second = apply(&file);
    assert!(second["created"].as_array().unwrap().is_empty(), "{second}");
    assert!(second["drift"].as_array().unwrap().is_empty(), "{second}");
    assert_eq!(second["unchanged"], 4, "{second}");
    let changed = base
        .replace(
            "chunk_interval = \"1 hour\"",
            "chunk_interval = \"2 hours\"",
        )
        .replace("columns = [\"bid\"]", "columns = [\"bid\", \"ask\"]");
    let file2 = write("changed.toml", &changed);
    let third = apply(&file2);
    assert!(
        third["changed"][0].as_str().unwrap().contains("2 hours"),
        "{third}"
    );
    assert!(
        third["drift"][0]
            .as_str()
            .unwrap()
            .contains("Last Value Cache"),
        "{third}"
    );
    let interval: String = db
        .scalar("SELECT chunk_interval::text FROM lakets._chronotable_registry")
        .await;
    assert_eq!(interval, "02:00:00");
    let cache_cols: i64 = db
        .scalar("SELECT array_length(value_columns, 1)::int8 FROM lakets._lvc_registry")
        .await;
    assert_eq!(cache_cols, 1, "drift is reported, not applied");

    // Ingest: stock_ticks created, the rate held, stock_assets filled.
    let report: serde_json::Value = serde_json::from_str(&ok(&output(
        &db.url,
        &[
            "ingest",
            "--symbols",
            "5",
            "--rate",
            "400",
            "--duration",
            "3 seconds",
            "--json",
        ],
    )))
    .unwrap();
    let rows = report["rows"].as_u64().unwrap();
    assert!(
        (800..=1400).contains(&rows),
        "about 1,200 rows in 3 s: {rows}"
    );
    let in_table: i64 = db.scalar("SELECT count(*) FROM stock_ticks").await;
    assert_eq!(in_table as u64, rows);
    let symbols: i64 = db
        .scalar("SELECT count(DISTINCT symbol) FROM stock_ticks")
        .await;
    assert_eq!(symbols, 5);
    let out = output(
        &db.url,
        &["ingest", "--symbols", "0", "--duration", "1 second"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Status from the database (no service running): slot, tables, rollups.
    let status: serde_json::Value = serde_json::from_str(&ok(&output(
        &db.url,
        &["status", "--json", "--config", &file],
    )))
    .unwrap();
    assert_eq!(status["slot"], format!("lakets_{}", db.name));
    let tables: Vec<&str> = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, vec!["public.quotes", "public.stock_ticks"]);
    assert_eq!(status["rollups"].as_array().unwrap().len(), 2);
    let human = ok(&output(&db.url, &["status", "--config", &file]));
    assert!(human.contains("table public.quotes"), "{human}");
}

/// A condition that will not heal stops the stream once, with the reason, instead of
/// restarting it forever: `/readyz` fails saying why, `lakets_stream_stopped{reason}` is
/// set, the restart counter stays put, and `lakets status` says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definite_error_stops_the_stream_with_its_reason_and_keeps_the_service_up() {
    let db = fresh_db("svc_definite").await;
    db.exec("CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price float8)")
        .await;
    db.exec("INSERT INTO ticks VALUES (now(), 'A', 1.0)").await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let lake = tempfile::tempdir().unwrap();
    let mut config = service_config(&db, &token_file).await;
    config.tables[0].sync = Some(lakets::config::SyncSpec {
        to: lake.path().join("ticks").display().to_string(),
        partition_by: "day".into(),
        source: None,
        change_data_feed: false,
        deletion_vectors: false,
    });
    let dbc = config.database_config().unwrap();
    lakets::config::reconcile::reconcile(&dbc, &config)
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let service = lakets::service::start(&config, dbc, cancel.clone())
        .await
        .unwrap();
    let http = service.http_addr.unwrap();
    common::wal::wait_for(
        "the stream to be ready",
        Duration::from_secs(20),
        async || http_get(http, "/readyz").await.0 == 200,
    )
    .await;
    // A column the cold tier cannot carry, then a row using it.
    db.exec("ALTER TABLE ticks ADD COLUMN tags text[]").await;
    db.exec("INSERT INTO ticks VALUES (now(), 'B', 2.0, '{x}')")
        .await;
    common::wal::wait_for("the stream to stop", Duration::from_secs(30), async || {
        http_get(http, "/readyz")
            .await
            .1
            .contains("stopped for good")
    })
    .await;
    let (code, body) = http_get(http, "/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("stopped for good") && body.contains("tags"),
        "{body}"
    );
    let (_, scrape) = http_get(http, "/metrics").await;
    assert_eq!(
        sample(
            &scrape,
            "lakets_stream_stopped",
            &["reason=\"unsupported\""]
        ),
        Some(1.0),
        "{scrape}"
    );
    // Not retried: a few seconds later no restart has happened.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, scrape) = http_get(http, "/metrics").await;
    assert_eq!(
        sample(&scrape, "lakets_wal_restarts_total", &[]).unwrap_or(0.0),
        0.0,
        "{scrape}"
    );
    let status = ok(&output(&db.url, &["status", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["stopped"]["kind"], "unsupported", "{status}");
    let reason = status["stopped"]["reason"].as_str().unwrap();
    assert!(reason.contains("What to do"), "{reason}");
    let text = ok(&output(&db.url, &["status"]));
    assert!(text.contains("STREAMING STOPPED"), "{text}");
    // Nothing after the change was acknowledged: PostgreSQL keeps it for the next run.
    let pending: i64 = db
        .scalar(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
               FROM pg_replication_slots WHERE slot_name = '{}'",
            lakets::wal::slot::default_slot_name(&db.name)
        ))
        .await;
    assert!(pending > 0);
    cancel.cancel();
    let err = service.wait().await.unwrap_err();
    assert!(matches!(err, lakets::Error::Unsupported(_)), "{err}");
}
