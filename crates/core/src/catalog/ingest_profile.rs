//! `lakets._ingest_profile`: the ingest profile (symbols, rate, burst) a running
//! `lakets ingest` follows, changed by the gRPC API (`Admin.SetIngestProfile`), and what
//! the ingest last reported.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, PgResultExt, Result};

const PROFILE_NAME: &str = "default";

/// The most rows per second a profile may ask of one ingest connection.
pub const MAX_RATE: u64 = 10_000_000;

/// What a running ingest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IngestProfile {
    pub symbols: u32,
    /// Rows per second.
    pub rate: u64,
    pub burst: bool,
}

/// `lakets ingest`'s defaults: what a change names no value for starts from, when no
/// profile is stored yet.
impl Default for IngestProfile {
    fn default() -> Self {
        IngestProfile {
            symbols: 10,
            rate: 1000,
            burst: false,
        }
    }
}

impl IngestProfile {
    pub fn validate(&self) -> Result<()> {
        if !(1..=100_000).contains(&self.symbols) {
            return Err(Error::invalid(format!(
                "symbols must be between 1 and 100000, got {}",
                self.symbols
            )));
        }
        if self.rate > MAX_RATE {
            return Err(Error::invalid(format!(
                "rate {} rows/s is beyond what one ingest connection can write; use at most {MAX_RATE}",
                self.rate
            )));
        }
        Ok(())
    }
}

/// The stored profile, with what the running ingest last reported.
#[derive(Debug, Clone, Serialize)]
pub struct StoredProfile {
    pub profile: IngestProfile,
    pub achieved_rate: f64,
    pub total_rows: u64,
}

/// The stored profile, if any.
pub async fn get_profile(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Option<StoredProfile>> {
    crate::catalog::check_installed(client).await?;
    let row = client
        .query_opt(
            "SELECT symbols, rate, burst, coalesce(achieved_rate, 0), total_rows
               FROM lakets._ingest_profile WHERE name = $1",
            &[&PROFILE_NAME],
        )
        .await
        .pg_context(|| "reading the ingest profile".into())?;
    Ok(row.map(|r| StoredProfile {
        profile: IngestProfile {
            symbols: r.get::<_, i32>(0) as u32,
            rate: r.get::<_, i64>(1) as u64,
            burst: r.get(2),
        },
        achieved_rate: r.get(3),
        total_rows: r.get::<_, i64>(4) as u64,
    }))
}

/// Changes the profile a running ingest follows (or the next one starts with).
pub async fn set_profile(
    client: &impl tokio_postgres::GenericClient,
    profile: IngestProfile,
) -> Result<()> {
    profile.validate()?;
    crate::catalog::check_installed(client).await?;
    client
        .execute(
            "INSERT INTO lakets._ingest_profile (name, symbols, rate, burst) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE
                SET symbols = excluded.symbols, rate = excluded.rate, burst = excluded.burst,
                    updated_at = now()",
            &[
                &PROFILE_NAME,
                &(profile.symbols as i32),
                &(profile.rate as i64),
                &profile.burst,
            ],
        )
        .await
        .pg_context(|| "storing the ingest profile".into())?;
    Ok(())
}

/// Fields of the profile to change; `None` keeps the stored value (the default when no
/// profile is stored yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfileChange {
    pub symbols: Option<u32>,
    pub rate: Option<u64>,
    pub burst: Option<bool>,
}

/// Changes the named fields in one statement (two changes of different fields both land,
/// whatever their order) and returns the profile now stored.
pub async fn change_profile(
    client: &impl tokio_postgres::GenericClient,
    change: ProfileChange,
) -> Result<IngestProfile> {
    let defaults = IngestProfile::default();
    IngestProfile {
        symbols: change.symbols.unwrap_or(defaults.symbols),
        rate: change.rate.unwrap_or(defaults.rate),
        burst: change.burst.unwrap_or(defaults.burst),
    }
    .validate()?;
    crate::catalog::check_installed(client).await?;
    let row = client
        .query_one(
            "INSERT INTO lakets._ingest_profile AS p (name, symbols, rate, burst)
             VALUES ($1, coalesce($2::int4, $5::int4), coalesce($3::int8, $6::int8),
                     coalesce($4::bool, $7::bool))
             ON CONFLICT (name) DO UPDATE
                SET symbols = coalesce($2::int4, p.symbols), rate = coalesce($3::int8, p.rate),
                    burst = coalesce($4::bool, p.burst), updated_at = now()
             RETURNING symbols, rate, burst",
            &[
                &PROFILE_NAME,
                &change.symbols.map(|n| n as i32),
                &change.rate.map(|n| n as i64),
                &change.burst,
                &(defaults.symbols as i32),
                &(defaults.rate as i64),
                &defaults.burst,
            ],
        )
        .await
        .pg_context(|| "changing the ingest profile".into())?;
    Ok(IngestProfile {
        symbols: row.get::<_, i32>(0) as u32,
        rate: row.get::<_, i64>(1) as u64,
        burst: row.get(2),
    })
}

/// Records what the running ingest achieved and returns the profile it should follow now.
pub async fn report_and_poll(
    client: &Client,
    achieved: f64,
    total: u64,
) -> Result<Option<IngestProfile>> {
    let row = client
        .query_opt(
            "UPDATE lakets._ingest_profile
                SET achieved_rate = $2, total_rows = $3, reported_at = now()
              WHERE name = $1
             RETURNING symbols, rate, burst",
            &[&PROFILE_NAME, &achieved, &(total as i64)],
        )
        .await
        .pg_context(|| "reporting ingest progress".into())?;
    Ok(row.map(|r| IngestProfile {
        symbols: r.get::<_, i32>(0) as u32,
        rate: r.get::<_, i64>(1) as u64,
        burst: r.get(2),
    }))
}
