//! The service around the features: its configuration (`lakets.toml`, the environment,
//! reconciliation into the catalog), the long-running service (the pipeline, the jobs, the
//! listeners, started and stopped together), the gRPC API, the HTTP endpoint (metrics,
//! probes) and the status report.

pub mod config;
pub mod dashboard;
pub mod grpc;
pub mod http;
pub mod leadership;
pub mod report;
pub mod series;
pub mod service;
pub mod state;
pub mod status;

// The layers below, under the names this crate's modules use.
use lakets_core::{db, delta, error, ident, interval, wal};
