//! The ground every lakets crate stands on: the error type, SQL identifiers, intervals,
//! and connections to PostgreSQL (settings, TLS, pinned session settings, a bounded pool).
//! No lakets feature lives here.

pub mod db;
pub mod error;
pub mod ident;
pub mod interval;

pub use error::{Error, Result};

/// Chooses rustls' process-wide crypto provider: aws-lc-rs, the one lakets' own TLS
/// configurations name. TLS set up without naming one (tonic's server) otherwise panics,
/// because the object store's HTTP client compiles in ring as well and rustls will not
/// guess between the two. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
