//! TLS to PostgreSQL, against a CA this test creates: the server (this binary's own
//! cluster) takes only TLS connections with a SCRAM password for the role `tls_user`. The
//! CLI and the WAL pipeline connect with `sslmode=verify-full`; an untrusted CA, a host
//! name the certificate does not carry, and a plaintext attempt are each refused with an
//! error that says so. Both kinds of connection (SQL and walsender) are checked to be
//! encrypted on the server side, in `pg_stat_ssl`. The service's gRPC API serves TLS with
//! a certificate from the same CA (and server reflection over it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::wal::wait_until_confirmed;
use common::{TestDb, cluster, fresh_db};
use lakets::delta::schema::Partitioning;
use lakets::operators::delta_sink::DeltaSink;
use lakets::wal::lsn::Lsn;
use lakets::wal::source::WalSource;
use lakets::wal::{PipelineConfig, SourceSettings};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "s3cret-över-tls";

/// The trusted CA's certificate and one from a CA the server never used.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    /// The server certificate (for `localhost`) and its key, also for gRPC.
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn make_ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

/// Makes the CA and the server certificate (for `localhost` only: 127.0.0.1 is not in
/// it), turns TLS on, and lets `tls_user` in only over TLS. Once per test binary.
async fn pki() -> &'static Pki {
    static PKI: OnceCell<Pki> = OnceCell::const_new();
    PKI.get_or_init(|| async {
        let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ca_params, ca_key, ca_pem) = make_ca("lakets test CA");
        let (_, _, other_pem) = make_ca("some other CA");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let server_key_pair = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_pem = server.signed_by(&server_key_pair, &issuer).unwrap().pem();

        let ca = dir.path().join("ca.pem");
        let other_ca = dir.path().join("other-ca.pem");
        let server_cert = dir.path().join("server.crt");
        let server_key = dir.path().join("server.key");
        std::fs::write(&ca, ca_pem).unwrap();
        std::fs::write(&other_ca, other_pem).unwrap();
        std::fs::write(&server_cert, &server_pem).unwrap();
        std::fs::write(&server_key, server_key_pair.serialize_pem()).unwrap();

        // The server reads its key as its own OS user, and insists on mode 0600.
        let data = pg.root_dir().join("data");
        let owner = std::fs::metadata(&data).unwrap();
        for (name, text) in [
            ("server.crt", server_pem),
            ("server.key", server_key_pair.serialize_pem()),
        ] {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap();
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // The harness' own superuser keeps trust on loopback; tls_user gets TLS or nothing.
        let hba = data.join("pg_hba.conf");
        let mut rules = String::from(
            "hostssl all tls_user 127.0.0.1/32 scram-sha-256\n\
             host    all tls_user 127.0.0.1/32 reject\n",
        );
        rules.push_str(&std::fs::read_to_string(&hba).unwrap());
        std::fs::write(&hba, rules).unwrap();

        let admin = lakets::db::connect(&pg.url("postgres")).await.unwrap();
        for statement in [
            "ALTER SYSTEM SET ssl = on".to_owned(),
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'".to_owned(),
            "ALTER SYSTEM SET ssl_key_file = 'server.key'".to_owned(),
            format!("CREATE ROLE tls_user LOGIN SUPERUSER REPLICATION PASSWORD '{PASSWORD}'"),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        // The reload is asynchronous: wait until tls_user gets in over TLS.
        let probe = lakets::db::parse_config(&format!(
            "postgres://tls_user@127.0.0.1:{}/postgres?sslmode=require",
            pg.port()
        ))
        .unwrap();
        let mut probe = probe;
        probe.password(PASSWORD);
        let mut attempts = 0;
        while let Err(e) = lakets::db::connect_with(&probe).await {
            attempts += 1;
            assert!(attempts < 100, "TLS never came up: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Pki {
            _dir: dir,
            ca,
            other_ca,
            server_cert,
            server_key,
        }
    })
    .await
}

/// A URL for `tls_user` on `db`'s database (the password is in the URL, as it would be in
/// LAKETS_DATABASE_URL, never on a command line).
fn url(db: &TestDb, host: &str, params: &str) -> String {
    format!(
        "postgres://tls_user:{}@{host}:{}/{}?{params}",
        PASSWORD.replace('ö', "%C3%B6"),
        cluster().port(),
        db.name
    )
}

fn verify_full(db: &TestDb, ca: &Path) -> String {
    url(
        db,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    )
}

fn lakets(url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lakets"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("PGPASSWORD")
        .env("LAKETS_DATABASE_URL", url)
        .env("LAKETS_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lakets {args:?}: {text}");
    text
}

/// `backend_type` and `ssl` of every session of `tls_user` on `db`.
async fn sessions(db: &TestDb) -> Vec<(String, bool)> {
    db.client
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.usename = 'tls_user' AND a.datname = $1 ORDER BY 1",
            &[&db.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_pipeline_connect_with_verify_full_and_stream_encrypted() {
    let pki = pki().await;
    let db = fresh_db("tls_stream").await;
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price float8);
         INSERT INTO ticks SELECT now() - i * interval '1 minute', 'S' || (i % 3), i FROM generate_series(1, 50) i;",
    )
    .await;
    let secure = verify_full(&db, &pki.ca);
    lakets(&secure, &["init"]);
    lakets(
        &secure,
        &[
            "chronotable",
            "create",
            "ticks",
            "--time-column",
            "time",
            "--chunk-interval",
            "1 day",
        ],
    );
    let lake = tempfile::tempdir().unwrap();
    let location = lake.path().join("ticks");
    lakets(
        &secure,
        &[
            "sync",
            "enable",
            "ticks",
            "--to",
            location.to_str().unwrap(),
        ],
    );

    let config = lakets::db::parse_config(&secure).unwrap();
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let sink = DeltaSink::new(lakets::db::connect_with(&config).await.unwrap(), &slot)
        .await
        .unwrap();
    let mut pipeline = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
    pipeline.flush_interval = Duration::from_millis(100);
    pipeline.ack_interval = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        lakets::operators::pipeline(config, pipeline)
            .operator(sink)
            .run(shutdown.clone()),
    );
    db.exec("INSERT INTO ticks SELECT now(), 'NEW', i FROM generate_series(1, 25) i")
        .await;
    let end: Lsn = db
        .scalar::<String>("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .parse()
        .unwrap();
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(60)).await;

    let seen = sessions(&db).await;
    assert!(
        seen.iter().any(|(kind, _)| kind == "walsender"),
        "no walsender of tls_user: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, ssl)| *ssl),
        "a session of tls_user is not encrypted: {seen:?}"
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let delta = lakets::delta::table::open(&url::Url::from_directory_path(&location).unwrap())
        .await
        .unwrap()
        .unwrap();
    let shape = lakets::delta::mirror::shape_of(&delta, "time", Partitioning::Day).unwrap();
    let rows = lakets::delta::read::scan(&delta, &shape).await.unwrap();
    assert_eq!(rows.len(), 75, "the copy and the streamed rows reach Delta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_wrong_names_and_plaintext_are_refused() {
    let pki = pki().await;
    let db = fresh_db("tls_refused").await;
    let mut settings = SourceSettings::new("no_such_slot", "lakets");
    settings.connect_timeout = Duration::from_secs(2);

    // A CA the server's certificate does not chain to.
    let untrusted = lakets::db::parse_config(&verify_full(&db, &pki.other_ca)).unwrap();
    let err = lakets::db::connect_with(&untrusted)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sslmode=verify-full") && err.contains("UnknownIssuer"),
        "{err}"
    );
    let err = WalSource::start(&untrusted, &settings)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("replication connection") && err.contains("UnknownIssuer"),
        "{err}"
    );

    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca
    // (chain only) accepts.
    let by_address = |mode: &str| {
        lakets::db::parse_config(&url(
            &db,
            "127.0.0.1",
            &format!("sslmode={mode}&sslrootcert={}", pki.ca.display()),
        ))
        .unwrap()
    };
    let err = lakets::db::connect_with(&by_address("verify-full"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not valid for name \"127.0.0.1\""), "{err}");
    let err = WalSource::start(&by_address("verify-full"), &settings)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("replication connection") && err.contains("not valid for name \"127.0.0.1\""),
        "{err}"
    );
    let client = lakets::db::connect_with(&by_address("verify-ca"))
        .await
        .unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);

    // require encrypts without checking; disable is turned away by the server's rules.
    let require = lakets::db::parse_config(&url(&db, "127.0.0.1", "sslmode=require")).unwrap();
    lakets::db::connect_with(&require).await.unwrap();
    let plain = lakets::db::parse_config(&url(&db, "127.0.0.1", "sslmode=disable")).unwrap();
    let err = lakets::db::connect_with(&plain)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no encryption") && err.contains("sslmode=disable"),
        "{err}"
    );

    // The CLI says the same, and does not print the password it was given.
    let out = Command::new(env!("CARGO_BIN_EXE_lakets"))
        .arg("init")
        .env_remove("DATABASE_URL")
        .env("LAKETS_DATABASE_URL", verify_full(&db, &pki.other_ca))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_api_serves_tls_and_reflection() {
    use lakets::grpc::proto;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let pki = pki().await;
    let db = fresh_db("tls_grpc").await;
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price float8);
         INSERT INTO ticks VALUES (now(), 'A', 1.5);",
    )
    .await;
    let text = format!(
        r#"
[http]
listen = "off"
[grpc]
listen = "127.0.0.1:0"
tls_cert_file = "{}"
tls_key_file = "{}"
[jobs]
enabled = false
[[tables]]
name = "ticks"
time_column = "time"
chunk_interval = "1 hour"
[tables.lvc]
key = ["symbol"]
columns = ["price"]
"#,
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let mut config = lakets::config::Config::parse_with_env(&text, "test", &[]).unwrap();
    config.database.url = Some(db.url.clone());
    let dbc = config.database_config().unwrap();
    lakets::config::reconcile::reconcile(&dbc, &config)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let service = lakets::service::start(&config, dbc, cancel.clone())
        .await
        .unwrap();
    let addr = service.grpc_addr.unwrap();
    let tls = |ca: &Path| {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
            .domain_name("localhost")
    };

    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls(&pki.ca))
        .unwrap()
        .connect()
        .await
        .expect("a TLS client trusting the CA connects");
    let status = proto::admin_client::AdminClient::new(channel.clone())
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.slot, lakets::wal::slot::default_slot_name(&db.name));

    // Reflection, over the same TLS channel: a client discovers the services.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert!(
        names.contains(&"lakets.v1.Admin".to_owned())
            && names.contains(&"lakets.v1.LastValueCache".to_owned()),
        "{names:?}"
    );

    // Plaintext, and a client that does not trust the server's CA, get nowhere.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        proto::admin_client::AdminClient::new(plain)
            .status(proto::StatusRequest {})
            .await
            .expect_err("a plaintext call to a TLS endpoint");
    }
    let untrusted = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls(&pki.other_ca))
        .unwrap()
        .connect()
        .await;
    if let Ok(untrusted) = untrusted {
        proto::admin_client::AdminClient::new(untrusted)
            .status(proto::StatusRequest {})
            .await
            .expect_err("a call from a client that does not trust the server");
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), service.wait())
        .await
        .unwrap()
        .unwrap();
}
