//! `lakets.v1.LastValueCache`: Get, BatchGet and Subscribe over the in-memory view.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use super::proto;
use crate::ident::{QualifiedName, TableName};
use crate::lvc_view::{LastValue, LvcView};
use crate::service::ServiceState;

pub struct LvcApi {
    state: Arc<ServiceState>,
}

impl LvcApi {
    pub fn new(state: Arc<ServiceState>) -> Self {
        LvcApi { state }
    }

    fn view(&self) -> &LvcView {
        &self.state.lvc
    }

    /// The cached table a caller named (`name` along `public`, or `schema.name`).
    fn table(&self, input: &str) -> Result<TableName, Status> {
        let q = QualifiedName::parse(input).map_err(super::status_of)?;
        let tables = self.view().tables();
        tables
            .iter()
            .filter(|t| {
                t.name == q.name
                    && match &q.schema {
                        Some(s) => &t.schema == s,
                        None => true,
                    }
            })
            .min_by_key(|t| t.schema != "public")
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{input} has no Last Value Cache in this service (cached: {})",
                    tables
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

fn to_proto(v: &LastValue) -> proto::LastValue {
    proto::LastValue {
        table: v.table.to_string(),
        key: Some(proto::Key {
            values: v.key.clone(),
        }),
        time: v.time.clone(),
        values: v
            .values
            .iter()
            .filter_map(|(name, value)| value.clone().map(|value| (name.clone(), value)))
            .collect(),
        lsn: v.lsn.to_string(),
        deleted: v.deleted,
    }
}

fn key_of(k: Option<proto::Key>) -> Result<Vec<String>, Status> {
    match k {
        Some(k) if !k.values.is_empty() => Ok(k.values),
        _ => Err(Status::invalid_argument(
            "a key needs one value per key column of the cache",
        )),
    }
}

type ValueStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<proto::LastValue, Status>> + Send>>;

#[tonic::async_trait]
impl proto::last_value_cache_server::LastValueCache for LvcApi {
    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let r = request.into_inner();
        let table = self.table(&r.table)?;
        let key = self.view().normalize_key(&table, &key_of(r.key)?);
        Ok(Response::new(proto::GetResponse {
            value: self.view().get(&table, &key).as_deref().map(to_proto),
        }))
    }

    async fn batch_get(
        &self,
        request: Request<proto::BatchGetRequest>,
    ) -> Result<Response<proto::BatchGetResponse>, Status> {
        let r = request.into_inner();
        let table = self.table(&r.table)?;
        let values = if r.keys.is_empty() {
            self.view()
                .all(&table)
                .iter()
                .map(|v| to_proto(v))
                .collect()
        } else {
            let mut out = Vec::with_capacity(r.keys.len());
            for k in r.keys {
                let key = self.view().normalize_key(&table, &key_of(Some(k))?);
                if let Some(v) = self.view().get(&table, &key) {
                    out.push(to_proto(&v));
                }
            }
            out
        };
        Ok(Response::new(proto::BatchGetResponse { values }))
    }

    type SubscribeStream = ValueStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        let table = self.table(&r.table)?;
        let keys: Option<HashSet<Vec<String>>> = if r.keys.is_empty() {
            None
        } else {
            Some(
                r.keys
                    .into_iter()
                    .map(|k| Ok(self.view().normalize_key(&table, &key_of(Some(k))?)))
                    .collect::<Result<_, Status>>()?,
            )
        };
        let filter = Filter { table, keys };
        // Subscribed before the snapshot is read: nothing falls between the two.
        let mut updates = self.view().subscribe();
        let state = self.state.clone();
        let initial = if r.updates_only {
            Vec::new()
        } else {
            filter.snapshot(&state.lvc)
        };
        let (tx, rx) = mpsc::channel::<Result<proto::LastValue, Status>>(1024);
        tokio::spawn(async move {
            for v in initial {
                if tx.send(Ok(v)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    next = updates.recv() => next,
                    _ = tx.closed() => return,
                    _ = state.shutdown.cancelled() => return,
                };
                match next {
                    Ok(v) if filter.wants(&v) => {
                        if tx.send(Ok(to_proto(&v))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Too slow to keep up: send the current rows again, then go on.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for v in filter.snapshot(&state.lvc) {
                            if tx.send(Ok(v)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// What a subscriber asked for.
struct Filter {
    table: TableName,
    /// None: every key.
    keys: Option<HashSet<Vec<String>>>,
}

impl Filter {
    fn wants(&self, v: &LastValue) -> bool {
        v.table == self.table && self.keys.as_ref().is_none_or(|k| k.contains(&v.key))
    }

    fn snapshot(&self, view: &LvcView) -> Vec<proto::LastValue> {
        view.all(&self.table)
            .iter()
            .filter(|v| self.wants(v))
            .map(|v| to_proto(v))
            .collect()
    }
}
