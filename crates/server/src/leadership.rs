//! Which `lakets run` of a stream works. Every instance of the same config serves its
//! probes, metrics and API; one of them, the leader, also streams the slot and runs the
//! jobs, under a lease it renews in the database (`lakets_core::catalog::instances`). The
//! others stand by and take the lead when the lease runs out, or at once when the
//! leader's session is gone (a process killed closes its connections).
//!
//! A leader that cannot renew in time (frozen, cut off from the database) stops its work
//! without flushing: past its lease a standby may already stream, and a window flushed
//! now would be stale. What it had written but not committed is dropped; what it commits
//! anyway on its way down is fenced twice: the new leader ends its sessions (their
//! transactions roll back, its stream closes), and a Delta commit meets the new leader's
//! commits of the same stream as a conflict and is refused (see
//! `lakets_delta::table::try_commit`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::{Error, Result};
use lakets_core::catalog::instances;

/// What this instance does for its stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Role {
    /// Not yet known (the database not reached yet).
    Starting,
    /// Another instance leads (`leader`, when known).
    Standby { leader: Option<String> },
    /// This instance streams and runs the jobs.
    Active { epoch: i64 },
}

/// The work a leader does: started when it takes the lead, stopped when it loses it.
pub type Work = Vec<(&'static str, JoinHandle<Result<()>>)>;

/// One instance's part in the election of its stream.
pub struct Leadership {
    pub db: crate::db::DbConfig,
    pub slot: String,
    /// This process (`host:pid:tag`), as `lakets status` lists it.
    pub instance: String,
    pub lease: Duration,
    pub role: Arc<Mutex<Role>>,
    /// The pipeline's status, which a deposed leader's aborted pipeline cannot reset.
    pub status: Arc<Mutex<crate::wal::PipelineStatus>>,
}

/// A lead held: its epoch, the work, and when the lease was last renewed (the moment the
/// renewal was asked for: the lease runs from no later than that).
struct Term {
    epoch: i64,
    stop: CancellationToken,
    work: Work,
    renewed: Instant,
}

/// The name every session of `instance` carries (`application_name`, which the server
/// cuts at 63 bytes): a new leader ends the deposed one's sessions by it.
pub fn application_name(base: &str, instance: &str) -> String {
    // Cut from the front of the host, not the end: the pid and tag tell instances apart.
    let mut instance = instance;
    while base.len() + 1 + instance.len() > 63 && !instance.is_empty() {
        let next = instance.chars().next().map_or(1, char::len_utf8);
        instance = &instance[next..];
    }
    format!("{base} {instance}")
}

/// `call`, or an error when it has not answered within `budget`.
async fn bounded<T>(
    budget: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(budget, call)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Operator(format!(
                "{what} did not answer within {budget:?}"
            )))
        })
}

impl Leadership {
    /// Takes part until `shutdown`: leads when it can (`start` begins the work, stopped
    /// through the token it is given), stands by otherwise. On shutdown a leader stops
    /// its work cleanly (flush, acknowledge) and gives the lead up. Returns the work's
    /// first error (a definite one that stopped the stream).
    pub async fn run(
        self,
        mut start: impl FnMut(CancellationToken) -> Work,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let application = self
            .db
            .get_application_name()
            .unwrap_or("lakets")
            .to_string();
        let tick = (self.lease / 5).max(Duration::from_millis(200));
        let lease_ms = self.lease.as_millis() as i64;
        let mut session: Option<tokio_postgres::Client> = None;
        let mut term: Option<Term> = None;
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            first = false;
            // Self-fencing first: after a freeze the lease may have passed to another. A
            // tick early, since the loop looks only once a tick.
            if let Some(t) = &term
                && t.renewed.elapsed() >= self.lease.saturating_sub(tick)
            {
                warn!(instance = %self.instance, epoch = t.epoch, "the lease ran out before it was renewed; stopping the work unflushed");
                self.depose(term.take(), None).await;
            }
            // No call may outlast a tick, nor the lease left: a leader cut off from the
            // database must reach the check above in time, not hang in a call.
            let budget = term.as_ref().map_or(tick, |t| {
                self.lease
                    .saturating_sub(t.renewed.elapsed())
                    .clamp(Duration::from_millis(1), tick)
            });
            if session.as_ref().is_none_or(|c| c.is_closed()) {
                session =
                    match bounded(budget, "connecting", crate::db::connect_with(&self.db)).await {
                        Ok(client) => Some(client),
                        Err(e) => {
                            warn!(error = %e, "leadership: cannot reach the database");
                            continue;
                        }
                    };
            }
            let client = session.as_ref().expect("connected above");
            if let Err(e) = bounded(
                budget,
                "the heartbeat",
                instances::heartbeat(client, &self.slot, &self.instance, &application),
            )
            .await
            {
                warn!(error = %e, "leadership: heartbeat failed");
                session = None;
                continue;
            }
            match &mut term {
                Some(t) => {
                    let asked = Instant::now();
                    match bounded(
                        budget,
                        "renewing the lease",
                        instances::renew(client, &self.slot, &self.instance, t.epoch, lease_ms),
                    )
                    .await
                    {
                        Ok(true) => t.renewed = asked,
                        Ok(false) => {
                            let leader = self.leader(client).await;
                            warn!(instance = %self.instance, epoch = t.epoch, leader = ?leader, "deposed: another instance leads the stream; stopping the work unflushed");
                            self.depose(term.take(), leader).await;
                        }
                        Err(e) => {
                            warn!(error = %e, "leadership: renewing the lease failed");
                            session = None;
                            continue;
                        }
                    }
                    // Work that ended on its own (a definite error it reports) keeps the
                    // lead: a standby would meet the same error.
                }
                None => {
                    // The lease runs from no later than the moment it is asked for.
                    let asked = Instant::now();
                    match bounded(
                        budget,
                        "taking the lead",
                        instances::try_lead(client, &self.slot, &self.instance, lease_ms),
                    )
                    .await
                    {
                        Ok(Some((epoch, previous))) => {
                            if let Some(previous) = &previous {
                                match instances::fence(client, &self.slot, previous).await {
                                    Ok(ended) => {
                                        info!(deposed = %previous, sessions = ended, "ended the sessions of the instance that led before")
                                    }
                                    Err(e) => {
                                        warn!(deposed = %previous, error = %e, "could not end the sessions of the instance that led before")
                                    }
                                }
                            }
                            info!(instance = %self.instance, epoch, previous = ?previous, "leading the stream");
                            metrics::counter!("lakets_leader_takeovers_total").increment(1);
                            *self.role.lock().unwrap() = Role::Active { epoch };
                            let stop = shutdown.child_token();
                            let work = start(stop.clone());
                            term = Some(Term {
                                epoch,
                                stop,
                                work,
                                renewed: asked,
                            });
                        }
                        Ok(None) => {
                            let leader = self.leader(client).await;
                            *self.role.lock().unwrap() = Role::Standby { leader };
                        }
                        Err(e) => warn!(error = %e, "leadership: taking the lead failed"),
                    }
                }
            }
            metrics::gauge!("lakets_leader").set(if term.is_some() { 1.0 } else { 0.0 });
            if term.is_some()
                && let Err(e) = instances::forget_gone(client, &self.slot, 300.0).await
            {
                warn!(error = %e, "leadership: forgetting gone instances failed");
            }
        }
        // Shutdown: the work stops cleanly (flush, acknowledge), then the lead is given up.
        let Some(term) = term else {
            if let Some(client) = &session {
                let _ = instances::resign(client, &self.slot, &self.instance).await;
            }
            return Ok(());
        };
        term.stop.cancel();
        let (epoch, work) = (term.epoch, term.work);
        let joined = async {
            let mut first_error = None;
            for (name, task) in work {
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        if name != "pipeline" {
                            warn!(component = name, error = %e, "component failed");
                        }
                        first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        first_error.get_or_insert(Error::Operator(format!("{name} panicked: {e}")));
                    }
                }
            }
            first_error
        };
        // The lease is renewed while the work drains (flush, acknowledge: up to the
        // operators' grace), so that no standby takes over from a leader still storing.
        tokio::pin!(joined);
        let first_error = loop {
            tokio::select! {
                first_error = &mut joined => break first_error,
                _ = tokio::time::sleep(tick) => {
                    if let Some(client) = &session {
                        let renewed = bounded(
                            tick,
                            "renewing the lease",
                            instances::renew(client, &self.slot, &self.instance, epoch, lease_ms),
                        )
                        .await;
                        if !matches!(renewed, Ok(true)) {
                            warn!(instance = %self.instance, "the lease could not be renewed while the work drains");
                        }
                    }
                }
            }
        };
        let resigned = match crate::db::connect_with(&self.db).await {
            Ok(client) => instances::resign(&client, &self.slot, &self.instance).await,
            Err(e) => Err(e),
        };
        if let Err(e) = resigned {
            warn!(error = %e, "could not give the lead up; a standby takes it when the lease ends");
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops the work at once, unflushed (a stale window must not be committed), and
    /// stands by.
    async fn depose(&self, term: Option<Term>, leader: Option<String>) {
        let Some(term) = term else { return };
        for (_, task) in &term.work {
            task.abort();
        }
        for (_, task) in term.work {
            let _ = task.await;
        }
        metrics::counter!("lakets_leader_depositions_total").increment(1);
        self.status.lock().unwrap().streaming = false;
        *self.role.lock().unwrap() = Role::Standby { leader };
    }

    async fn leader(&self, client: &tokio_postgres::Client) -> Option<String> {
        instances::leader(client, &self.slot).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_names_fit_what_the_server_keeps() {
        assert_eq!(application_name("lakets", "h:1:ab"), "lakets h:1:ab");
        let long = application_name("lakets", &format!("{}:4711:beef", "x".repeat(100)));
        assert_eq!(long.len(), 63);
        assert!(
            long.starts_with("lakets x") && long.ends_with("x:4711:beef"),
            "{long}"
        );
    }
}
