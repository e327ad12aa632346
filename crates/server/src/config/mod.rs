//! The service's declarative configuration: one TOML file (`lakets run --config FILE`),
//! every key overridable by a `LAKETS_*` environment variable ([`env`]), reconciled with
//! the database at start ([`reconcile`]).
//!
//! Layers, later wins: built-in defaults, the file, the environment, command-line flags.
//! Secrets never live in the file: the database password comes from `PGPASSWORD` or the
//! file named by `database.password_file`, the admin token from `LAKETS_GRPC_ADMIN_TOKEN`
//! or the file named by `grpc.admin_token_file`.

pub mod env;
pub mod reconcile;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ident::{QualifiedName, parse_identifier};
use crate::interval::Interval;

/// The whole configuration. Unknown keys are refused (a typo must not silently become a
/// default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseSection,
    pub service: ServiceSection,
    pub log: LogSection,
    pub http: HttpSection,
    pub grpc: GrpcSection,
    pub jobs: JobsSection,
    pub tables: Vec<TableSpec>,
    pub rollups: Vec<RollupSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `postgres://user@host:port/db` or a libpq key=value string, without a password.
    pub url: Option<String>,
    /// A file holding the password (a mounted Kubernetes secret, a systemd credential).
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSection {
    /// Replication slot; default `lakets_<database>`.
    pub slot: Option<String>,
    pub publication: String,
    pub protocol: Protocol,
    /// Operators store their state at least this often.
    pub flush_interval: Interval,
    /// A change (or logical message) larger than this on the wire is never held: another
    /// role's message is skipped as it arrives, a row stops the stream naming its table.
    pub max_message_bytes: ByteSize,
    /// How long the instance that streams holds the lead without renewing it: past it, a
    /// standby of the same stream takes over (at once when the leader's session is gone).
    pub leader_lease: Interval,
}

impl Default for ServiceSection {
    fn default() -> Self {
        ServiceSection {
            slot: None,
            publication: crate::wal::slot::DEFAULT_PUBLICATION.into(),
            protocol: Protocol::Binary,
            flush_interval: Interval::from_secs(1),
            max_message_bytes: ByteSize(crate::wal::source::DEFAULT_MAX_MESSAGE_BYTES as u64),
            leader_lease: Interval::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Binary,
    Text,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// `/metrics`, `/healthz`, `/readyz`; "off" disables.
    pub listen: String,
    /// `lakets_slot_retained_wal_warning_bytes`; the alert rules compare against it.
    pub retained_wal_warning: ByteSize,
    /// `/readyz` fails while replication lags more than this.
    pub ready_max_lag: Interval,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "127.0.0.1:9187".into(),
            retained_wal_warning: ByteSize(8 << 30),
            ready_max_lag: Interval::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSection {
    /// "off" disables.
    pub listen: String,
    pub admin_token_file: Option<PathBuf>,
    /// When set, the Last Value Cache's calls need this token (or the admin token).
    pub read_token_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// A listener beyond loopback without TLS is refused unless this says the network
    /// is trusted (the admin token then travels in clear text).
    pub allow_plaintext: bool,
    /// Subscribers served at once; one more is refused (RESOURCE_EXHAUSTED).
    pub max_subscribers: usize,
    /// SQL sessions the admin calls share.
    pub admin_sessions: usize,
}

impl Default for GrpcSection {
    fn default() -> Self {
        GrpcSection {
            listen: "127.0.0.1:50051".into(),
            admin_token_file: None,
            read_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            allow_plaintext: false,
            max_subscribers: 64,
            admin_sessions: 4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Run the scheduled jobs here (one leader among the instances sharing a database).
    pub enabled: bool,
    /// Each job's interval; "0 seconds" disables that job.
    pub partitions_every: Interval,
    pub rollups_every: Interval,
    pub tiering_every: Interval,
    pub retention_every: Interval,
    pub maintenance_every: Interval,
    /// How long the durability gate waits for the consumer to confirm a chunk's writes.
    pub gate_wait: Interval,
    /// Unreferenced Delta files older than this are vacuumed.
    pub vacuum_retention: Interval,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            enabled: true,
            partitions_every: Interval::from_secs(60),
            rollups_every: Interval::from_secs(60),
            tiering_every: Interval::from_secs(60),
            retention_every: Interval::from_secs(300),
            maintenance_every: Interval::from_secs(600),
            gate_wait: Interval::from_secs(15),
            vacuum_retention: Interval::days(1),
        }
    }
}

impl JobsSection {
    pub fn schedule(&self) -> lakets_core::jobs::Schedule {
        let every = |i: Interval| (!i.is_zero()).then(|| i.as_std());
        lakets_core::jobs::Schedule {
            partitions: every(self.partitions_every),
            rollups: every(self.rollups_every),
            tiering: every(self.tiering_every),
            retention: every(self.retention_every),
            maintenance: every(self.maintenance_every),
            gate: lakets_core::lifecycle::GateSettings {
                wait: self.gate_wait.as_std(),
                ..Default::default()
            },
            vacuum_retention: self.vacuum_retention.as_std(),
        }
    }
}

/// A table lakets manages: it must exist; lakets makes it a ChronoTable if it is not one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// `[schema.]name`.
    pub name: String,
    pub time_column: String,
    #[serde(default = "default_chunk_interval")]
    pub chunk_interval: Interval,
    #[serde(default = "default_premake")]
    pub premake: i32,
    #[serde(default)]
    pub lvc: Option<LvcSpec>,
    #[serde(default)]
    pub sync: Option<SyncSpec>,
    #[serde(default)]
    pub policy: Option<PolicySpec>,
}

fn default_chunk_interval() -> Interval {
    Interval::days(7)
}

fn default_premake() -> i32 {
    lakets_core::chronotable::DEFAULT_PREMAKE
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LvcSpec {
    pub key: Vec<String>,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncSpec {
    /// A local path, file://, s3://, gs:// or az:// URI.
    pub to: String,
    #[serde(default = "default_partition_by")]
    pub partition_by: String,
    /// This cluster's name in a Delta table several clusters share (`sync enable
    /// --source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Create the Delta table with Change Data Feed (`sync enable --change-data-feed`).
    /// An existing table keeps its protocol: `lakets sync upgrade` changes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub change_data_feed: bool,
    /// Create the Delta table with deletion vectors (`sync enable --deletion-vectors`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deletion_vectors: bool,
}

fn default_partition_by() -> String {
    "day".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub tier_after: Option<Interval>,
    pub drop_after: Option<Interval>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RollupSpec {
    pub name: String,
    /// A table of `[[tables]]` or an earlier rollup.
    pub source: String,
    pub bucket: Interval,
    #[serde(default)]
    pub group_by: Vec<String>,
    pub aggregate: String,
    #[serde(default = "zero_interval")]
    pub refresh_lag: Interval,
}

fn zero_interval() -> Interval {
    Interval::ZERO
}

/// A size in bytes, written as a number or as "8 GB", "512 MiB", ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| {
            Error::invalid(format!(
                "{text:?} is not a size: expected a number of bytes or one like \"8 GB\""
            ))
        })?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            other => {
                return Err(Error::invalid(format!(
                    "{text:?}: unknown size unit {other:?} (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
                )));
            }
        };
        Ok(ByteSize((number * factor as f64) as u64))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl Config {
    /// Reads `path` (if any), applies the `LAKETS_*` environment, and checks everything
    /// that can be checked without a database.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    pub fn load_with_env(path: Option<&Path>, vars: &[(String, String)]) -> Result<Config> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| {
                    Error::io(format!("reading the config file {}", p.display()), e)
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "the built-in defaults".to_string()),
        };
        Self::parse_with_env(&text, &origin, vars)
    }

    /// Parses TOML `text` (from `origin`, for messages) with the environment `vars`.
    pub fn parse_with_env(text: &str, origin: &str, vars: &[(String, String)]) -> Result<Config> {
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e| Error::invalid(format!("config {origin}: {e}")))?;
        // A password in the file itself is refused (a config file is often world-readable
        // and committed); the environment may carry a whole URL.
        if let Some(url) = doc
            .get("database")
            .and_then(|d| d.get("url"))
            .and_then(|u| u.as_str())
            && crate::db::url_has_password(url)
        {
            return Err(Error::invalid(format!(
                "config {origin}: database.url contains a password; put it in \
                 database.password_file or PGPASSWORD (a config file is often world-readable \
                 and committed)"
            )));
        }
        let applied = env::apply(&mut doc, vars)?;
        let config: Config = toml::from_str(&doc.to_string()).map_err(|e| {
            let from_env = if applied.is_empty() {
                String::new()
            } else {
                format!(" (with {} from the environment)", applied.join(", "))
            };
            Error::invalid(format!("config {origin}{from_env}: {e}"))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that need no database: names, intervals, references between entries.
    pub fn validate(&self) -> Result<()> {
        fn bad<T>(what: String) -> Result<T> {
            Err(Error::invalid(format!("config: {what}")))
        }
        if let Some(slot) = &self.service.slot {
            crate::wal::slot::check_slot_name(slot)
                .or_else(|e| bad(format!("service.slot: {e}")))?;
        }
        parse_identifier(&self.service.publication)
            .or_else(|e| bad(format!("service.publication: {e}")))?;
        if self.service.flush_interval.is_zero() || self.service.flush_interval.as_micros() < 0 {
            return bad("service.flush_interval must be positive".into());
        }
        let lease = self.service.leader_lease.as_micros();
        if !(1_000_000..=600_000_000).contains(&lease) {
            return bad(format!(
                "service.leader_lease = {} is outside 1 second..10 minutes: shorter, a busy \
                 database would depose a healthy leader; longer, a frozen leader holds the \
                 stream that long",
                self.service.leader_lease
            ));
        }
        // Below 1 MB an ordinary wide row would stop the stream; the ceiling is what the
        // protocol's 32-bit lengths and PostgreSQL's 1 GB field limit allow.
        let max_message = self.service.max_message_bytes.0;
        if !(1_000_000..=1 << 30).contains(&max_message) {
            return bad(format!(
                "service.max_message_bytes = {max_message} is outside 1 MB..1 GiB: it bounds \
                 the memory one replication frame may take"
            ));
        }
        if self.grpc.max_subscribers == 0 || self.grpc.admin_sessions == 0 {
            return bad(
                "grpc.max_subscribers and grpc.admin_sessions must be at least 1 \
                 (grpc.listen = \"off\" turns the API off)"
                    .into(),
            );
        }
        for (key, addr) in [
            ("http.listen", &self.http.listen),
            ("grpc.listen", &self.grpc.listen),
        ] {
            if addr != "off" && addr.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!(
                    "{key} = {addr:?} is not an address like 127.0.0.1:9187 (or \"off\")"
                ));
            }
        }
        if self.grpc.tls_cert_file.is_some() != self.grpc.tls_key_file.is_some() {
            return bad("grpc.tls_cert_file and grpc.tls_key_file go together".into());
        }
        for (key, i) in [
            ("jobs.partitions_every", self.jobs.partitions_every),
            ("jobs.rollups_every", self.jobs.rollups_every),
            ("jobs.tiering_every", self.jobs.tiering_every),
            ("jobs.retention_every", self.jobs.retention_every),
            ("jobs.maintenance_every", self.jobs.maintenance_every),
            ("jobs.gate_wait", self.jobs.gate_wait),
            ("jobs.vacuum_retention", self.jobs.vacuum_retention),
            ("http.ready_max_lag", self.http.ready_max_lag),
        ] {
            if i.as_micros() < 0 {
                return bad(format!("{key} = {i} is negative"));
            }
        }
        let mut names = HashSet::new();
        for (n, t) in self.tables.iter().enumerate() {
            let at = format!("tables[{n}] ({})", t.name);
            let q = QualifiedName::parse(&t.name).or_else(|e| bad(format!("{at}: name: {e}")))?;
            if !names.insert((q.schema.clone().unwrap_or_else(|| "public".into()), q.name)) {
                return bad(format!("{at} is listed twice"));
            }
            parse_identifier(&t.time_column).or_else(|e| bad(format!("{at}.time_column: {e}")))?;
            if t.chunk_interval.as_micros() <= 0 {
                return bad(format!("{at}.chunk_interval must be positive"));
            }
            if let Some(lvc) = &t.lvc {
                if lvc.key.is_empty() {
                    return bad(format!("{at}.lvc.key needs at least one column"));
                }
                for c in lvc.key.iter().chain(&lvc.columns) {
                    parse_identifier(c).or_else(|e| bad(format!("{at}.lvc: {e}")))?;
                }
            }
            if let Some(sync) = &t.sync {
                crate::delta::table::parse_location(&sync.to)
                    .or_else(|e| bad(format!("{at}.sync.to: {e}")))?;
                crate::delta::schema::Partitioning::parse(&sync.partition_by)
                    .or_else(|e| bad(format!("{at}.sync.partition_by: {e}")))?;
                if let Some(source) = &sync.source {
                    crate::delta::schema::check_source_name(source)
                        .or_else(|e| bad(format!("{at}.sync.source: {e}")))?;
                }
            }
            if let Some(p) = &t.policy {
                if p.tier_after.is_none() && p.drop_after.is_none() {
                    return bad(format!("{at}.policy needs tier_after, drop_after or both"));
                }
                for (k, v) in [("tier_after", p.tier_after), ("drop_after", p.drop_after)] {
                    if v.is_some_and(|v| v.as_micros() <= 0) {
                        return bad(format!("{at}.policy.{k} must be positive"));
                    }
                }
                if let (Some(tier), Some(drop)) = (p.tier_after, p.drop_after)
                    && drop.as_micros() < tier.as_micros()
                {
                    return bad(format!(
                        "{at}.policy: drop_after ({drop}) is shorter than tier_after ({tier})"
                    ));
                }
                if p.tier_after.is_some() && t.sync.is_none() {
                    return bad(format!(
                        "{at}.policy.tier_after needs a [tables.sync] target to tier into"
                    ));
                }
            }
        }
        let mut rollups = HashSet::new();
        for (n, r) in self.rollups.iter().enumerate() {
            let at = format!("rollups[{n}] ({})", r.name);
            let name = parse_identifier(&r.name).or_else(|e| bad(format!("{at}.name: {e}")))?;
            if !rollups.insert(name) {
                return bad(format!("{at} is listed twice"));
            }
            if r.bucket.as_micros() <= 0 {
                return bad(format!("{at}.bucket must be positive"));
            }
            if r.aggregate.trim().is_empty() {
                return bad(format!("{at}.aggregate is empty"));
            }
        }
        Ok(())
    }

    /// The database URL: the config (or `LAKETS_DATABASE_URL`), else `DATABASE_URL`.
    pub fn database_url(&self) -> Option<String> {
        self.database
            .url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok())
    }

    /// The connection settings, with the password from `database.password_file` or the
    /// environment.
    pub fn database_config(&self) -> Result<crate::db::DbConfig> {
        let url = self.database_url().ok_or_else(|| {
            Error::invalid(
                "no database given: set database.url in the config, LAKETS_DATABASE_URL, \
                 DATABASE_URL or --database-url",
            )
        })?;
        let mut db = crate::db::parse_config(&url)?;
        if db.get_password().is_none()
            && let Some(path) = &self.database.password_file
        {
            db.password(read_secret(path, "database.password_file")?);
        }
        Ok(db)
    }

    /// The admin token for gRPC admin calls, if one is configured.
    pub fn admin_token(&self) -> Result<Option<String>> {
        if let Ok(token) = std::env::var("LAKETS_GRPC_ADMIN_TOKEN")
            && !token.is_empty()
        {
            return Ok(Some(token));
        }
        match &self.grpc.admin_token_file {
            Some(path) => Ok(Some(read_secret(path, "grpc.admin_token_file")?)),
            None => Ok(None),
        }
    }

    /// Who may reach the API: a gRPC listener beyond loopback needs the admin token, and
    /// TLS unless `grpc.allow_plaintext` says the network is trusted (the token would
    /// otherwise travel in clear text). Refused before anything binds.
    pub fn check_listeners(&self) -> Result<()> {
        if self.grpc.listen == "off" {
            return Ok(());
        }
        // Missing files are found now rather than at the first handshake or call (validate
        // has already refused half a pair).
        if let (Some(cert), Some(key)) = (&self.grpc.tls_cert_file, &self.grpc.tls_key_file) {
            for (what, path) in [("grpc.tls_cert_file", cert), ("grpc.tls_key_file", key)] {
                std::fs::metadata(path)
                    .map_err(|e| Error::invalid(format!("{what} {}: {e}", path.display())))?;
            }
        }
        self.read_token()?;
        let addr: std::net::SocketAddr = self
            .grpc
            .listen
            .parse()
            .map_err(|e| Error::invalid(format!("grpc.listen {:?}: {e}", self.grpc.listen)))?;
        if addr.ip().is_loopback() {
            return Ok(());
        }
        if self.admin_token()?.is_none() {
            return Err(Error::invalid(format!(
                "grpc.listen = {:?} is reachable from other hosts, and no admin token is set: \
                 anyone who can reach it could tier chunks and read the service's state. Set \
                 grpc.admin_token_file (or LAKETS_GRPC_ADMIN_TOKEN), or listen on 127.0.0.1",
                self.grpc.listen
            )));
        }
        if self.grpc.tls_cert_file.is_none() && !self.grpc.allow_plaintext {
            return Err(Error::invalid(format!(
                "grpc.listen = {:?} is reachable from other hosts without TLS: the admin token \
                 and the cached rows would cross the network in clear text. Set \
                 grpc.tls_cert_file and grpc.tls_key_file, or grpc.allow_plaintext = true if \
                 the network in between is trusted",
                self.grpc.listen
            )));
        }
        Ok(())
    }

    /// The token the Last Value Cache's calls need (`LAKETS_GRPC_READ_TOKEN` or
    /// `grpc.read_token_file`), if any.
    pub fn read_token(&self) -> Result<Option<String>> {
        if let Ok(token) = std::env::var("LAKETS_GRPC_READ_TOKEN")
            && !token.is_empty()
        {
            return Ok(Some(token));
        }
        match &self.grpc.read_token_file {
            Some(path) => Ok(Some(read_secret(path, "grpc.read_token_file")?)),
            None => Ok(None),
        }
    }

    pub fn flush_interval(&self) -> Duration {
        self.service.flush_interval.as_std()
    }
}

/// Reads a secret file: trimmed, must not be empty.
pub fn read_secret(path: &Path, key: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {key} {}", path.display()), e))?;
    // Kubernetes mounts secrets 0644 by default, so this warns rather than refuses.
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                key,
                path = %path.display(),
                "the secret file is readable by every local user; chmod 600 it"
            );
        }
    }
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(Error::invalid(format!("{key} {} is empty", path.display())));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse_with_env(text, "test.toml", &[])
    }

    #[test]
    fn defaults_need_no_file() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.jobs.retention_every, Interval::from_secs(300));
        assert_eq!(c.http.listen, "127.0.0.1:9187");
    }

    #[test]
    fn full_example_parses() {
        let c = parse(include_str!("../../../../deploy/lakets.example.toml")).unwrap();
        assert_eq!(c.tables.len(), 1);
        assert_eq!(c.tables[0].chunk_interval, Interval::hours(1));
        assert_eq!(c.rollups.len(), 3);
        assert_eq!(c.rollups[1].source, "ohlcv_1min");
    }

    #[test]
    fn shipped_deploy_configs_parse() {
        let c = parse(include_str!("../../../../deploy/systemd/lakets.toml")).unwrap();
        assert!(!c.tables.is_empty());
        let manifest = include_str!("../../../../deploy/kubernetes/configmap.yaml");
        let toml: String = manifest
            .split_once("lakets.toml: |")
            .expect("the ConfigMap embeds lakets.toml")
            .1
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        parse(&toml).unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_with_their_place() {
        let e = parse(
            "[[tables]]\nname = \"t\"\ntime_column = \"time\"\nchunk_intervall = \"1 hour\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("chunk_intervall"), "{e}");
        assert!(e.contains("line 4"), "{e}");
        let e = parse("[servcie]\nslot = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("servcie"), "{e}");
    }

    #[test]
    fn bad_values_say_what_and_why() {
        for (text, expect) in [
            ("[jobs]\ntiering_every = \"soon\"\n", "soon"),
            ("[http]\nlisten = \"localhost\"\n", "http.listen"),
            ("[http]\nretained_wal_warning = \"8 parsecs\"\n", "parsecs"),
            ("[service]\nprotocol = \"xml\"\n", "xml"),
            (
                "[database]\nurl = \"postgres://u:secret@h/db\"\n",
                "password",
            ),
            (
                "[[tables]]\nname = \"t; drop table x\"\ntime_column = \"time\"\n",
                "tables[0]",
            ),
            (
                "[[tables]]\nname = \"t\"\ntime_column = \"time\"\nchunk_interval = \"0 hours\"\n",
                "chunk_interval must be positive",
            ),
            (
                "[[tables]]\nname = \"t\"\ntime_column = \"time\"\n[tables.policy]\ntier_after = \"1 day\"\n",
                "needs a [tables.sync]",
            ),
            (
                "[[tables]]\nname = \"t\"\ntime_column = \"time\"\n[tables.policy]\ndrop_after = \"1 hour\"\ntier_after = \"1 day\"\n[tables.sync]\nto = \"/tmp/x\"\n",
                "shorter than tier_after",
            ),
            (
                "[[tables]]\nname = \"t\"\ntime_column = \"time\"\n[tables.sync]\nto = \"ftp://x/y\"\n",
                "sync.to",
            ),
            (
                "[[tables]]\nname = \"t\"\ntime_column = \"time\"\n[[tables]]\nname = \"public.t\"\ntime_column = \"time\"\n",
                "listed twice",
            ),
            (
                "[[rollups]]\nname = \"r\"\nsource = \"t\"\nbucket = \"1 minute\"\n",
                "aggregate",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(expect), "{text:?}: {e}");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("8 GB").unwrap().0, 8_000_000_000);
        assert_eq!(ByteSize::parse("512MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("42").unwrap().0, 42);
        assert!(ByteSize::parse("GB").is_err());
    }
}
