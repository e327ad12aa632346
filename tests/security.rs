//! No one in where they don't belong: what another role can do to lakets, tried.
//!
//! - Functions and operators shadowed in schema `public` (and a database search_path that
//!   puts it first) never run inside lakets' SQL: conversion, LVC, sync, rollup create and
//!   refresh, the service streaming, tiering, retention, verify; nor in the views lakets
//!   creates, when the user reads them.
//! - A 300 MB logical message from another role and forged lakets messages change nothing,
//!   do not stop the stream, and pass in bounded memory; a row too large to hold stops the
//!   stream with an error naming its table.
//! - The gRPC API: a listener beyond loopback needs a token and TLS (or an explicit
//!   opt-in), the cache can require a read token, and stalled subscribers of a large cache
//!   keep the service's memory bounded while the stream goes on.
//!
//! Its own test binary, so that no other test moves the process's RSS it measures.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::wal::{lsn_now, wait_for, wait_until_confirmed};
use common::{TestDb, fresh_db};
use lakets::grpc::proto;
use lakets::wal::{PipelineConfig, SourceSettings};
use tokio_util::sync::CancellationToken;

/// One pipeline (and one measure of this process's memory) at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lakets(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakets"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("PGPASSWORD")
        .env("LAKETS_DATABASE_URL", &db.url)
        .env("LAKETS_LOG", "warn");
    cmd
}

#[track_caller]
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn run(db: &TestDb, args: &[&str]) -> String {
    ok(lakets(db).args(args).output().unwrap())
}

/// Shadows of what lakets' SQL calls, created by a role that may create objects in
/// `public`; each records in `public.shadow_log` that it ran.
const SHADOWS: &str = r#"
CREATE TABLE public.shadow_log (fn text NOT NULL, at timestamptz NOT NULL DEFAULT pg_catalog.now());
GRANT INSERT, SELECT ON public.shadow_log TO PUBLIC;
CREATE FUNCTION public.shadow_hit(fn text) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO public.shadow_log (fn) VALUES (fn) $$;
CREATE FUNCTION public.shadow_agg(state double precision[], v double precision)
  RETURNS double precision[] LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('array_agg'); RETURN pg_catalog.array_append(state, v); END $$;
CREATE AGGREGATE public.array_agg(double precision)
  (sfunc = public.shadow_agg, stype = double precision[], initcond = '{}');
CREATE FUNCTION public.shadow_max(state double precision, v double precision)
  RETURNS double precision LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('max'); RETURN pg_catalog.float8larger(state, v); END $$;
CREATE AGGREGATE public.max(double precision) (sfunc = public.shadow_max, stype = double precision);
CREATE AGGREGATE public.min(double precision) (sfunc = public.shadow_max, stype = double precision);
CREATE FUNCTION public.shadow_count(state bigint) RETURNS bigint LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('count'); RETURN state + 1; END $$;
CREATE AGGREGATE public.count(*) (sfunc = public.shadow_count, stype = bigint, initcond = '0');
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('now'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION public.date_bin(interval, timestamptz, timestamptz) RETURNS timestamptz
  LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('date_bin'); RETURN pg_catalog.date_bin($1, $2, $3); END $$;
CREATE FUNCTION public.pg_current_wal_insert_lsn() RETURNS pg_lsn LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('pg_current_wal_insert_lsn'); RETURN pg_catalog.pg_current_wal_insert_lsn(); END $$;
CREATE FUNCTION public.hashtext(text) RETURNS integer LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('hashtext'); RETURN pg_catalog.hashtext($1); END $$;
CREATE FUNCTION public.format_type(oid, integer) RETURNS text LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('format_type'); RETURN pg_catalog.format_type($1, $2); END $$;
CREATE FUNCTION public.pg_logical_emit_message(boolean, text, text) RETURNS pg_lsn LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('pg_logical_emit_message'); RETURN pg_catalog.pg_logical_emit_message($1, $2, $3); END $$;
CREATE FUNCTION public.shadow_texteq(text, text) RETURNS boolean LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('= text'); RETURN pg_catalog.texteq($1, $2); END $$;
CREATE OPERATOR public.= (leftarg = text, rightarg = text, function = public.shadow_texteq);
CREATE FUNCTION public.shadow_float8div(double precision, double precision)
  RETURNS double precision LANGUAGE plpgsql
  AS $$ BEGIN PERFORM public.shadow_hit('/ float8'); RETURN pg_catalog.float8div($1, $2); END $$;
CREATE OPERATOR public./ (leftarg = double precision, rightarg = double precision,
                          function = public.shadow_float8div);
"#;

async fn shadow_hits(db: &TestDb) -> Vec<String> {
    db.client
        .query(
            "SELECT fn || ' x' || pg_catalog.count(*) FROM public.shadow_log GROUP BY fn ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_and_operators_shadowed_in_public_never_run_as_lakets() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("sec_shadow").await;
    db.exec(&format!(
        "CREATE ROLE mallory LOGIN PASSWORD '{}';
         GRANT CREATE, USAGE ON SCHEMA public TO mallory;",
        common::ROLE_PASSWORD
    ))
    .await;
    let mallory = common::user_connect(&common::url_as(&db.url, "mallory")).await;
    mallory.batch_execute(SHADOWS).await.unwrap();
    // The database owner puts public first: now even exact built-ins are shadowed.
    db.exec(&format!(
        "ALTER DATABASE {} SET search_path = public, pg_catalog",
        db.name
    ))
    .await;
    // A session on the database's path, as the application has it; the test's own
    // bookkeeping runs on a clean one.
    let victim = common::user_connect(&db.url).await;
    db.client = common::user_connect(&db.url).await;
    // (pg_catalog, not named, is searched first for functions; tables go to public.)
    db.exec("SET search_path = public").await;
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price double precision,
                             volume bigint, PRIMARY KEY (symbol, time));
         INSERT INTO ticks SELECT pg_catalog.now() - i * interval '1 minute', 'S' || (i % 3), i, i
           FROM generate_series(1, 300) i;",
    )
    .await;
    // The shadows work: a session on the database's path runs them.
    victim
        .batch_execute(
            "SELECT array_agg(price), max(price), count(*), now(), 'a'::text = 'b', 1.0::float8 / 2 FROM ticks",
        )
        .await
        .unwrap();
    let sanity = shadow_hits(&db).await;
    assert!(
        ["array_agg", "max", "count", "now", "= text", "/ float8"]
            .iter()
            .all(|f| sanity.iter().any(|h| h.starts_with(f))),
        "the shadows did not run for a user session: {sanity:?}"
    );
    db.exec("TRUNCATE public.shadow_log").await;

    // Everything lakets does, as lakets.
    let lake = tempfile::tempdir().unwrap();
    run(&db, &["init"]);
    run(
        &db,
        &[
            "chronotable",
            "create",
            "ticks",
            "--time-column",
            "time",
            "--chunk-interval",
            "1 hour",
        ],
    );
    run(
        &db,
        &[
            "lvc",
            "enable",
            "ticks",
            "--key",
            "symbol",
            "--columns",
            "price",
        ],
    );
    run(
        &db,
        &[
            "sync",
            "enable",
            "ticks",
            "--to",
            lake.path().join("t").to_str().unwrap(),
        ],
    );
    run(
        &db,
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
            "ohlcv(price, volume), max(price), min(price), avg(price), count(*)",
        ],
    );
    run(
        &db,
        &[
            "rollup",
            "create",
            "ticks_1h",
            "--source",
            "ticks_1min",
            "--bucket",
            "1 hour",
            "--group-by",
            "symbol",
            "--aggregate",
            "ohlcv(price, volume), avg(price)",
        ],
    );
    run(
        &db,
        &[
            "policy",
            "set",
            "ticks",
            "--tier-after",
            "2 hours",
            "--drop-after",
            "3 hours",
        ],
    );
    let config = lake.path().join("lakets.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"off\"\n[grpc]\nlisten = \"off\"\n[jobs]\nenabled = false\n\
         [service]\nflush_interval = \"200 milliseconds\"\n",
    )
    .unwrap();
    let mut service = lakets(&db)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    db.exec(
        "INSERT INTO ticks SELECT pg_catalog.now() + i * interval '1 ms', 'S' || (i % 3), i, i FROM generate_series(1, 50) i;
         UPDATE ticks SET price = price + 1 WHERE symbol = 'S1';
         DELETE FROM ticks WHERE symbol = 'S2' AND volume < 10;",
    )
    .await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let end = lsn_now(&db).await;
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(60)).await;
    run(&db, &["rollup", "refresh"]);
    run(&db, &["tier", "--json"]);
    run(&db, &["retention", "--json"]);
    run(&db, &["verify", "ticks"]);
    run(&db, &["status"]);
    unsafe {
        libc::kill(service.id() as i32, libc::SIGTERM);
    }
    assert!(service.wait().unwrap().success());
    let dropped: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE status = 'dropped'")
        .await;
    assert!(dropped > 0, "tiering and retention ran through the gate");
    assert_eq!(
        shadow_hits(&db).await,
        Vec::<String>::new(),
        "a shadow ran as lakets"
    );
    // The views lakets created bound pg_catalog's functions: a user reading them on the
    // shadowing path runs none of the shadows either.
    victim
        .batch_execute(
            "SELECT * FROM ticks_1min_realtime; SELECT * FROM ticks_1h_realtime;
             SELECT * FROM lakets.lvc_ticks",
        )
        .await
        .unwrap();
    assert_eq!(
        shadow_hits(&db).await,
        Vec::<String>::new(),
        "a view lakets made runs a shadow"
    );
}

/// A pipeline with every operator on the test's database, in this process.
fn start_pipeline(
    db: &TestDb,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<lakets::Result<()>>,
    String,
) {
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let mut config = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
    config.flush_interval = Duration::from_millis(100);
    config.ack_interval = Duration::from_millis(100);
    config.heartbeat_interval = Some(Duration::from_millis(300));
    let stop = CancellationToken::new();
    let db_config = db.config();
    let status = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let run = tokio::spawn({
        let stop = stop.clone();
        async move {
            lakets::service::standard_pipeline(&db_config, config, status, None)
                .await?
                .run(stop)
                .await
        }
    });
    (stop, run, slot)
}

fn clear_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_message_and_forged_ones_from_another_role_change_nothing() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("sec_messages").await;
    let lake = tempfile::tempdir().unwrap();
    common::synced_ticks(&mut db, lake.path(), Some(2)).await;
    common::lvc_and_minute_rollup(&mut db).await;
    db.exec(&format!(
        "CREATE ROLE eve LOGIN PASSWORD '{}'",
        common::ROLE_PASSWORD
    ))
    .await;
    let eve = common::user_connect(&common::url_as(&db.url, "eve")).await;
    let (stop, run, slot) = start_pipeline(&db);
    wait_for("the stream to start", Duration::from_secs(30), async || {
        db.scalar::<Option<bool>>(&format!(
            "SELECT (SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}')"
        ))
        .await
            == Some(true)
    })
    .await;

    // 300 MB in one message (pgoutput sends it as one frame).
    clear_peak_rss();
    let before = common::peak_rss_bytes();
    eve.execute(
        "SELECT pg_logical_emit_message(true, 'eve', repeat('x', 300 * 1024 * 1024))",
        &[],
    )
    .await
    .unwrap();
    // Oversized with lakets' own prefix, and with a prefix longer than the head lakets
    // reads of an oversized frame: skipped as well, not a reason to stop.
    for sql in [
        "SELECT pg_logical_emit_message(true, 'lakets', repeat('1', 70 * 1024 * 1024))",
        "SELECT pg_logical_emit_message(true, repeat('p', 400), repeat('x', 70 * 1024 * 1024))",
    ] {
        eve.execute(sql, &[]).await.unwrap();
    }
    // Forged announcements: an id lakets wrote (from another transaction), garbage, and a
    // payload in the message itself.
    let real_id: i64 = db.scalar("SELECT max(id) FROM lakets._announcements").await;
    for content in [
        real_id.to_string(),
        "not-a-number".to_owned(),
        r#"{"kind":"sync_disabled","table":{"schema":"public","name":"ticks"}}"#.to_owned(),
    ] {
        eve.execute(
            "SELECT pg_logical_emit_message(true, 'lakets', $1::text)",
            &[&content],
        )
        .await
        .unwrap();
    }
    db.exec("INSERT INTO ticks VALUES (now() + interval '1 ms', 'AFTER', 1)")
        .await;
    let end = lsn_now(&db).await;
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(120)).await;
    assert!(!run.is_finished(), "the stream went on");
    let grown = common::peak_rss_bytes().saturating_sub(before);
    eprintln!(
        "a 300 MB message and two of 70 MB raised peak RSS by {} MiB",
        grown >> 20
    );
    assert!(
        grown < 100 << 20,
        "passing a 300 MB message raised peak RSS by {} MiB",
        grown >> 20
    );
    // Still mirrored, cached and invalidated: verify passes.
    stop.cancel();
    run.await.unwrap().unwrap();
    lakets::rollup::refresh::refresh(&mut db.client, None, true, true)
        .await
        .unwrap();
    let report = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    assert!(report.ok, "{:?}", report.differences);
    let synced: i64 = db
        .scalar("SELECT count(*) FROM lakets._sync_registry")
        .await;
    assert_eq!(synced, 1);
    assert!(
        common::delta_rows_in(
            &lakets::sync::find_sync(
                &db.client,
                &lakets::ident::TableName::new("public", "ticks")
            )
            .await
            .unwrap()
            .unwrap()
            .location,
            i64::MIN,
            i64::MAX
        )
        .await
            > 600,
        "the row after the messages reached Delta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_to_hold_stops_the_stream_naming_its_table() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("sec_big_row").await;
    let lake = tempfile::tempdir().unwrap();
    common::synced_ticks(&mut db, lake.path(), Some(2)).await;
    db.exec("ALTER TABLE ticks ADD COLUMN note text").await;
    let (_stop, run, slot) = start_pipeline(&db);
    // 80 MB of incompressible text in one row (over the 64 MiB per message lakets holds).
    db.exec(
        "INSERT INTO ticks SELECT now(), 'BIG', 1, string_agg(md5(i::text), '')
           FROM generate_series(1, 2600000) i",
    )
    .await;
    let err = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the stream stopped")
        .unwrap()
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, lakets::Error::Unsupported(_)), "{err:?}");
    assert!(
        text.contains("public.ticks") && text.contains("MiB"),
        "{text}"
    );
    assert!(!lakets::wal::pipeline::is_retryable(&err));
    // Nothing from the row on is acknowledged.
    let confirmed = common::wal::slot_confirmed(&db.client, &slot).await;
    assert!(confirmed < lsn_now(&db).await);
}

async fn service_with(
    db: &TestDb,
    grpc: &str,
    env: &[(&str, &str)],
) -> lakets::Result<(lakets::service::Service, CancellationToken)> {
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[jobs]\nenabled = false\n\
         [service]\nflush_interval = \"200 milliseconds\"\n[grpc]\n{grpc}\n"
    );
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut config = lakets::config::Config::parse_with_env(&text, "test", &vars).unwrap();
    config.database.url = Some(db.url.clone());
    let cancel = CancellationToken::new();
    let service =
        lakets::service::start(&config, config.database_config().unwrap(), cancel.clone()).await?;
    Ok((service, cancel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_listener_beyond_loopback_needs_a_token_and_tls() {
    let _serial = SERIAL.lock().await;
    let db = fresh_db("sec_listeners").await;
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("admin");
    std::fs::write(&token, "admin-s3cret\n").unwrap();
    let err = service_with(&db, "listen = \"0.0.0.0:0\"", &[])
        .await
        .err()
        .expect("refused without a token");
    assert!(err.to_string().contains("no admin token"), "{err}");
    let with_token = format!(
        "listen = \"0.0.0.0:0\"\nadmin_token_file = \"{}\"",
        token.display()
    );
    let err = service_with(&db, &with_token, &[])
        .await
        .err()
        .expect("refused without TLS");
    assert!(err.to_string().contains("without TLS"), "{err}");
    // The explicit opt-in for a trusted network.
    let (service, cancel) =
        service_with(&db, &format!("{with_token}\nallow_plaintext = true"), &[])
            .await
            .unwrap();
    assert!(service.grpc_addr.unwrap().ip().is_unspecified());
    cancel.cancel();
    let _ = service.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_takes_a_read_token_and_stalled_subscribers_stay_bounded() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("sec_subscribers").await;
    // 100,000 keys in the cache.
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price double precision);
         INSERT INTO ticks SELECT now() - interval '1 minute', 'K' || i, i FROM generate_series(1, 100000) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    lakets::lvc::enable_lvc(
        &mut db.client,
        "ticks",
        &["symbol".into()],
        &["price".into()],
    )
    .await
    .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let read_token = secrets.path().join("read-token");
    std::fs::write(&read_token, "reader-s3cret\n").unwrap();
    let (service, cancel) = service_with(
        &db,
        &format!(
            "listen = \"127.0.0.1:0\"\nmax_subscribers = 40\nread_token_file = \"{}\"",
            read_token.display()
        ),
        &[],
    )
    .await
    .unwrap();
    let url = format!("http://{}", service.grpc_addr.unwrap());
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let get = |token: Option<&str>| {
        let mut request = tonic::Request::new(proto::GetRequest {
            table: "ticks".into(),
            key: Some(proto::Key {
                values: vec!["K1".into()],
            }),
        });
        if let Some(t) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        request
    };
    let mut lvc = proto::last_value_cache_client::LastValueCacheClient::new(channel.clone());
    let err = lvc.get(get(None)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = lvc.get(get(Some("guess"))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    wait_for("the cache to load", Duration::from_secs(30), async || {
        lvc.get(get(Some("reader-s3cret")))
            .await
            .is_ok_and(|r| r.into_inner().value.is_some())
    })
    .await;
    // A BatchGet of every key is served a page at a time.
    let mut request = tonic::Request::new(proto::BatchGetRequest {
        table: "ticks".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer reader-s3cret".parse().unwrap());
    let page = lvc.batch_get(request).await.unwrap().into_inner();
    assert_eq!(page.values.len(), 10_000);
    assert!(!page.next_page_token.is_empty());

    // 40 subscribers to every key that never read, each on its own connection; the 41st
    // is refused.
    clear_peak_rss();
    let before = common::peak_rss_bytes();
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = proto::last_value_cache_client::LastValueCacheClient::new(channel);
        let mut request = tonic::Request::new(proto::SubscribeRequest {
            table: "ticks".into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", "Bearer reader-s3cret".parse().unwrap());
        stalled.push(client.subscribe(request).await.unwrap().into_inner());
    }
    let mut request = tonic::Request::new(proto::SubscribeRequest {
        table: "ticks".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer reader-s3cret".parse().unwrap());
    let err = lvc.subscribe(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // The stream goes on: a change reaches the cache while they stall.
    db.exec("UPDATE ticks SET price = -1 WHERE symbol = 'K7'")
        .await;
    let started = Instant::now();
    loop {
        let mut request = get(Some("reader-s3cret"));
        request.get_mut().key = Some(proto::Key {
            values: vec!["K7".into()],
        });
        let v = lvc.get(request).await.unwrap().into_inner().value.unwrap();
        if v.values["price"] == "-1" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the stream stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = common::peak_rss_bytes().saturating_sub(before);
    eprintln!(
        "40 stalled subscribers raised peak RSS by {} MiB",
        grown >> 20
    );
    assert!(
        grown < 200 << 20,
        "40 stalled subscribers of 100,000 keys raised peak RSS by {} MiB",
        grown >> 20
    );
    drop(stalled);
    cancel.cancel();
    let _ = service.wait().await;
}

/// `deploy/postgresql/grants.sql`, hardened (`-v harden=1`): the role it makes runs every
/// part of lakets, and other roles can no longer put messages into the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privilege_role_of_grants_sql_runs_lakets_hardened() {
    let _serial = SERIAL.lock().await;
    let db = common::fresh_empty_db("sec_grants").await;
    db.exec(
        "CREATE TABLE public.ticks (time timestamptz NOT NULL, symbol text NOT NULL, price float8);
         INSERT INTO public.ticks SELECT now() - i * interval '1 minute', 'S' || (i % 3), i
           FROM generate_series(1, 100) i;",
    )
    .await;
    let secrets = tempfile::tempdir().unwrap();
    let password = secrets.path().join("db-password");
    std::fs::write(&password, format!("{}\n", common::ROLE_PASSWORD)).unwrap();
    let pg = common::cluster();
    let psql = ["/usr/bin/psql", "psql"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .expect("psql is installed with the server");
    let out = Command::new(psql)
        .arg(pg.display_url(&db.name))
        .env("PGPASSFILE", pg.pgpass_file())
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "tables=public.ticks",
            "-v",
            "harden=1",
        ])
        .arg("-v")
        .arg(format!("lakets_password_file={}", password.display()))
        .args([
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/postgresql/grants.sql"),
        ])
        .output()
        .unwrap();
    let printed = ok(out);
    assert!(printed.contains("grants.sql: done"), "{printed}");
    assert!(
        !printed.contains(common::ROLE_PASSWORD),
        "the password was echoed: {printed}"
    );

    // lakets as that role: install, convert, cache, sync, stream, verify.
    let as_lakets = TestDb {
        name: db.name.clone(),
        url: common::url_as(&db.url, "lakets"),
        client: common::user_connect(&db.url).await,
    };
    let lake = tempfile::tempdir().unwrap();
    run(&as_lakets, &["init"]);
    run(
        &as_lakets,
        &[
            "chronotable",
            "create",
            "ticks",
            "--time-column",
            "time",
            "--chunk-interval",
            "1 hour",
        ],
    );
    run(
        &as_lakets,
        &[
            "lvc",
            "enable",
            "ticks",
            "--key",
            "symbol",
            "--columns",
            "price",
        ],
    );
    run(
        &as_lakets,
        &[
            "sync",
            "enable",
            "ticks",
            "--to",
            lake.path().join("t").to_str().unwrap(),
        ],
    );
    let config = lake.path().join("lakets.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"off\"\n[grpc]\nlisten = \"off\"\n[jobs]\nenabled = false\n\
         [service]\nflush_interval = \"200 milliseconds\"\n",
    )
    .unwrap();
    let mut service = lakets(&as_lakets)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    db.exec("INSERT INTO public.ticks VALUES (now(), 'LIVE', 1)")
        .await;
    let end = lsn_now(&db).await;
    wait_until_confirmed(
        &db.client,
        &lakets::wal::slot::default_slot_name(&db.name),
        end,
        Duration::from_secs(60),
    )
    .await;
    run(&as_lakets, &["verify", "ticks"]);
    unsafe {
        libc::kill(service.id() as i32, libc::SIGTERM);
    }
    assert!(service.wait().unwrap().success());

    // Hardened: another role may not emit messages, nor create in public.
    db.exec(&format!(
        "CREATE ROLE intruder LOGIN PASSWORD '{}'",
        common::ROLE_PASSWORD
    ))
    .await;
    let intruder = common::user_connect(&common::url_as(&db.url, "intruder")).await;
    let err = intruder
        .execute("SELECT pg_logical_emit_message(true, 'lakets', '1')", &[])
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("42501"), "{err:?}");
    let err = intruder
        .batch_execute("CREATE TABLE public.x (v int)")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("42501"), "{err:?}");
}
