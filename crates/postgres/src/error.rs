//! The library's error type.
//!
//! Every error says what went wrong and why, in words a user can act on. Errors that come
//! from PostgreSQL keep the server's message, detail and hint (tokio-postgres' own
//! `Display` says only "db error"), plus the step we were performing.

use std::fmt::Write as _;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something malformed or impossible (bad name, bad interval, ...).
    #[error("{0}")]
    InvalidInput(String),

    /// A named object does not exist.
    #[error("{kind} {name} does not exist")]
    NotFound { kind: &'static str, name: String },

    /// The request conflicts with the current state (for example: already a ChronoTable).
    #[error("{0}")]
    Conflict(String),

    /// The database is not prepared for this operation (schema missing, wal_level, ...).
    #[error("{0}")]
    NotReady(String),

    /// PostgreSQL refused or failed a statement.
    #[error("{context}: {message}")]
    Postgres {
        context: String,
        message: String,
        /// The SQLSTATE code, when the server sent one.
        code: Option<String>,
        #[source]
        source: tokio_postgres::Error,
    },

    /// Starting, stopping or talking to the embedded PostgreSQL cluster failed.
    #[error("embedded PostgreSQL: {0}")]
    Embedded(String),

    /// The replication stream carried something we cannot decode.
    #[error("{0}")]
    Protocol(String),

    /// The replication connection failed (connect, slot, stream); `transient` errors are
    /// retried with backoff, the others stop the consumer.
    #[error("replication: {message}")]
    Replication { message: String, transient: bool },

    /// A WAL operator panicked, stopped, or could not finish.
    #[error("{0}")]
    Operator(String),

    /// A column type, value or schema change an operator cannot carry (definite).
    #[error("{0}")]
    Unsupported(String),

    /// The mirror no longer matches PostgreSQL: a row PostgreSQL changed is not where the
    /// mirror has it, or a value it must keep is gone. Retrying cannot heal it (definite).
    #[error("{0}")]
    Diverged(String),

    /// The Delta table or its object store failed (retried: stores heal).
    #[error("{context}: {message}")]
    Delta { context: String, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The SQLSTATE of a PostgreSQL error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Postgres { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// True when the error is the caller's fault rather than the system's.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput(_) | Error::NotFound { .. } | Error::Conflict(_)
        )
    }

    /// Errors by meaning, as Materialize has them: a transient error (a connection, a
    /// server restarting, a store failing, a lock held too long) may heal, so the work is
    /// retried with backoff; a definite one (data the mirror cannot represent, a missing
    /// replica identity, a mirror that diverged, a wrong setup) will not, so retrying it
    /// forever would only hide it: the stream stops with the reason instead.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Replication { transient, .. } => *transient,
            Error::Postgres { source, code, .. } => {
                source.is_closed()
                    || source.as_db_error().is_none()
                    || code.as_deref().is_some_and(|c| {
                        // Connections, a server shutting down or out of resources
                        // (disk full, out of memory, too many connections), an I/O error,
                        // a standby promoted or not yet (read-only), conflicts and locks.
                        c.starts_with("08")
                            || c.starts_with("57P")
                            || c.starts_with("53")
                            || matches!(
                                c,
                                "58030" | "25006" | "55006" | "40P01" | "40001" | "55P03" | "57014"
                            )
                    })
            }
            Error::Io { .. } | Error::Operator(_) | Error::Delta { .. } => true,
            Error::InvalidInput(_)
            | Error::NotFound { .. }
            | Error::Conflict(_)
            | Error::NotReady(_)
            | Error::Embedded(_)
            | Error::Protocol(_)
            | Error::Unsupported(_)
            | Error::Diverged(_) => false,
        }
    }

    /// A short, stable label for what kind of definite error this is (a metric label).
    pub fn kind_label(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::NotFound { .. } => "not_found",
            Error::Conflict(_) => "conflict",
            Error::NotReady(_) => "setup",
            Error::Postgres { .. } => "postgres",
            Error::Embedded(_) => "embedded",
            Error::Protocol(_) => "protocol",
            Error::Replication { .. } => "replication",
            Error::Operator(_) => "operator",
            Error::Unsupported(_) => "unsupported",
            Error::Diverged(_) => "diverged",
            Error::Delta { .. } => "delta",
            Error::Io { .. } => "io",
        }
    }
}

/// Adds the step being performed to Delta Lake and object store errors.
pub trait DeltaResultExt<T> {
    fn delta_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error> DeltaResultExt<T> for std::result::Result<T, E> {
    fn delta_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| {
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                if !message.contains(&text) {
                    let _ = write!(message, ": {text}");
                }
                source = cause.source();
            }
            Error::Delta {
                context: context(),
                message,
            }
        })
    }
}

/// Renders a tokio-postgres error with the server's message, detail and hint.
pub fn describe_pg_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut out = format!("{} {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                let _ = write!(out, " (detail: {detail})");
            }
            if let Some(hint) = db.hint() {
                let _ = write!(out, " (hint: {hint})");
            }
            out
        }
        None => {
            // Connection-level errors carry their cause in the source chain.
            let mut out = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                let _ = write!(out, ": {cause}");
                source = cause.source();
            }
            out
        }
    }
}

/// Adds the step being performed to PostgreSQL errors.
pub trait PgResultExt<T> {
    fn pg_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> PgResultExt<T> for std::result::Result<T, tokio_postgres::Error> {
    fn pg_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Postgres {
            context: context(),
            message: describe_pg_error(&source),
            code: source.code().map(|c| c.code().to_owned()),
            source,
        })
    }
}
