//! The dashboard from outside: its JSON and its refusals over HTTP, the metric series that
//! exist from the start, and the page in headless Chromium, whose panels must show what
//! the database holds at that moment and whose controls must steer a running ingest.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::browser::{self, Browser};
use common::wal::wait_for;
use common::{TestDb, fresh_db};
use lakets::config::Config;
use serde_json::{Value, json};

const TOKEN: &str = "dashboard-admin-token";

/// One HTTP/1.1 request; the status and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut out))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

async fn status_json(addr: SocketAddr) -> Value {
    let (code, body) = request(addr, "GET", "/api/status", &[], "").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `stock_ticks` as `lakets ingest` creates it, with a few rows; then the service over it:
/// the LVC, the Delta mirror, a minute rollup, an admin token, jobs on short intervals.
async fn service(
    db: &TestDb,
    delta: &std::path::Path,
    token_file: &std::path::Path,
) -> lakets::service::Service {
    let dbc = lakets::db::parse_config(&db.url).unwrap();
    let options = lakets::ingest::IngestOptions {
        profile: lakets::ingest::IngestProfile {
            symbols: 4,
            rate: 200,
            burst: false,
        },
        duration: Some(Duration::from_secs(1)),
        method: lakets::ingest::Method::Insert,
        progress: false,
    };
    lakets::ingest::run(&dbc, options, std::future::pending::<()>())
        .await
        .unwrap();
    let text = format!(
        r#"
[http]
listen = "127.0.0.1:0"
[grpc]
listen = "off"
admin_token_file = "{token}"
[jobs]
rollups_every = "1 second"
partitions_every = "30 seconds"
tiering_every = "1 hour"
retention_every = "1 hour"
[service]
flush_interval = "200 milliseconds"
[[tables]]
name = "stock_ticks"
time_column = "time"
chunk_interval = "1 hour"
[tables.lvc]
key = ["symbol"]
columns = ["price", "volume"]
[tables.sync]
to = "{delta}"
[[rollups]]
name = "ticks_1min"
source = "stock_ticks"
bucket = "1 minute"
group_by = ["symbol"]
aggregate = "ohlcv(price, volume)"
"#,
        token = token_file.display(),
        delta = delta.display(),
    );
    let mut config = Config::parse_with_env(&text, "test", &[]).unwrap();
    config.database.url = Some(db.url.clone());
    lakets::config::reconcile::reconcile(&dbc, &config)
        .await
        .unwrap();
    lakets::service::start(&config, dbc, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap()
}

/// Starts `lakets ingest` in this process, following the stored profile until `stop`.
fn ingest_in_background(
    db: &TestDb,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let dbc = lakets::db::parse_config(&db.url).unwrap();
    tokio::spawn(async move {
        let options = lakets::ingest::IngestOptions {
            profile: lakets::ingest::IngestProfile {
                symbols: 4,
                rate: 0,
                burst: false,
            },
            duration: None,
            method: lakets::ingest::Method::Insert,
            progress: false,
        };
        lakets::ingest::run(&dbc, options, stop.cancelled_owned())
            .await
            .unwrap();
    })
}

async fn rows(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM stock_ticks").await
}

/// The WAL the service has received up to now: written rows are in every figure, and
/// every operator has reported its position at an acknowledgement.
async fn caught_up(db: &TestDb, service: &lakets::service::Service) {
    let target = common::wal::lsn_now(db).await;
    let state = service.state.clone();
    wait_for(
        "the service receives the WAL written so far",
        Duration::from_secs(30),
        async || {
            let st = state.status.lock().unwrap();
            st.received_lsn >= target
                && st.operators.len() == 4
                && st.operator_lag_seconds.len() == 4
        },
    )
    .await;
}

/// Waits until the page's text at `selector` is `expected` (the page shows figures at
/// most a second or two old): the figure it settles on must be the database's.
async fn expect_text(page: &Browser, selector: &str, expected: &str) {
    let selector_json = serde_json::to_string(selector).unwrap();
    let expected_json = serde_json::to_string(expected).unwrap();
    let shown = format!("document.querySelector({selector_json})?.textContent");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if page.eval(&format!("{shown} === {expected_json}")).await == json!(true) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let got = page.eval(&shown).await;
            panic!("{selector} shows {got}, the database says {expected:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The page's figures are grouped by thousands.
fn grouped(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_answers_figures_and_refuses_bad_changes_with_reasons() {
    let db = fresh_db("dash_api").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let service = service(&db, &dir.path().join("delta"), &token_file).await;
    let addr = service.http_addr.unwrap();

    // Every series the alerts and the dashboards read is there before any event.
    let (_, scrape) = request(addr, "GET", "/metrics", &[], "").await;
    for series in [
        "lakets_wal_restarts_total ",
        "lakets_chunk_deferrals_total{reason=\"lagging\"} ",
        "lakets_wal_backpressure_waits_total{operator=\"delta\"} ",
        "lakets_job_runs_total{job_name=\"tiering\",outcome=\"failed\"} ",
        "lakets_object_store_requests_total{operation=\"put\",outcome=\"error\"} ",
    ] {
        assert!(scrape.contains(series), "{series} missing from:\n{scrape}");
    }

    caught_up(&db, &service).await;
    let status = status_json(addr).await;
    for key in [
        "chunks",
        "rollups",
        "lvc",
        "rows",
        "lag_seconds",
        "ingest",
        "jobs",
        "stream",
    ] {
        assert!(status.get(key).is_some(), "{key} missing: {status}");
    }
    assert_eq!(status["ingest"]["symbols"], 4, "{status}");
    assert_eq!(status["ingest"]["rows_per_second"], 200);
    assert_eq!(status["controls"]["token_required"], true);
    let operators = status["operators"].as_array().unwrap();
    assert_eq!(operators.len(), 4, "{status}");
    for o in operators {
        assert!(
            o["lag_seconds"].as_f64().is_some() && o["lag_bytes"].as_u64().is_some(),
            "{o}"
        );
    }
    let symbols: i64 = db
        .scalar("SELECT count(DISTINCT symbol) FROM stock_ticks")
        .await;
    assert_eq!(
        status["lvc"].as_object().unwrap().len() as i64,
        symbols,
        "{status}"
    );
    assert_eq!(status["rows"]["hot"], json!(rows(&db).await));

    let json_type = ("Content-Type", "application/json");
    let bearer = format!("Bearer {TOKEN}");
    let auth = ("Authorization", bearer.as_str());
    let stored = async || -> (i32, i64, bool) {
        let row = db
            .client
            .query_one(
                "SELECT symbols, rate, burst FROM lakets._ingest_profile",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let before = stored().await;
    for (headers, body, code, says) in [
        (
            vec![json_type],
            r#"{"rows_per_second": 10}"#,
            401,
            "needs a token",
        ),
        (
            vec![json_type, ("Authorization", "Bearer wrong")],
            r#"{"rows_per_second": 10}"#,
            401,
            "wrong token",
        ),
        (
            vec![auth],
            r#"{"rows_per_second": 10}"#,
            415,
            "Content-Type: application/json",
        ),
        (
            vec![json_type, auth, ("Origin", "http://evil.example")],
            r#"{"rows_per_second": 10}"#,
            403,
            "is refused",
        ),
        (
            vec![json_type, auth],
            r#"{"symbols": 0}"#,
            400,
            "symbols must be",
        ),
        (
            vec![json_type, auth],
            r#"{"rows_per_second": -5}"#,
            400,
            "rows_per_second must be",
        ),
        (
            vec![json_type, auth],
            r#"{"burst": "on"}"#,
            400,
            "burst must be true or false",
        ),
        (
            vec![json_type, auth],
            r#"{"rate": 10}"#,
            400,
            "unknown field",
        ),
        (vec![json_type, auth], r#"{"symbols": 2,"#, 400, "not JSON"),
        (vec![json_type, auth], r#"{}"#, 400, "nothing to change"),
    ] {
        let (got, answer) = request(addr, "POST", "/api/ingest", &headers, body).await;
        assert_eq!(got, code, "{body}: {answer}");
        let error: Value = serde_json::from_str(&answer).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
        assert_eq!(stored().await, before, "a refused change changes nothing");
    }
    // Any subset; the rest stays.
    let (code, answer) = request(
        addr,
        "POST",
        "/api/ingest",
        &[json_type, auth, ("Origin", &format!("http://{addr}"))],
        r#"{"rows_per_second": 750, "burst": true}"#,
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({"symbols": 4, "rows_per_second": 750, "burst": true})
    );
    assert_eq!(stored().await, (4, 750, true));
    let (code, answer) = request(addr, "GET", "/api/ingest", &[], "").await;
    assert_eq!(
        (code, answer.contains("\"rows_per_second\":750")),
        (200, true),
        "{answer}"
    );

    // The page and its assets come from the binary, with a policy that runs nothing else.
    let (code, page) = request(addr, "GET", "/", &[], "").await;
    assert_eq!(code, 200);
    assert!(page.contains("<script src=\"/dashboard.js\""), "{page}");
    for asset in ["/dashboard.js", "/dashboard.css"] {
        assert_eq!(request(addr, "GET", asset, &[], "").await.0, 200, "{asset}");
    }
    service.state.shutdown.cancel();
    service.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_shows_the_database_and_its_controls_steer_the_ingest() {
    if !browser::available() {
        return;
    }
    let db = fresh_db("dash_page").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let service = service(&db, &dir.path().join("delta"), &token_file).await;
    let addr = service.http_addr.unwrap();
    // The ingest follows the stored profile; it starts paused (0 rows/s).
    let stop_ingest = tokio_util::sync::CancellationToken::new();
    let ingest = ingest_in_background(&db, stop_ingest.clone());

    // Quiet: the ingest writes nothing, so every figure can be compared with the database.
    caught_up(&db, &service).await;
    wait_for(
        "a refresh takes the minute rollup's invalidations",
        Duration::from_secs(30),
        async || {
            let pending: i64 = db
                .scalar("SELECT count(*) FROM lakets._rollup_invalidation_log")
                .await;
            pending == 0
        },
    )
    .await;

    let page = Browser::launch(1400, 1700).await;
    page.navigate(&format!("http://{addr}/")).await;
    page.wait_for(
        "the page renders figures",
        "document.body.dataset.ready === 'true'",
        Duration::from_secs(20),
    )
    .await;

    expect_text(&page, "#stream-state", "streaming").await;
    let latest = db
        .client
        .query(
            "SELECT DISTINCT ON (symbol) symbol, price::text, volume::text FROM stock_ticks
              ORDER BY symbol, time DESC",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(latest.len(), 4);
    for row in &latest {
        let symbol: String = row.get(0);
        let cell =
            |column: &str| format!("#lvc tr[data-key=\"{symbol}\"] td[data-column=\"{column}\"]");
        expect_text(&page, &cell("price"), row.get::<_, &str>(1)).await;
        expect_text(&page, &cell("volume"), row.get::<_, &str>(2)).await;
    }
    for status in ["active", "tiered", "dropped"] {
        let in_catalog: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM lakets._chunk_metadata WHERE status = $1",
                &[&status],
            )
            .await
            .unwrap()
            .get(0);
        expect_text(&page, &format!("#chunks-{status}"), &grouped(in_catalog)).await;
    }
    // The watermark moves at each minute's end: read it again if it moved meanwhile.
    let watermark_cell =
        serde_json::to_string("#rollups tr[data-rollup=\"ticks_1min\"] td.watermark").unwrap();
    for attempt in 0.. {
        let watermark: Option<String> = db
            .scalar(
                "SELECT to_char(watermark AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'
                   FROM lakets._rollup_registry WHERE rollup_name = 'ticks_1min'",
            )
            .await;
        let expected =
            serde_json::to_string(&watermark.unwrap_or_else(|| "(none)".into())).unwrap();
        let shown = page
            .eval(&format!(
                "document.querySelector({watermark_cell}).textContent === {expected}"
            ))
            .await;
        if shown == json!(true) {
            break;
        }
        assert!(
            attempt < 50,
            "the page never showed the watermark {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    expect_text(
        &page,
        "#rollups tr[data-rollup=\"ticks_1min\"] td.pending",
        "0",
    )
    .await;
    let hot = rows(&db).await;
    expect_text(&page, "#rows-hot", &grouped(hot)).await;
    // Every hot row is in Delta, none dropped (the log is read every 3 s).
    expect_text(&page, "#rows-delta", &grouped(hot)).await;

    // The controls: 6 symbols at 400 rows/s, with the admin token the page asks for.
    assert_eq!(
        page.eval("!document.getElementById('token-row').classList.contains('hidden')")
            .await,
        json!(true),
        "the page asks for the admin token"
    );
    let before = rows(&db).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&db).await, before, "paused: nothing written");
    page.type_into("#ctl-symbols", "6").await;
    page.type_into("#ctl-rate", "400").await;
    page.type_into("#ctl-token", TOKEN).await;
    page.click("#ctl-apply").await;
    page.wait_for(
        "the change is confirmed",
        "document.getElementById('ctl-message').className === 'ok'",
        Duration::from_secs(10),
    )
    .await;
    let (symbols, rate): (i32, i64) = {
        let row = db
            .client
            .query_one("SELECT symbols, rate FROM lakets._ingest_profile", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((symbols, rate), (6, 400));
    // The ingest polls the profile every second; measure over four seconds after that.
    // (A loose bound: two shared cores also run PostgreSQL, the service and Chromium.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = rows(&db).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let measured = (rows(&db).await - start) as f64 / 4.0;
    assert!(
        measured > 150.0,
        "the ingest follows the change: {measured:.0} rows/s, want ~400"
    );
    page.wait_for(
        "the page shows the new rate and the sixth symbol",
        "Number(document.getElementById('ingest-rate').textContent.replace(/,/g, '')) > 100 \
         && document.querySelectorAll('#lvc tbody tr').length === 6",
        Duration::from_secs(15),
    )
    .await;

    let errors = page.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    let shot = page.screenshot().await;
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    if let Ok(path) = std::env::var("LAKETS_DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, &shot).unwrap();
    }
    drop(page);
    stop_ingest.cancel();
    ingest.await.unwrap();
    service.state.shutdown.cancel();
    service.wait().await.unwrap();
}

/// The README's screenshot: the running demo after a minute, at `docs/dashboard.png`.
/// `cargo test --test integration screenshot_of_the_demo -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/dashboard.png from a demo run; run by hand"]
async fn screenshot_of_the_demo() {
    use std::io::BufRead;
    assert!(browser::available(), "the screenshot needs chromium");
    let data = tempfile::tempdir().unwrap();
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_lakets"))
        .args([
            "demo",
            "--duration",
            "5 minutes",
            "--rate",
            "400",
            "--data-dir",
        ])
        .arg(data.path())
        .env("LAKETS_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("Dashboard:")
                .map(|u| u.split_whitespace().next().unwrap().to_string())
        })
        .expect("the demo prints its dashboard's address");
    // The demo keeps printing: a closed pipe would stop it.
    std::thread::spawn(move || lines.for_each(drop));
    let page = Browser::launch(1400, 1250).await;
    page.navigate(&url).await;
    page.wait_for(
        "figures",
        "document.body.dataset.ready === 'true'",
        Duration::from_secs(30),
    )
    .await;
    // Let the charts fill and a few refreshes pass.
    tokio::time::sleep(Duration::from_secs(90)).await;
    let shot = page.screenshot().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/dashboard.png");
    std::fs::write(path, shot).unwrap();
    // Ctrl-C: the demo stops its embedded cluster and removes it.
    unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
    let _ = demo.wait();
}
