//! The replication connection: raw pgoutput frames in, flush acknowledgements out.
//!
//! Transport is `pg_walstream` 0.9 (see the module docs of [`crate::wal`] for why), used at
//! its lowest level: `next_raw_event` gives the undecoded XLogData payloads (we decode them
//! ourselves) and answers keepalives; we alone decide what is acknowledged, through
//! `SharedLsnFeedback` and `send_feedback`. Its hidden-reconnect and auto-ack helpers are
//! never used: a lost connection surfaces as an error, and the pipeline restarts from the
//! slot, which has not been acknowledged past what every operator made durable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pg_walstream::{
    CancellationToken, LogicalReplicationStream, ReplicationError, ReplicationSlotOptions,
    ReplicationStreamConfig, StreamingMode,
};
use tokio_postgres::config::Host;

use super::lsn::Lsn;
use crate::db::DbConfig;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub slot: String,
    pub publication: String,
    /// Values in binary send/recv format instead of text.
    pub binary: bool,
    /// How often an idle read returns, so acknowledgements go out without traffic.
    pub idle_tick: Duration,
    pub connect_timeout: Duration,
}

impl SourceSettings {
    pub fn new(slot: impl Into<String>, publication: impl Into<String>) -> Self {
        SourceSettings {
            slot: slot.into(),
            publication: publication.into(),
            binary: true,
            idle_tick: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// One XLogData message.
#[derive(Debug, Clone)]
pub struct WalFrame {
    pub wal_start: Lsn,
    pub wal_end: Lsn,
    pub data: Bytes,
}

pub struct WalSource {
    stream: LogicalReplicationStream,
    wake: Arc<Mutex<CancellationToken>>,
    ticker: tokio::task::JoinHandle<()>,
    /// The end of the latest data frame read.
    received: Lsn,
}

impl Drop for WalSource {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

fn replication_error(context: &str, e: ReplicationError) -> Error {
    Error::Replication {
        transient: !e.is_permanent(),
        message: format!("{context}: {e}"),
    }
}

impl WalSource {
    /// Connects and starts streaming from the slot's confirmed position. The slot and the
    /// publication must exist (see [`super::setup`]). Needs a multi-threaded runtime.
    pub async fn start(config: &DbConfig, settings: &SourceSettings) -> Result<Self> {
        // On a current-thread runtime pg_walstream reads through a worker thread whose
        // buffered frames are dropped when a read is cancelled, which our idle tick does.
        if tokio::runtime::Handle::current().runtime_flavor()
            != tokio::runtime::RuntimeFlavor::MultiThread
        {
            return Err(Error::invalid(
                "the WAL consumer needs a multi-threaded tokio runtime",
            ));
        }
        let conninfo = replication_conninfo(config)?;
        let stream_config = ReplicationStreamConfig::builder(&settings.slot, &settings.publication)
            // Version 1 is enough: no streaming of in-progress transactions (see transaction.rs).
            .with_protocol_version(1)
            .with_streaming_mode(StreamingMode::Off)
            .with_binary(settings.binary)
            .with_messages(true)
            .with_connection_timeout(settings.connect_timeout)
            .with_feedback_interval(Duration::from_secs(1))
            .with_slot_options(ReplicationSlotOptions {
                snapshot: Some("nothing".into()),
                ..Default::default()
            });
        let mut stream = match LogicalReplicationStream::new(&conninfo, stream_config).await {
            Ok(stream) => stream,
            Err(e) => return Err(explain_connect_failure(config, e).await),
        };
        // None: the server resumes at the slot's confirmed_flush_lsn, and nothing is
        // acknowledged until the operators report durable positions.
        stream
            .start(None)
            .await
            .map_err(|e| replication_error("starting replication", e))?;
        let wake = Arc::new(Mutex::new(CancellationToken::new()));
        let ticker_wake = wake.clone();
        let tick = settings.idle_tick;
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                ticker_wake.lock().unwrap().cancel();
            }
        });
        Ok(WalSource {
            stream,
            wake,
            ticker,
            received: Lsn::ZERO,
        })
    }

    /// The next XLogData frame, or `None` when the idle tick fired first.
    pub async fn next_frame(&mut self) -> Result<Option<WalFrame>> {
        let token = self.wake.lock().unwrap().clone();
        match self.stream.next_raw_event(&token).await {
            Ok(raw) => {
                self.received = self.received.max(Lsn(raw.wal_end.0.max(raw.wal_start.0)));
                Ok(Some(WalFrame {
                    wal_start: Lsn(raw.wal_start.0),
                    wal_end: Lsn(raw.wal_end.0),
                    data: raw.data,
                }))
            }
            Err(ReplicationError::Cancelled(_)) => {
                *self.wake.lock().unwrap() = CancellationToken::new();
                Ok(None)
            }
            Err(e) => Err(replication_error("reading the replication stream", e)),
        }
    }

    /// Makes a pending (or the next) `next_frame` return `None` at once: something other
    /// than the stream needs the consumer's attention.
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let wake = self.wake.clone();
        move || wake.lock().unwrap().cancel()
    }

    /// The highest WAL position the server has told us about (data or keepalive).
    pub fn received_lsn(&self) -> Lsn {
        // The transport tracks keepalives only on its own event path; data frames we count.
        self.received.max(Lsn(self.stream.current_lsn()))
    }

    /// Confirms `flushed` to the server: the slot may release WAL before it.
    pub async fn acknowledge(&mut self, flushed: Lsn) -> Result<()> {
        if !flushed.is_zero() {
            self.stream
                .shared_lsn_feedback
                .update_applied_lsn(flushed.0);
        }
        self.stream
            .send_feedback()
            .await
            .map_err(|e| replication_error("sending the standby status update", e))
    }
}

/// pg_walstream retries a failed handshake until its timeout and then reports only the
/// timeout. When that happens, an SQL connection with the same settings says why (a TLS
/// certificate refused, a password, pg_hba.conf).
async fn explain_connect_failure(config: &DbConfig, e: ReplicationError) -> Error {
    let transient = !e.is_permanent();
    match crate::db::connect_with(config).await {
        Err(cause) => Error::Replication {
            transient,
            message: format!("opening the replication connection: {e}; {cause}"),
        },
        Ok(_) => replication_error("opening the replication connection", e),
    }
}

/// A libpq key=value string for the replication connection (`replication=database`), with
/// the same TLS options as the SQL connections.
fn replication_conninfo(config: &DbConfig) -> Result<String> {
    fn quote(v: &str) -> String {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => {
            return Err(Error::invalid(format!(
                "the replication connection needs a TCP host, not the unix socket {}; use \
                 host=127.0.0.1 (or the server's name) in the database URL",
                p.display()
            )));
        }
        None => "localhost".into(),
    };
    let mut parts = vec![
        format!("host={}", quote(&host)),
        format!(
            "port={}",
            config.get_ports().first().copied().unwrap_or(5432)
        ),
        "replication=database".to_owned(),
    ];
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={}", quote(db)));
    }
    if let Some(pw) = config.get_password() {
        parts.push(format!("password={}", quote(&String::from_utf8_lossy(pw))));
    }
    let tls = config.tls();
    let mode = tls.effective_mode();
    parts.push(format!("sslmode={}", mode.as_str()));
    if mode.verifies() {
        // Always explicit: without it pg_walstream would trust the public web roots,
        // where libpq (and our SQL connections) read ~/.postgresql/root.crt.
        parts.push(format!(
            "sslrootcert={}",
            quote(&tls.root_cert_path()?.to_string_lossy())
        ));
    }
    Ok(parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes_values_and_refuses_sockets() {
        let c = crate::db::parse_config("postgres://o'neil:p%20w'@db.example:6543/my db").unwrap();
        let s = replication_conninfo(&c).unwrap();
        assert!(
            s.contains("host='db.example' port=6543 replication=database"),
            "{s}"
        );
        assert!(s.contains("user='o\\'neil'"), "{s}");
        assert!(s.contains("password='p w\\''"), "{s}");
        assert!(s.contains("dbname='my db'"), "{s}");
        let sock = crate::db::parse_config("host=/tmp dbname=x").unwrap();
        assert!(
            replication_conninfo(&sock)
                .unwrap_err()
                .to_string()
                .contains("TCP")
        );
    }

    #[test]
    fn conninfo_carries_the_tls_options() {
        let c = crate::db::parse_config(
            "postgres://u@db.example/x?sslmode=verify-full&sslrootcert=/etc/my%20ca.pem",
        )
        .unwrap();
        let s = replication_conninfo(&c).unwrap();
        assert!(
            s.ends_with("sslmode=verify-full sslrootcert='/etc/my ca.pem'"),
            "{s}"
        );
        let c = crate::db::parse_config("postgres://u@db.example/x?sslmode=require").unwrap();
        assert!(
            replication_conninfo(&c)
                .unwrap()
                .ends_with("sslmode=require")
        );
        let c = crate::db::parse_config("postgres://u@db.example/x").unwrap();
        assert!(
            replication_conninfo(&c)
                .unwrap()
                .ends_with("sslmode=prefer")
        );
    }
}
