//! Connections to PostgreSQL for SQL work (the replication connection lives in `wal`).
//!
//! The password never comes from the command line: it is taken from the URL only when the
//! URL itself came from the environment, otherwise from `PGPASSWORD` or the file named by
//! `LAKETS_DATABASE_PASSWORD_FILE` (for Kubernetes secrets mounted as files).

use std::str::FromStr;

use tokio_postgres::{Client, Config, NoTls};
use tracing::warn;

use crate::error::{Error, PgResultExt, Result};

/// Environment variable naming a file that holds the database password.
pub const PASSWORD_FILE_ENV: &str = "LAKETS_DATABASE_PASSWORD_FILE";

/// Parses a `postgres://` URL or a libpq key=value string, filling in the password from
/// the environment when the URL has none.
pub fn parse_config(url: &str) -> Result<Config> {
    let mut config = Config::from_str(url).map_err(|e| {
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
    Ok(config)
}

/// True when the URL carries a password, which must then not come from argv.
pub fn url_has_password(url: &str) -> bool {
    Config::from_str(url)
        .map(|c| c.get_password().is_some())
        .unwrap_or(false)
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

pub async fn connect_with(config: &Config) -> Result<Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .pg_context(|| format!("connecting to PostgreSQL at {}", describe_target(config)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %crate::error::describe_pg_error(&e), "PostgreSQL connection closed with an error");
        }
    });
    Ok(client)
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
