//! The bad-input catalogue: inputs a user can get wrong, through every surface a user
//! scripts (CLI arguments, the config file and its environment variables, the names that
//! reach SQL), each refused with a message that says what and why, and none changing
//! anything in the database. (gRPC's refusals are in tests/service.rs, a wrong wal_level
//! in tests/embedded.rs; the attacks that come through the database and the stream, such
//! as shadowing functions, forged and oversized messages, are in tests/security.rs.)

use crate::common;

use std::process::Command;

use common::{TestDb, fresh_db};

/// One bad input: the arguments (`{config}` is replaced by the path of a file holding
/// `config`), extra environment, and what the error must say.
struct Case {
    what: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    config: Option<&'static str>,
    expect: &'static str,
}

const fn case(what: &'static str, args: &'static [&'static str], expect: &'static str) -> Case {
    Case {
        what,
        args,
        env: &[],
        config: None,
        expect,
    }
}

const fn config(what: &'static str, text: &'static str, expect: &'static str) -> Case {
    Case {
        what,
        args: &["config", "apply", "--config", "{config}"],
        env: &[],
        config: Some(text),
        expect,
    }
}

/// `lakets run` with a config: a listener's refusal must come before the catalog is touched.
const fn run(what: &'static str, text: &'static str, expect: &'static str) -> Case {
    Case {
        what,
        args: &["run", "--config", "{config}"],
        env: &[],
        config: Some(text),
        expect,
    }
}

const TABLE_EV: &str = "[[tables]]\nname = \"ev\"\ntime_column = \"time\"\n";

const CASES: &[Case] = &[
    // Names that reach SQL.
    case(
        "injection in a table name",
        &[
            "chronotable",
            "create",
            "ev\"; DROP TABLE victim; --",
            "--time-column",
            "time",
        ],
        "invalid name",
    ),
    case(
        "injection in a column name",
        &[
            "chronotable",
            "create",
            "ev",
            "--time-column",
            "time); DROP TABLE victim; --",
        ],
        "invalid name",
    ),
    case(
        "unknown table",
        &["chronotable", "create", "nosuch", "--time-column", "time"],
        "does not exist",
    ),
    case(
        "unknown time column",
        &["chronotable", "create", "ev", "--time-column", "nosuch"],
        "nosuch",
    ),
    case(
        "time column of the wrong type",
        &["chronotable", "create", "ev", "--time-column", "v"],
        "must be timestamptz",
    ),
    case(
        "schema-qualified injection",
        &["chronotable", "show-chunks", "public.ct;DROP TABLE victim"],
        "invalid name",
    ),
    case(
        "LVC on an unknown key column",
        &["lvc", "enable", "ct", "--key", "nosuch", "--columns", "v"],
        "nosuch",
    ),
    case(
        "injection in LVC value columns",
        &[
            "lvc",
            "enable",
            "ct",
            "--key",
            "sym",
            "--columns",
            "v) ; DROP TABLE victim; --",
        ],
        "invalid name",
    ),
    case(
        "LVC on a table that is not a ChronoTable",
        &["lvc", "enable", "victim", "--key", "id", "--columns", "id"],
        "ChronoTable",
    ),
    case(
        "LVC get of a table without a cache",
        &["lvc", "get", "ct", "a", "b"],
        "Last Value Cache of public.ct does not exist",
    ),
    case(
        "rollup of an unknown source",
        &[
            "rollup",
            "create",
            "r1",
            "--source",
            "nosuch",
            "--bucket",
            "1 minute",
            "--aggregate",
            "count(*)",
        ],
        "nosuch",
    ),
    case(
        "rollup grouped by an unknown column",
        &[
            "rollup",
            "create",
            "r1",
            "--source",
            "ct",
            "--bucket",
            "1 minute",
            "--group-by",
            "nosuch",
            "--aggregate",
            "count(*)",
        ],
        "nosuch",
    ),
    case(
        "rollup with an unknown aggregate",
        &[
            "rollup",
            "create",
            "r1",
            "--source",
            "ct",
            "--bucket",
            "1 minute",
            "--aggregate",
            "median(v)",
        ],
        "median",
    ),
    case(
        "rollup with an unbalanced aggregate",
        &[
            "rollup",
            "create",
            "r1",
            "--source",
            "ct",
            "--bucket",
            "1 minute",
            "--aggregate",
            "sum(v",
        ],
        "sum(v",
    ),
    case(
        "injection in an aggregate argument",
        &[
            "rollup",
            "create",
            "r1",
            "--source",
            "ct",
            "--bucket",
            "1 minute",
            "--aggregate",
            "sum(v); DROP TABLE victim",
        ],
        "DROP TABLE",
    ),
    case(
        "rollup with a zero bucket",
        &[
            "rollup",
            "create",
            "r1",
            "--source",
            "ct",
            "--bucket",
            "0 seconds",
            "--aggregate",
            "count(*)",
        ],
        "longer than zero",
    ),
    case(
        "injection in a rollup name",
        &[
            "rollup",
            "create",
            "r1; DROP TABLE victim",
            "--source",
            "ct",
            "--bucket",
            "1 minute",
            "--aggregate",
            "count(*)",
        ],
        "invalid name",
    ),
    // Intervals, sizes and URIs.
    case(
        "interval of no fixed length",
        &[
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
    case(
        "unparsable interval",
        &[
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
    case(
        "zero chunk interval",
        &[
            "chronotable",
            "create",
            "ev",
            "--time-column",
            "time",
            "--chunk-interval",
            "0 seconds",
        ],
        "chunk",
    ),
    case(
        "absurd chunk interval",
        &[
            "chronotable",
            "create",
            "ev",
            "--time-column",
            "time",
            "--chunk-interval",
            "100000000 days",
        ],
        "interval",
    ),
    case(
        "negative premake",
        &[
            "chronotable",
            "create",
            "ev",
            "--time-column",
            "time",
            "--premake=-5",
        ],
        "premake",
    ),
    case(
        "absurd premake",
        &[
            "chronotable",
            "create",
            "ev",
            "--time-column",
            "time",
            "--premake",
            "1000000",
        ],
        "premake",
    ),
    case(
        "negative drop age",
        &["chronotable", "drop-chunks", "ct", "--older-than=-1 day"],
        "negative",
    ),
    case(
        "policy dropping before tiering",
        &[
            "policy",
            "set",
            "ct",
            "--tier-after",
            "2 days",
            "--drop-after",
            "1 day",
        ],
        "drop",
    ),
    case(
        "sync to an unsupported URI scheme",
        &["sync", "enable", "ct", "--to", "ftp://example.com/lake/ct"],
        "ftp",
    ),
    case(
        "sync to a bucket-less URI",
        &["sync", "enable", "ct", "--to", "s3://"],
        "s3://",
    ),
    case(
        "sync of an unsupported column type",
        &[
            "sync",
            "enable",
            "odd",
            "--to",
            "/nonexistent-lakets-test/odd",
        ],
        "point",
    ),
    case(
        "sync upgrade naming no feature",
        &["sync", "upgrade", "ct"],
        "nothing to upgrade",
    ),
    case(
        "sync upgrade of a table that is not synced",
        &["sync", "upgrade", "ct", "--change-data-feed"],
        "sync of public.ct does not exist",
    ),
    case(
        "unknown partitioning",
        &[
            "sync",
            "enable",
            "ct",
            "--to",
            "/tmp/x",
            "--partition-by",
            "week",
        ],
        "week",
    ),
    case(
        "ingest of no symbols",
        &["ingest", "--symbols", "0", "--duration", "1 second"],
        "symbols",
    ),
    case(
        "ingest with an unknown method",
        &["ingest", "--method", "fax"],
        "fax",
    ),
    case(
        "verify of an unknown table",
        &["verify", "nosuch"],
        "does not exist",
    ),
    // Connection strings and secrets.
    Case {
        what: "a password on the command line",
        args: &[
            "--database-url",
            "postgres://u:hunter2@127.0.0.1:1/db",
            "chronotable",
            "show-chunks",
            "ct",
        ],
        env: &[],
        config: None,
        expect: "contains a password",
    },
    Case {
        what: "an unknown sslmode",
        args: &[
            "--database-url",
            "postgres://127.0.0.1:1/db?sslmode=verify",
            "chronotable",
            "show-chunks",
            "ct",
        ],
        env: &[],
        config: None,
        expect: "invalid sslmode \"verify\"",
    },
    Case {
        what: "a client certificate in the URL",
        args: &[
            "--database-url",
            "postgres://127.0.0.1:1/db?sslcert=/tmp/client.pem",
            "chronotable",
            "show-chunks",
            "ct",
        ],
        env: &[],
        config: None,
        expect: "client certificates are not supported",
    },
    Case {
        what: "verify-full with a CA file that is not there",
        args: &[
            "--database-url",
            "postgres://127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "chronotable",
            "show-chunks",
            "ct",
        ],
        env: &[],
        config: None,
        expect: "reading sslrootcert /nonexistent/ca.pem",
    },
    Case {
        what: "an unparsable database URL",
        args: &[
            "--database-url",
            "postgres://[::1",
            "chronotable",
            "show-chunks",
            "ct",
        ],
        env: &[],
        config: None,
        expect: "database URL",
    },
    // The config file and its environment.
    config(
        "unknown config key",
        "[service]\nflush_intervall = \"1 second\"\n",
        "flush_intervall",
    ),
    config(
        "bad interval in the config",
        "[jobs]\nrollups_every = \"often\"\n",
        "often",
    ),
    config(
        "absurd size in the config",
        "[http]\nretained_wal_warning = \"12 ZB\"\n",
        "retained_wal_warning",
    ),
    config(
        "bad listen address",
        "[http]\nlisten = \"everywhere:80\"\n",
        "http.listen",
    ),
    config(
        "config table name injection",
        "[[tables]]\nname = \"ev; DROP TABLE victim\"\ntime_column = \"time\"\n",
        "invalid name",
    ),
    config(
        "config table that does not exist",
        "[[tables]]\nname = \"nosuch\"\ntime_column = \"time\"\n",
        "does not exist",
    ),
    config(
        "config policy dropping before tiering",
        "[[tables]]\nname = \"ct\"\ntime_column = \"time\"\n[tables.policy]\ntier_after = \"2 days\"\ndrop_after = \"1 day\"\n",
        "drop_after",
    ),
    config(
        "config rollup cycle",
        "[[rollups]]\nname = \"ra\"\nsource = \"rb\"\nbucket = \"1 hour\"\naggregate = \"count(*)\"\n\
         [[rollups]]\nname = \"rb\"\nsource = \"ra\"\nbucket = \"1 hour\"\naggregate = \"count(*)\"\n",
        "cycle",
    ),
    Case {
        what: "bad interval in an environment override",
        args: &["config", "apply", "--config", "{config}"],
        env: &[("LAKETS_JOBS_RETENTION_EVERY", "whenever")],
        config: Some(TABLE_EV),
        expect: "LAKETS_JOBS_RETENTION_EVERY",
    },
    Case {
        what: "environment override of an unknown key",
        args: &["config", "apply", "--config", "{config}"],
        env: &[("LAKETS_SERVICE_NOSUCH", "1")],
        config: Some(TABLE_EV),
        expect: "LAKETS_SERVICE_NOSUCH",
    },
    // Who may reach the API (the attacks of tests/security.rs that a config can open).
    run(
        "a gRPC listener beyond loopback without a token",
        "[http]\nlisten = \"off\"\n[grpc]\nlisten = \"0.0.0.0:0\"\n",
        "no admin token is set",
    ),
    Case {
        what: "a gRPC listener beyond loopback with a token but no TLS",
        args: &["run", "--config", "{config}"],
        env: &[("LAKETS_GRPC_ADMIN_TOKEN", "bad-input-token")],
        config: Some("[http]\nlisten = \"off\"\n[grpc]\nlisten = \"0.0.0.0:0\"\n"),
        expect: "without TLS",
    },
    run(
        "half a TLS pair (plaintext while the config says TLS)",
        "[http]\nlisten = \"off\"\n[grpc]\nlisten = \"0.0.0.0:0\"\n\
         tls_cert_file = \"/etc/hostname\"\nallow_plaintext = false\n",
        "go together",
    ),
    run(
        "a TLS certificate that does not exist",
        "[http]\nlisten = \"off\"\n[grpc]\ntls_cert_file = \"/nonexistent/cert.pem\"\n\
         tls_key_file = \"/nonexistent/key.pem\"\n",
        "grpc.tls_cert_file",
    ),
    run(
        "a read token file that does not exist",
        "[http]\nlisten = \"off\"\n[grpc]\nread_token_file = \"/nonexistent/token\"\n",
        "grpc.read_token_file",
    ),
    run(
        "an empty admin token file",
        "[http]\nlisten = \"off\"\n[grpc]\nlisten = \"0.0.0.0:0\"\n\
         admin_token_file = \"/dev/null\"\n",
        "is empty",
    ),
    config(
        "a password in the config file",
        "[database]\nurl = \"postgres://u:hunter2@127.0.0.1:1/db\"\n",
        "contains a password",
    ),
    config(
        "a replication frame bound too small for a row",
        "[service]\nmax_message_bytes = \"1 KiB\"\n",
        "max_message_bytes",
    ),
    config(
        "a leader lease shorter than a busy database's pause",
        "[service]\nleader_lease = \"100 milliseconds\"\n",
        "leader_lease",
    ),
    config(
        "no subscribers allowed",
        "[grpc]\nmax_subscribers = 0\n",
        "max_subscribers",
    ),
    // Privileges: a role that may connect and read but owns nothing.
    Case {
        what: "a role without privileges",
        args: &["chronotable", "create", "ev", "--time-column", "time"],
        env: &[("LAKETS_TEST_AS_ROLE", "bad_input_reader")],
        config: None,
        expect: "permission denied",
    },
];

/// Everything a refused input must leave as it was: relations, triggers, slots and
/// publications of this database, and every row count of lakets' catalog.
async fn fingerprint(db: &TestDb) -> String {
    db.scalar(
        "SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
           SELECT 'rel ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text AS x
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
           UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
           UNION ALL SELECT 'slot ' || slot_name FROM pg_replication_slots
                      WHERE database = current_database()
           UNION ALL SELECT 'publication ' || pubname FROM pg_publication
           UNION ALL SELECT 'rows ' || table_name || ' ' ||
                  (xpath('/row/c/text()', query_to_xml(
                      format('SELECT count(*) AS c FROM lakets.%I', table_name),
                      false, true, '')))[1]::text
             FROM information_schema.tables
            WHERE table_schema = 'lakets' AND table_type = 'BASE TABLE'
           UNION ALL SELECT 'victim rows ' || count(*) FROM victim
         ) f",
    )
    .await
}

#[tokio::test]
async fn every_bad_input_is_refused_clearly_and_changes_nothing() {
    assert!(
        CASES.len() >= 30,
        "the catalogue holds {} inputs",
        CASES.len()
    );
    let db = fresh_db("bad_input").await;
    db.exec(
        "CREATE TABLE victim (id int); INSERT INTO victim VALUES (1), (2);
         CREATE TABLE ev (time timestamptz NOT NULL, v int, sym text);
         CREATE TABLE ct (time timestamptz NOT NULL, v int, sym text);
         CREATE TABLE odd (time timestamptz NOT NULL, p point);
         DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bad_input_reader') THEN
             CREATE ROLE bad_input_reader LOGIN PASSWORD 'test-role-pw';
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA lakets TO bad_input_reader;
         GRANT SELECT ON ALL TABLES IN SCHEMA lakets TO bad_input_reader;
         GRANT SELECT ON ev, ct TO bad_input_reader;",
    )
    .await;
    for table in ["ct", "odd"] {
        let out = Command::new(env!("CARGO_BIN_EXE_lakets"))
            .env("LAKETS_DATABASE_URL", &db.url)
            .env("LAKETS_LOG", "warn")
            .args(["chronotable", "create", table, "--time-column", "time"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let before = fingerprint(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("lakets.toml");

    let mut failures = Vec::new();
    for case in CASES {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakets"));
        cmd.env_remove("DATABASE_URL")
            .env_remove("PGPASSWORD")
            .env_remove("LAKETS_CONFIG")
            .env("LAKETS_LOG", "warn");
        let mut url = db.url.clone();
        for (key, value) in case.env {
            if *key == "LAKETS_TEST_AS_ROLE" {
                url = with_user(&db.url, value);
            } else {
                cmd.env(key, value);
            }
        }
        cmd.env("LAKETS_DATABASE_URL", &url);
        if let Some(text) = case.config {
            std::fs::write(&config_path, text).unwrap();
        }
        for arg in case.args {
            if *arg == "{config}" {
                cmd.arg(&config_path);
            } else {
                cmd.arg(arg);
            }
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let problem = if out.status.success() {
            Some("it succeeded".to_owned())
        } else if stderr.contains("panicked") {
            Some("it panicked".to_owned())
        } else if !stderr.to_lowercase().contains(&case.expect.to_lowercase()) {
            Some(format!("the error does not mention {:?}", case.expect))
        } else {
            changed(&before, &fingerprint(&db).await)
                .map(|change| format!("the database changed: {change}"))
        };
        if let Some(problem) = problem {
            failures.push(format!(
                "{}: {problem} (exit {:?})\n    stderr: {}",
                case.what,
                out.status.code(),
                stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not handled:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    assert_eq!(fingerprint(&db).await, before);
}

/// The lines that differ between two fingerprints, if any.
fn changed(before: &str, after: &str) -> Option<String> {
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    let gone: Vec<&str> = b.iter().filter(|l| !a.contains(l)).copied().collect();
    let new: Vec<&str> = a.iter().filter(|l| !b.contains(l)).copied().collect();
    (!gone.is_empty() || !new.is_empty()).then(|| format!("gone {gone:?}, new {new:?}"))
}

/// The test database's URL with another user.
fn with_user(url: &str, user: &str) -> String {
    common::url_as(url, user)
}
