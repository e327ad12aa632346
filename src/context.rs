//! What every command needs from the command line: where the database is (without ever
//! taking a password from argv), the config, and the shutdown signal.

use anyhow::{Context as _, bail};

use crate::args::{Cli, RunOverrides};

/// The global flags, and whether `--database-url` came from argv (where a password would
/// be visible to every user of the machine) rather than from the environment.
pub struct Context {
    pub database_url: Option<String>,
    pub from_argv: bool,
}

impl Context {
    pub fn new(cli: &Cli, from_argv: bool) -> Self {
        Context {
            database_url: cli.database_url.clone(),
            from_argv,
        }
    }

    /// The database URL: `--database-url`, `LAKETS_DATABASE_URL` or `DATABASE_URL`.
    pub fn database_url(&self) -> anyhow::Result<Option<String>> {
        let url = self
            .database_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok());
        if let Some(url) = &url
            && self.from_argv
            && lakets::db::url_has_password(url)
        {
            bail!(
                "--database-url contains a password, which would be visible to every user of \
                 this machine (ps, shell history); pass it in PGPASSWORD or \
                 LAKETS_DATABASE_PASSWORD_FILE, or put the whole URL in LAKETS_DATABASE_URL"
            );
        }
        Ok(url)
    }

    /// The connection settings of the required database.
    pub fn database_config(&self) -> anyhow::Result<lakets::db::DbConfig> {
        let url = self.database_url()?.context(
            "no database given: pass --database-url or set LAKETS_DATABASE_URL (or DATABASE_URL)",
        )?;
        Ok(lakets::db::parse_config(&url)?)
    }

    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(lakets::db::connect_with(&self.database_config()?).await?)
    }

    /// The config: file (if any) < LAKETS_* environment < --database-url < flags.
    pub fn load_config(
        &self,
        path: Option<&std::path::Path>,
        overrides: Option<&RunOverrides>,
    ) -> anyhow::Result<lakets::config::Config> {
        let mut config = lakets::config::Config::load(path)?;
        if let Some(url) = self.database_url()? {
            config.database.url = Some(url);
        }
        if let Some(o) = overrides {
            o.apply(&mut config);
        }
        config.validate()?;
        Ok(config)
    }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal during start-up is not lost (nor fatal).
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// The shutdown signal as a boxed future a command can own.
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
