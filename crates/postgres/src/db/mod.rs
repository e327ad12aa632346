//! Connections to PostgreSQL for SQL work (the replication connection lives in `wal`).
//!
//! The password never comes from the command line: it is taken from the URL only when the
//! URL itself came from the environment, otherwise from `PGPASSWORD` or the file named by
//! `LAKETS_DATABASE_PASSWORD_FILE` (for Kubernetes secrets mounted as files).
//!
//! TLS follows libpq's `sslmode` (up to `verify-full`) and `sslrootcert`, given in the URL.

pub mod conninfo;
pub mod pool;
pub mod tls;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;

use tokio_postgres::{Client, Config, NoTls};
use tracing::warn;

pub use conninfo::{SslMode, TlsOptions};

use crate::error::{Error, PgResultExt, Result};

/// Where PostgreSQL is and how to reach it: tokio-postgres' settings plus the TLS options
/// it does not know. Derefs to [`tokio_postgres::Config`] for everything else.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pg: Config,
    tls: TlsOptions,
    /// The `options` the URL itself gave, before lakets' [`SESSION_SETTINGS`] were added.
    own_options: Option<String>,
}

impl DbConfig {
    pub fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// The same server and credentials for a session that stands in for the user's own
    /// application (the benchmarks' writers): the database's defaults, not lakets' pinned
    /// settings, so its SQL names tables as the application would.
    pub fn as_application(&self) -> DbConfig {
        let mut app = self.clone();
        app.pg.options(self.own_options.as_deref().unwrap_or(""));
        app
    }
}

impl Deref for DbConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.pg
    }
}

impl DerefMut for DbConfig {
    fn deref_mut(&mut self) -> &mut Config {
        &mut self.pg
    }
}

/// Environment variable naming a file that holds the database password.
pub const PASSWORD_FILE_ENV: &str = "LAKETS_DATABASE_PASSWORD_FILE";

/// Parses a `postgres://` URL or a libpq key=value string, filling in the password from
/// the environment when the URL has none.
pub fn parse_config(url: &str) -> Result<DbConfig> {
    let (rest, tls) = conninfo::split_tls_options(url)?;
    let mut config = Config::from_str(&rest).map_err(|e| {
        Error::invalid(format!(
            "invalid database URL: {e} (expected postgres://user@host:port/database)"
        ))
    })?;
    if config.get_password().is_none()
        && let Some(password) = password_from_env()?
    {
        config.password(password);
    }
    if config.get_application_name().is_none() {
        config.application_name("lakets");
    }
    // Startup options beat ALTER ROLE/DATABASE ... SET, so a database owner cannot give
    // lakets' sessions another search_path (or formatting) than these.
    let own_options = config
        .get_options()
        .filter(|o| !o.trim().is_empty())
        .map(str::to_owned);
    let options = match &own_options {
        Some(own) => format!("{own} {}", session_options()),
        None => session_options(),
    };
    config.options(&options);
    // tokio-postgres enforces "TLS or nothing" for the verifying modes; the connector
    // built from `tls` does the checking.
    config.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok(DbConfig {
        pg: config,
        tls,
        own_options,
    })
}

/// Settings every lakets session runs with, whatever the role's or database's defaults:
/// - `search_path`: functions, operators and types resolve in `pg_catalog` only, so an
///   object a user creates in a schema on the path (`public.array_agg(double precision)`,
///   an `=` operator) never runs inside lakets' SQL, as the lakets role (pg_temp last:
///   never searched for functions or operators);
/// - `synchronous_commit`: a commit lakets reports as durable is on disk (the slot is
///   confirmed on the strength of it);
/// - `standard_conforming_strings`: `quote_literal` and the string literals lakets writes
///   into DDL mean what they say;
/// - TimeZone, DateStyle, extra_float_digits, bytea_output and IntervalStyle: values read
///   back as text have one format (UTC, ISO, exact floats, hex).
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("search_path", "pg_catalog,pg_temp"),
    ("synchronous_commit", "on"),
    ("standard_conforming_strings", "on"),
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// [`SESSION_SETTINGS`] as libpq's `options` (`-c name=value ...`).
pub fn session_options() -> String {
    SESSION_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`SESSION_SETTINGS`] as SET statements, for a session lakets did not open itself.
pub fn session_set_statements() -> String {
    SESSION_SETTINGS
        .iter()
        .map(|(name, value)| format!("SET {name} = '{value}'"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// True when the URL carries a password, which must then not come from argv.
pub fn url_has_password(url: &str) -> bool {
    conninfo::split_tls_options(url)
        .ok()
        .and_then(|(rest, _)| Config::from_str(&rest).ok())
        .is_some_and(|c| c.get_password().is_some())
}

fn password_from_env() -> Result<Option<Vec<u8>>> {
    if let Some(path) = std::env::var_os(PASSWORD_FILE_ENV) {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::io(
                format!(
                    "reading the database password from {PASSWORD_FILE_ENV}={}",
                    std::path::Path::new(&path).display()
                ),
                e,
            )
        })?;
        return Ok(Some(
            text.trim_end_matches(['\r', '\n']).as_bytes().to_vec(),
        ));
    }
    Ok(std::env::var("PGPASSWORD").ok().map(String::into_bytes))
}

/// A session as the user's application has it (see [`DbConfig::as_application`]).
pub async fn connect_as_application(url: &str) -> Result<Client> {
    connect_with(&parse_config(url)?.as_application()).await
}

/// Opens a SQL connection and drives it on a background task.
pub async fn connect(url: &str) -> Result<Client> {
    let config = parse_config(url)?;
    connect_with(&config).await
}

pub async fn connect_with(config: &DbConfig) -> Result<Client> {
    let context = || {
        format!(
            "connecting to PostgreSQL at {} (sslmode={})",
            describe_target(config),
            config.tls.mode.as_str()
        )
    };
    let client = match tls::client_config(&config.tls)? {
        None => {
            let (client, connection) = config.pg.connect(NoTls).await.pg_context(context)?;
            spawn_connection(connection);
            client
        }
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, connection) = config.pg.connect(tls).await.pg_context(context)?;
            spawn_connection(connection);
            client
        }
    };
    Ok(client)
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %crate::error::describe_pg_error(&e), "PostgreSQL connection closed with an error");
        }
    });
}

/// host:port/database, without credentials, for messages and logs.
pub fn describe_target(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{db}")
}
