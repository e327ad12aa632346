//! Connections to PostgreSQL for SQL work (the replication connection lives in `wal`).
//!
//! The password never comes from the command line: it is taken from the URL only when the
//! URL itself came from the environment, otherwise from `PGPASSWORD` or the file named by
//! `LAKETS_DATABASE_PASSWORD_FILE` (for Kubernetes secrets mounted as files).
//!
//! TLS follows libpq's `sslmode` (up to `verify-full`) and `sslrootcert`, given in the URL.

pub mod conninfo;
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
}

impl DbConfig {
    pub fn tls(&self) -> &TlsOptions {
        &self.tls
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
    // tokio-postgres enforces "TLS or nothing" for the verifying modes; the connector
    // built from `tls` does the checking.
    config.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok(DbConfig { pg: config, tls })
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
