//! The `lakets` schema in PostgreSQL: migrations and the registries kept there.

pub mod announce;
pub mod ingest_profile;
pub mod migrations;
pub mod progress;
pub mod registry;
pub mod replication;

pub use migrations::{check_installed, latest_version, migrate};
