//! What the running service shares with its surfaces (the gRPC API, the probes, the
//! demo's progress line): its own module, so the API and the service that serves it do not
//! depend on each other.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::wal::PipelineStatus;
use lakets_core::lifecycle::GateSettings;
use lakets_core::lvc::view::LvcView;

/// What the API and the probes read.
pub struct ServiceState {
    pub db: crate::db::DbConfig,
    /// The sessions the admin calls share (bounded).
    pub admin_pool: crate::db::pool::Pool,
    pub slot: String,
    pub status: Arc<Mutex<PipelineStatus>>,
    pub lvc: Arc<LvcView>,
    pub gate: GateSettings,
    /// Cancelled when the service stops (ends subscriptions, so shutdown is not held).
    pub shutdown: CancellationToken,
    /// Whether this instance streams, or stands by for another.
    pub role: Arc<Mutex<crate::leadership::Role>>,
}
