//! The `lakets` schema in PostgreSQL: migrations and the registries kept there. The only
//! home of SQL over lakets' own tables (`lakets._*`); the features call the typed
//! functions here (`.ci/check-layers` fails on such SQL elsewhere under `crates/`).
//!
//! One module per table (or pair of tables kept together):
//! - `_chronotable_registry` and `_chunk_metadata`: [`registry`];
//! - `_sync_registry` (the Delta mirrors): [`sync_registry`];
//! - `_lvc_registry` (the Last Value Caches): [`lvc_registry`];
//! - `_rollup_registry` and `_rollup_invalidation_log`: [`rollup_registry`];
//! - `_retention_policies`: [`retention_policies`];
//! - `_job_runs`: [`job_runs`];
//! - `_sink_progress` (the operators' durable positions): [`progress`];
//! - `_replication` and `_stream_gaps` (slots, publications, gaps): [`replication`];
//! - `_announcements` (configuration changes in the stream): [`announce`];
//! - `_ingest_profile`: [`ingest_profile`];
//! - `_instances` and `_leaders` (the processes of a stream, and which one leads): [`instances`];
//! - the schema itself: [`migrations`].

pub mod announce;
pub mod ingest_profile;
pub mod instances;
pub mod job_runs;
pub mod lvc_registry;
pub mod migrations;
pub mod progress;
pub mod registry;
pub mod replication;
pub mod retention_policies;
pub mod rollup_registry;
pub mod sync_registry;

pub use migrations::{check_installed, latest_version, migrate};
