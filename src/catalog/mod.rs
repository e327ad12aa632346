//! The `lakets` schema in PostgreSQL: migrations and the registries kept there.

pub mod announce;
pub mod migrations;
pub mod registry;
pub mod replication;

pub use migrations::{check_installed, latest_version, migrate};
