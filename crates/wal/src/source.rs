//! The replication connection: raw pgoutput frames in, flush acknowledgements out.
//!
//! lakets speaks PostgreSQL's streaming replication protocol itself (the frontend/backend
//! messages and SCRAM come from `postgres-protocol`, the crate tokio-postgres is built on):
//! a startup with `replication=database`, `START_REPLICATION ... LOGICAL`, then CopyData
//! frames in (XLogData, keepalives) and standby status updates out. Over TCP (with TLS as
//! libpq's `sslmode` says, through the same rustls configuration as the SQL connections)
//! or the server's Unix socket.
//!
//! Owning the transport is what lets it keep memory bounded whatever a frame holds: any role
//! may `pg_logical_emit_message` a 300 MB message, and pgoutput sends it as one frame. A
//! frame over [`SourceSettings::max_message_bytes`] is never buffered: a logical message
//! with another prefix than lakets' is passed on with its content cut off (operators drop
//! it anyway), and any other oversized frame (a row holding a huge value) is reported, with
//! its relation, so that the stream stops with an error that names it.
//!
//! We alone decide what is acknowledged: nothing is confirmed until the pipeline calls
//! [`WalSource::acknowledge`] with what every operator has stored. A lost connection is an
//! error; the pipeline restarts from the slot.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_postgres::config::Host;

use super::lsn::Lsn;
use super::pgoutput::PG_EPOCH_OFFSET_MICROS;
use crate::db::{DbConfig, SslMode};
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
    /// A frame larger than this is never held in memory (see the module docs).
    pub max_message_bytes: usize,
}

/// The default [`SourceSettings::max_message_bytes`].
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

impl SourceSettings {
    pub fn new(slot: impl Into<String>, publication: impl Into<String>) -> Self {
        SourceSettings {
            slot: slot.into(),
            publication: publication.into(),
            binary: true,
            idle_tick: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(15),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// One XLogData message.
#[derive(Debug, Clone)]
pub struct WalFrame {
    pub wal_start: Lsn,
    pub wal_end: Lsn,
    /// The pgoutput message (cut off for an oversized foreign logical message).
    pub data: Bytes,
    /// Set when the frame was too large to hold: what it was, and its size.
    pub oversized: Option<Oversized>,
}

/// A frame over the size limit that is not a foreign logical message.
#[derive(Debug, Clone, PartialEq)]
pub struct Oversized {
    /// The pgoutput message type (`I`, `U`, `D`, `M`, ...).
    pub kind: u8,
    /// The relation of a row change.
    pub relation_id: Option<u32>,
    /// The pgoutput message's size.
    pub bytes: usize,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where a frame being skipped stands.
struct Skipping {
    remaining: usize,
}

pub struct WalSource {
    stream: Pin<Box<dyn Stream>>,
    buf: BytesMut,
    skipping: Option<Skipping>,
    max_message: usize,
    wake: Arc<Notify>,
    ticker: tokio::task::JoinHandle<()>,
    /// The end of the latest data frame read, or the server's position from a keepalive.
    received: Lsn,
    /// What was last confirmed as flushed.
    flushed: Lsn,
    reply_requested: bool,
    /// A keepalive moved `received`: the consumer hears of it (its status, its next
    /// acknowledgement) even while no data flows.
    keepalive_seen: bool,
}

impl Drop for WalSource {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// SQLSTATEs a retry can get past: the server starting or stopping, too many connections,
/// the slot held by a walsender that has not exited yet.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57P")
        || matches!(code, "53300" | "55006" | "40001" | "40P01")
}

fn io_error(context: &str, e: std::io::Error) -> Error {
    Error::Replication {
        transient: true,
        message: format!("{context}: {e}"),
    }
}

fn protocol_error(message: impl Into<String>) -> Error {
    Error::Protocol(format!("replication connection: {}", message.into()))
}

/// The fields of an ErrorResponse: (SQLSTATE, "SEVERITY message (detail) (hint)").
fn parse_error(mut body: &[u8]) -> (String, String) {
    let (mut code, mut severity, mut message, mut detail, mut hint) =
        (String::new(), String::new(), String::new(), None, None);
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let value = String::from_utf8_lossy(&rest[..end]).into_owned();
        body = rest.get(end + 1..).unwrap_or(&[]);
        match kind {
            b'C' => code = value,
            b'S' => severity = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            _ => {}
        }
    }
    let mut text = format!("{severity} {message}");
    if let Some(d) = detail {
        text.push_str(&format!(" (detail: {d})"));
    }
    if let Some(h) = hint {
        text.push_str(&format!(" (hint: {h})"));
    }
    (code, text)
}

fn server_error(context: &str, body: &[u8]) -> Error {
    let (code, text) = parse_error(body);
    Error::Replication {
        transient: transient_sqlstate(&code),
        message: format!("{context}: {text}"),
    }
}

fn cstring(body: &mut &[u8]) -> Option<String> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    *body = &body[end + 1..];
    Some(s)
}

/// Quotes an identifier for a replication command.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string for a replication command's option value.
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl WalSource {
    /// Connects and starts streaming from the slot's confirmed position. The slot and the
    /// publication must exist (see [`crate::slot`]).
    pub async fn start(config: &DbConfig, settings: &SourceSettings) -> Result<Self> {
        let stream = tokio::time::timeout(settings.connect_timeout, connect(config))
            .await
            .map_err(|_| Error::Replication {
                transient: true,
                message: format!(
                    "opening the replication connection to {}: no answer within {:?}",
                    crate::db::describe_target(config),
                    settings.connect_timeout
                ),
            })??;
        let wake = Arc::new(Notify::new());
        let ticker_wake = wake.clone();
        let tick = settings.idle_tick;
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                ticker_wake.notify_one();
            }
        });
        let mut source = WalSource {
            stream,
            buf: BytesMut::with_capacity(1 << 16),
            skipping: None,
            max_message: settings.max_message_bytes.max(1 << 16),
            wake,
            ticker,
            received: Lsn::ZERO,
            flushed: Lsn::ZERO,
            reply_requested: false,
            keepalive_seen: false,
        };
        tracing::debug!(target = %crate::db::describe_target(config), "replication connection open");
        source.authenticate(config).await?;
        tracing::debug!("replication connection authenticated");
        source.start_replication(settings).await?;
        Ok(source)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| io_error("writing to the replication connection", e))?;
        self.stream
            .flush()
            .await
            .map_err(|e| io_error("writing to the replication connection", e))
    }

    /// Reads one whole backend message (startup and command phases only).
    async fn message(&mut self) -> Result<(u8, Bytes)> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
                if len < 4 {
                    return Err(protocol_error(format!("a message of length {len}")));
                }
                let total = len as usize + 1;
                if total > self.max_message {
                    return Err(protocol_error(format!(
                        "a {total}-byte message before streaming started"
                    )));
                }
                if self.buf.len() >= total {
                    let tag = self.buf[0];
                    let mut frame = self.buf.split_to(total);
                    frame.advance(5);
                    return Ok((tag, frame.freeze()));
                }
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| io_error("reading from the replication connection", e))?;
            if n == 0 {
                return Err(Error::Replication {
                    transient: true,
                    message: "the server closed the replication connection".into(),
                });
            }
        }
    }

    async fn authenticate(&mut self, config: &DbConfig) -> Result<()> {
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let mut params: Vec<(&str, String)> = vec![
            ("user", user.clone()),
            ("replication", "database".into()),
            (
                "application_name",
                config.get_application_name().unwrap_or("lakets").into(),
            ),
        ];
        if let Some(db) = config.get_dbname() {
            params.push(("database", db.into()));
        }
        if let Some(options) = config.get_options() {
            params.push(("options", options.into()));
        }
        let mut out = BytesMut::new();
        frontend::startup_message(params.iter().map(|(k, v)| (*k, v.as_str())), &mut out)
            .map_err(|e| protocol_error(format!("encoding the startup message: {e}")))?;
        self.write(&out).await?;
        let password = config.get_password().map(<[u8]>::to_vec);
        let need_password = || Error::Replication {
            transient: false,
            message: format!(
                "the server asks a password for {user}, and none is set (PGPASSWORD or \
                 LAKETS_DATABASE_PASSWORD_FILE)"
            ),
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        let mut scram_verified = false;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'R' => {
                    let mut b = &body[..];
                    let code = b.get_i32();
                    match code {
                        // Once SCRAM started, only a server that proved it knows the
                        // password may say "authenticated" (else anyone in between could).
                        0 if scram.is_some() && !scram_verified => {
                            return Err(Error::Replication {
                                transient: false,
                                message: "SCRAM authentication: the server said \
                                          authenticated without proving it knows the \
                                          password; refusing the connection"
                                    .into(),
                            });
                        }
                        0 => {}
                        3 => {
                            let pw = password.as_ref().ok_or_else(need_password)?;
                            let mut out = BytesMut::new();
                            frontend::password_message(pw, &mut out)
                                .map_err(|e| protocol_error(e.to_string()))?;
                            self.write(&out).await?;
                        }
                        5 => {
                            let pw = password.as_ref().ok_or_else(need_password)?;
                            let salt: [u8; 4] = b
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| protocol_error("an MD5 request without salt"))?;
                            let hashed = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                pw,
                                salt,
                            );
                            let mut out = BytesMut::new();
                            frontend::password_message(hashed.as_bytes(), &mut out)
                                .map_err(|e| protocol_error(e.to_string()))?;
                            self.write(&out).await?;
                        }
                        10 => {
                            let pw = password.as_ref().ok_or_else(need_password)?;
                            let mut mechanisms = Vec::new();
                            while let Some(m) = cstring(&mut b) {
                                if m.is_empty() {
                                    break;
                                }
                                mechanisms.push(m);
                            }
                            if !mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                                return Err(Error::Replication {
                                    transient: false,
                                    message: format!(
                                        "the server offers SASL mechanisms {mechanisms:?}; \
                                         lakets speaks SCRAM-SHA-256"
                                    ),
                                });
                            }
                            // "n": no channel binding. ("y" would tell a server offering SCRAM-SHA-256-PLUS over
                            // TLS that the offer was stripped, and it would refuse.)
                            let s = sasl::ScramSha256::new(pw, sasl::ChannelBinding::unsupported());
                            let mut out = BytesMut::new();
                            frontend::sasl_initial_response(
                                sasl::SCRAM_SHA_256,
                                s.message(),
                                &mut out,
                            )
                            .map_err(|e| protocol_error(e.to_string()))?;
                            self.write(&out).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| protocol_error("SASL continue without a start"))?;
                            s.update(b).map_err(|e| Error::Replication {
                                transient: false,
                                message: format!("SCRAM authentication: {e}"),
                            })?;
                            let mut out = BytesMut::new();
                            frontend::sasl_response(s.message(), &mut out)
                                .map_err(|e| protocol_error(e.to_string()))?;
                            self.write(&out).await?;
                        }
                        12 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| protocol_error("SASL final without a start"))?;
                            s.finish(b).map_err(|e| Error::Replication {
                                transient: false,
                                message: format!(
                                    "SCRAM authentication: the server's proof is wrong: {e}"
                                ),
                            })?;
                            scram_verified = true;
                        }
                        other => {
                            return Err(Error::Replication {
                                transient: false,
                                message: format!(
                                    "the server asks for authentication method {other}, which \
                                     lakets does not speak (use scram-sha-256, md5 or trust)"
                                ),
                            });
                        }
                    }
                }
                b'E' => {
                    return Err(server_error("opening the replication connection", &body));
                }
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse.
                _ => {}
            }
        }
    }

    async fn start_replication(&mut self, settings: &SourceSettings) -> Result<()> {
        // Protocol version 1: no streaming of in-progress transactions (see transaction.rs).
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {}, \
             binary '{}', messages 'true')",
            quote_ident(&settings.slot),
            quote_literal(&quote_ident(&settings.publication)),
            settings.binary
        );
        let mut out = BytesMut::new();
        frontend::query(&command, &mut out).map_err(|e| protocol_error(e.to_string()))?;
        self.write(&out).await?;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => {
                    return Err(server_error(
                        &format!("starting replication from slot {}", settings.slot),
                        &body,
                    ));
                }
                _ => {}
            }
        }
    }

    /// The next XLogData frame, or `None` when a keepalive moved the received position
    /// or something woke the consumer. Cancel-safe: what was read stays in the buffer.
    pub async fn next_frame(&mut self) -> Result<Option<WalFrame>> {
        loop {
            if let Some(frame) = self.parse_frame()? {
                return Ok(Some(frame));
            }
            if self.reply_requested {
                self.reply_requested = false;
                self.send_status(false).await?;
            }
            if std::mem::take(&mut self.keepalive_seen) {
                return Ok(None);
            }
            let wake = self.wake.clone();
            let read = tokio::select! {
                read = self.stream.read_buf(&mut self.buf) => read,
                _ = wake.notified() => return Ok(None),
            };
            let n = read.map_err(|e| io_error("reading the replication stream", e))?;
            if n == 0 {
                return Err(Error::Replication {
                    transient: true,
                    message: "the server closed the replication connection".into(),
                });
            }
        }
    }

    /// Takes the next complete frame out of the buffer; skips what an oversized frame
    /// holds beyond its head, as it arrives.
    fn parse_frame(&mut self) -> Result<Option<WalFrame>> {
        loop {
            if let Some(skip) = &mut self.skipping {
                let n = skip.remaining.min(self.buf.len());
                self.buf.advance(n);
                skip.remaining -= n;
                if skip.remaining > 0 {
                    return Ok(None);
                }
                self.skipping = None;
            }
            if self.buf.len() < 5 {
                return Ok(None);
            }
            let tag = self.buf[0];
            let len = i32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
            if len < 4 {
                return Err(protocol_error(format!("a message of length {len}")));
            }
            let total = len as usize + 1;
            if tag == b'd' && total > self.max_message {
                // Decide from the frame's head (its XLogData header and pgoutput type,
                // and a logical message's prefix), then skip the rest.
                const HEAD: usize = 5 + 25 + 1 + 8 + 256 + 5;
                if self.buf.len() < HEAD.min(total) {
                    self.buf.reserve(HEAD);
                    return Ok(None);
                }
                let frame = self.oversized_frame(total)?;
                self.skipping = Some(Skipping { remaining: total });
                return Ok(Some(frame));
            }
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            let mut message = self.buf.split_to(total);
            message.advance(5);
            match tag {
                b'd' => {
                    if let Some(frame) = self.copy_data(message.freeze())? {
                        return Ok(Some(frame));
                    }
                }
                b'E' => {
                    return Err(server_error("reading the replication stream", &message));
                }
                b'c' => {
                    return Err(Error::Replication {
                        transient: true,
                        message: "the server ended the replication stream".into(),
                    });
                }
                _ => {} // notices
            }
        }
    }

    /// An XLogData frame's payload, or a keepalive (answered when asked).
    fn copy_data(&mut self, mut body: Bytes) -> Result<Option<WalFrame>> {
        match body.first() {
            Some(b'w') if body.len() >= 25 => {
                body.advance(1);
                let wal_start = Lsn(body.get_u64());
                let wal_end = Lsn(body.get_u64());
                let _send_time = body.get_i64();
                self.received = self.received.max(wal_end.max(wal_start));
                Ok(Some(WalFrame {
                    wal_start,
                    wal_end,
                    data: body,
                    oversized: None,
                }))
            }
            Some(b'k') if body.len() >= 18 => {
                body.advance(1);
                let wal_end = Lsn(body.get_u64());
                let _send_time = body.get_i64();
                if body.get_u8() != 0 {
                    self.reply_requested = true;
                }
                if wal_end > self.received {
                    self.received = wal_end;
                    self.keepalive_seen = true;
                }
                Ok(None)
            }
            _ => Err(protocol_error("an unknown CopyData message")),
        }
    }

    /// The frame for an oversized XLogData message, from its head in the buffer.
    fn oversized_frame(&mut self, total: usize) -> Result<WalFrame> {
        let head = &self.buf[5..];
        if head.first() != Some(&b'w') || head.len() < 26 {
            return Err(protocol_error(format!("an oversized {total}-byte message")));
        }
        let wal_start = Lsn(u64::from_be_bytes(head[1..9].try_into().expect("8 bytes")));
        let wal_end = Lsn(u64::from_be_bytes(head[9..17].try_into().expect("8 bytes")));
        self.received = self.received.max(wal_end.max(wal_start));
        let data = &head[25..];
        let kind = data[0];
        let bytes = total - 5 - 25;
        if kind == b'M' && data.len() > 10 {
            // flags(1) lsn(8) prefix\0 length(4) content. lakets' own messages are a few
            // bytes (an announcement id), so no oversized message is one: any role can
            // emit one, with any prefix, and none may stop the stream. Pass on its head,
            // content cut off; lakets' prefix is dropped too, and counted as a forgery.
            let rest = &data[10..];
            let prefix = rest.iter().position(|&b| b == 0).map(|end| &rest[..end]);
            let ours = prefix == Some(super::transaction::MESSAGE_PREFIX.as_bytes());
            let shown = prefix.unwrap_or(&[]);
            let mut cut = BytesMut::with_capacity(10 + shown.len() + 5);
            cut.put_slice(&data[..10]);
            if !ours {
                cut.put_slice(shown);
            }
            cut.put_u8(0);
            cut.put_u32(0);
            if ours {
                tracing::warn!(
                    bytes,
                    "skipping an oversized logical message with lakets' prefix: lakets did not write it"
                );
                metrics::counter!("lakets_forged_messages_total").increment(1);
            } else {
                tracing::warn!(
                    bytes,
                    prefix = %String::from_utf8_lossy(shown),
                    complete = prefix.is_some(),
                    "skipping an oversized logical message of another prefix without holding it"
                );
            }
            metrics::counter!("lakets_wal_oversized_messages_skipped_total").increment(1);
            return Ok(WalFrame {
                wal_start,
                wal_end,
                data: cut.freeze(),
                oversized: None,
            });
        }
        let relation_id = match kind {
            b'I' | b'U' | b'D' if data.len() >= 5 => {
                Some(u32::from_be_bytes(data[1..5].try_into().expect("4 bytes")))
            }
            _ => None,
        };
        Ok(WalFrame {
            wal_start,
            wal_end,
            data: Bytes::new(),
            oversized: Some(Oversized {
                kind,
                relation_id,
                bytes,
            }),
        })
    }

    /// Makes a pending (or the next) `next_frame` return `None` at once: something other
    /// than the stream needs the consumer's attention.
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let wake = self.wake.clone();
        move || wake.notify_one()
    }

    /// The highest WAL position the server has told us about (data or keepalive).
    pub fn received_lsn(&self) -> Lsn {
        self.received
    }

    /// Confirms `flushed` to the server: the slot may release WAL before it (zero: only
    /// report that we are alive).
    pub async fn acknowledge(&mut self, flushed: Lsn) -> Result<()> {
        if !flushed.is_zero() {
            self.flushed = self.flushed.max(flushed);
        }
        self.send_status(false).await
    }

    async fn send_status(&mut self, reply: bool) -> Result<()> {
        let now_micros = chrono::Utc::now().timestamp_micros() - PG_EPOCH_OFFSET_MICROS;
        let mut status = BytesMut::with_capacity(34);
        status.put_u8(b'r');
        status.put_u64(self.received.max(self.flushed).0); // written
        status.put_u64(self.flushed.0); // flushed
        status.put_u64(self.flushed.0); // applied
        status.put_i64(now_micros);
        status.put_u8(u8::from(reply));
        let mut out = BytesMut::with_capacity(40);
        out.put_u8(b'd');
        out.put_i32(4 + status.len() as i32);
        out.put_slice(&status);
        self.write(&out).await
    }
}

/// Opens the socket (TCP or Unix) and, as `sslmode` says, TLS.
async fn connect(config: &DbConfig) -> Result<Pin<Box<dyn Stream>>> {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let target = crate::db::describe_target(config);
    let context = |e: std::io::Error| Error::Replication {
        transient: true,
        message: format!("opening the replication connection to {target}: {e}"),
    };
    match config.get_hosts().first() {
        Some(Host::Unix(dir)) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let socket = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(context)?;
            Ok(Box::pin(socket))
        }
        host => {
            let host = match host {
                Some(Host::Tcp(h)) => h.clone(),
                _ => "localhost".into(),
            };
            let mut socket = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(context)?;
            let _ = socket.set_nodelay(true);
            let tls = config.tls();
            let Some(client) = crate::db::tls::client_config(tls)? else {
                return Ok(Box::pin(socket));
            };
            let mut request = BytesMut::new();
            frontend::ssl_request(&mut request);
            socket.write_all(&request).await.map_err(context)?;
            let mut answer = [0u8; 1];
            socket.read_exact(&mut answer).await.map_err(context)?;
            if answer[0] != b'S' {
                if tls.effective_mode() == SslMode::Prefer {
                    return Ok(Box::pin(socket));
                }
                return Err(Error::Replication {
                    transient: false,
                    message: format!(
                        "opening the replication connection to {target}: the server does not \
                         offer TLS, and sslmode={} requires it",
                        tls.mode.as_str()
                    ),
                });
            }
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| Error::invalid(format!("{host:?} is not a host name for TLS: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let tls_stream = connector.connect(name, socket).await.map_err(|e| {
                Error::Replication {
                    // A certificate refused will be refused again.
                    transient: e.kind() != std::io::ErrorKind::InvalidData,
                    message: format!("opening the replication connection to {target}: TLS: {e}"),
                }
            })?;
            Ok(Box::pin(tls_stream))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server in the middle that starts SCRAM and then says "authenticated" without
    /// the proof (SASLFinal) is refused: it could otherwise feed made-up WAL.
    #[tokio::test]
    async fn scram_without_the_servers_proof_is_refused() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let len = sock.read_u32().await.unwrap() as usize;
            let mut startup = vec![0; len - 4];
            sock.read_exact(&mut startup).await.unwrap();
            let auth = |code: i32, rest: &[u8]| {
                let mut m = vec![b'R'];
                m.extend_from_slice(&((8 + rest.len()) as i32).to_be_bytes());
                m.extend_from_slice(&code.to_be_bytes());
                m.extend_from_slice(rest);
                m
            };
            sock.write_all(&auth(10, b"SCRAM-SHA-256\0\0"))
                .await
                .unwrap();
            let tag = sock.read_u8().await.unwrap();
            assert_eq!(tag, b'p', "the client answers with its SCRAM first message");
            let len = sock.read_u32().await.unwrap() as usize;
            let mut first = vec![0; len - 4];
            sock.read_exact(&mut first).await.unwrap();
            sock.write_all(&auth(0, b"")).await.unwrap();
            // Hold the connection until the client gives up on it.
            let mut rest = Vec::new();
            let _ = sock.read_to_end(&mut rest).await;
        });
        let config = crate::db::parse_config(&format!(
            "host=127.0.0.1 port={port} user=u password=secret dbname=d sslmode=disable"
        ))
        .unwrap();
        let err = match WalSource::start(&config, &SourceSettings::new("s", "p")).await {
            Ok(_) => panic!("a connection without the server's proof was accepted"),
            Err(e) => e,
        };
        assert!(
            err.to_string()
                .contains("without proving it knows the password"),
            "{err}"
        );
        server.abort();
    }

    #[test]
    fn server_errors_keep_code_message_detail_and_hint() {
        let mut body = Vec::new();
        for (k, v) in [
            (b'S', "ERROR"),
            (b'C', "55006"),
            (b'M', "replication slot \"s\" is active for PID 7"),
            (b'H', "wait"),
        ] {
            body.push(k);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let (code, text) = parse_error(&body);
        assert_eq!(code, "55006");
        assert_eq!(
            text,
            "ERROR replication slot \"s\" is active for PID 7 (hint: wait)"
        );
        assert!(transient_sqlstate(&code));
        assert!(!transient_sqlstate("42704"));
    }

    #[test]
    fn replication_commands_quote_what_they_name() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal(&quote_ident("it's")), "'\"it''s\"'");
    }
}
