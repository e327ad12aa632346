//! The embedded cluster itself: logical WAL, restarts on the same port with data kept,
//! crash recovery, and teardown.

use lakets::embedded::{EmbeddedOptions, EmbeddedPostgres};

async fn start() -> EmbeddedPostgres {
    tokio::task::spawn_blocking(|| EmbeddedPostgres::start(EmbeddedOptions::default()))
        .await
        .unwrap()
        .expect("starting embedded PostgreSQL")
}

/// A plain session, as an application opens one (lakets' own sessions pin search_path).
async fn user_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

#[tokio::test]
async fn cluster_is_logical_restartable_and_removed_on_drop() {
    let pg = start().await;
    let url = pg.create_database("app").await.unwrap();
    let client = user_connect(&url).await;
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal_level, "logical");
    client
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    drop(client);

    let port = pg.port();
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.restart_server())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pg.port(), port, "same port after a restart");
    let client = user_connect(&url).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    drop(client);

    // An immediate shutdown (a crash) recovers with committed data intact.
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || {
        pg2.crash_server()?;
        pg2.start_server()
    })
    .await
    .unwrap()
    .unwrap();
    let client = user_connect(&url).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    drop(client);

    let root = pg.root_dir().to_path_buf();
    assert!(root.join("data").exists());
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
    assert!(!root.exists(), "the cluster directory is removed on drop");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server stopped"
    );
}

#[tokio::test]
async fn a_second_cluster_gets_its_own_port() {
    let (a, b) = (start().await, start().await);
    assert_ne!(a.port(), b.port());
    // The URL to show has no password; the one programs use carries it.
    assert!(
        a.display_url("x")
            .starts_with("postgres://postgres@127.0.0.1:")
    );
    assert!(a.url("x").contains(&format!(":{}@", a.password())));
    assert_ne!(a.password(), b.password(), "each cluster its own password");
    tokio::task::spawn_blocking(move || drop((a, b)))
        .await
        .unwrap();
}

/// Any local user could reach the loopback port: the cluster wants its password, over TCP
/// and the Unix socket alike, and the password lives in files only the invoking user reads.
#[tokio::test]
async fn logins_without_the_password_are_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let pg = start().await;
    let url = pg.create_database("app").await.unwrap();
    user_connect(&url).await; // with it: in
    let without = pg.display_url("app");
    let err = tokio_postgres::connect(&without, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a TCP login without the password is refused");
    assert!(
        format!("{err:?}").contains("password"),
        "refused for want of a password: {err:?}"
    );
    let wrong = url.replace(pg.password(), "guessed");
    let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(
        format!("{err:?}").contains("28P01"),
        "authentication failed: {err:?}"
    );
    let socket = format!(
        "host={} port={} user=postgres dbname=app",
        pg.socket_dir().display(),
        pg.port()
    );
    assert!(
        tokio_postgres::connect(&socket, tokio_postgres::NoTls)
            .await
            .is_err(),
        "the Unix socket wants the password too"
    );
    // The password files: the invoking user's, 0600; the directory lets others only pass.
    let me = unsafe { libc::geteuid() };
    for file in [pg.password_file(), pg.pgpass_file()] {
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(meta.file_type().is_file(), "{}", file.display());
        assert_eq!(meta.uid(), me, "{}", file.display());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            file.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(pg.password_file()).unwrap().trim(),
        pg.password()
    );
    let root = std::fs::metadata(pg.root_dir()).unwrap();
    assert_eq!(root.uid(), me);
    assert_eq!(
        root.permissions().mode() & 0o077,
        if me == 0 { 0o011 } else { 0 }
    );
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_logical_wal_is_refused_with_what_to_change() {
    let pg = tokio::task::spawn_blocking(|| {
        EmbeddedPostgres::start(EmbeddedOptions::default().setting("wal_level", "replica"))
    })
    .await
    .unwrap()
    .unwrap();
    let url = pg.create_database("app").await.unwrap();
    let client = user_connect(&url).await;
    let err = lakets::wal::slot::preflight(&client, "lakets_app")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wal_level is 'replica'"), "{err}");
    assert!(err.contains("wal_level = logical"), "{err}");
    drop(client);
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}
