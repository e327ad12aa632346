//! The WAL operators lakets runs, in one list ([`COMPONENTS`]). Each receives whole
//! transactions in commit order (as bounded slices) and makes their effects durable
//! together with the end LSN of the last one it applied (the contract:
//! [`lakets_wal::operator`]). Each lives beside its feature:
//! [`crate::chronotable::tracker`], [`crate::lvc::operator`],
//! [`crate::rollup::invalidations`] and [`crate::coldtier::sink`].

use std::sync::{Arc, Mutex};

use crate::catalog::registry::FeatureRegistry;
use crate::coldtier::resync::ResyncReport;
use crate::coldtier::sink::MaintenanceSchedule;
use crate::error::{PgResultExt, Result};
use crate::lvc::view::LvcView;
use crate::wal::pipeline::BoxFuture;
use crate::wal::{Pipeline, PipelineConfig, PipelineStatus};

/// Prepares an operator's SQL session: a stuck lock fails the flush (and restarts the
/// pipeline) instead of hanging it, and every commit is durable before it returns. With a
/// database or role default of `synchronous_commit = off`, a flush could report a position
/// durable that a PostgreSQL crash then loses, and the slot would be confirmed past it.
pub async fn prepare_session(client: &tokio_postgres::Client, operator: &str) -> Result<()> {
    // Set again: the client may come from a caller that did not open it through
    // `crate::db`.
    client
        .batch_execute(&format!(
            "SET lock_timeout = '10s'; {}",
            crate::db::session_set_statements()
        ))
        .await
        .pg_context(|| format!("preparing the session of operator {operator}"))
}

pub use lakets_wal::operator::Operator;

/// A pipeline of lakets: every (re)start of its stream prepared through the catalog
/// ([`crate::catalog::replication::StreamPreparation`]).
pub fn pipeline(db: crate::db::DbConfig, config: PipelineConfig) -> Pipeline {
    Pipeline::new(db, config)
        .with_preparation(Arc::new(crate::catalog::replication::StreamPreparation))
}

/// What a component needs to open its operator.
pub struct Attach<'a> {
    pub db: &'a crate::db::DbConfig,
    pub slot: &'a str,
    /// Where the Last Value Cache publishes (the API's view), when served.
    pub view: Option<Arc<LvcView>>,
    /// When the Delta operator maintains its tables, when it does.
    pub maintenance: Option<MaintenanceSchedule>,
}

/// A boxed future that need not be `Send`: [`Component::resync`] runs on the task of
/// `lakets resync` itself, and the Delta mirror's part awaits a snapshot reader whose
/// future the compiler cannot prove `Send` (an async closure over a borrowed mirror).
pub type LocalBoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// One feature's WAL operator, as the pipeline and the stream's bookkeeping see it. Each
/// is implemented beside its feature and listed once, in [`COMPONENTS`]: adding an
/// operator is one file and one line there (and its tables in the migrations).
pub trait Component: Sync {
    /// The operator's name (its row in `lakets._sink_progress`).
    fn name(&self) -> &'static str;

    /// Opens the operator on a connection of its own and adds it to `pipeline`.
    fn attach<'a>(
        &'a self,
        pipeline: Pipeline,
        ctx: &'a Attach<'a>,
    ) -> BoxFuture<'a, Result<Pipeline>>;

    /// The registry whose rows are state that only an unbroken stream keeps exact: while
    /// it has any, a lost slot is a gap that needs `lakets resync`. `None`: a gap loses
    /// nothing of this operator's.
    fn state_registry(&self) -> Option<FeatureRegistry> {
        None
    }

    /// Rebuilds, after a gap in the stream, the state [`Self::state_registry`] names from
    /// the tables as they are now, and adds what it did to `report` (`lakets resync`,
    /// with the service stopped and the new slot created: see
    /// [`crate::coldtier::resync`]). A component without such state does nothing.
    fn resync<'a>(
        &'a self,
        db: &'a crate::db::DbConfig,
        client: &'a mut tokio_postgres::Client,
        report: &'a mut ResyncReport,
    ) -> LocalBoxFuture<'a, Result<()>> {
        let _ = (db, client, report);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Every operator lakets runs, in the order the pipeline feeds them.
pub static COMPONENTS: &[&dyn Component] = &[
    &crate::chronotable::tracker::COMPONENT,
    &crate::lvc::operator::COMPONENT,
    &crate::rollup::invalidations::COMPONENT,
    &crate::coldtier::sink::COMPONENT,
];

/// A pipeline with every operator of [`COMPONENTS`], each on its own connection,
/// reporting into `status` (kept across restarts) and, when given, publishing the LVC to
/// `view`.
pub async fn standard_pipeline(
    db: &crate::db::DbConfig,
    config: PipelineConfig,
    status: Arc<Mutex<PipelineStatus>>,
    view: Option<Arc<LvcView>>,
) -> Result<Pipeline> {
    pipeline_with_maintenance(db, config, status, view, None).await
}

/// [`standard_pipeline`], with the Delta operator maintaining its tables on `maintenance`.
pub async fn pipeline_with_maintenance(
    db: &crate::db::DbConfig,
    config: PipelineConfig,
    status: Arc<Mutex<PipelineStatus>>,
    view: Option<Arc<LvcView>>,
    maintenance: Option<MaintenanceSchedule>,
) -> Result<Pipeline> {
    let slot = config.source.slot.clone();
    let ctx = Attach {
        db,
        slot: &slot,
        view,
        maintenance,
    };
    let mut pipeline = pipeline(db.clone(), config).with_status(status);
    for component in COMPONENTS {
        pipeline = component.attach(pipeline, &ctx).await?;
    }
    Ok(pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_is_listed_once_under_its_progress_name() {
        let names: Vec<_> = COMPONENTS.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["chunk_tracker", "lvc", "invalidations", "delta"]);
        // A gap matters to the features that keep state, not to the chunk tracker.
        let registries: Vec<_> = COMPONENTS
            .iter()
            .filter_map(|c| c.state_registry())
            .collect();
        assert_eq!(
            registries,
            [
                FeatureRegistry::Lvc,
                FeatureRegistry::Rollup,
                FeatureRegistry::Sync
            ]
        );
    }
}
