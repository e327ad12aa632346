//! `lakets.v1.LastValueCache`: Get, BatchGet and Subscribe over the in-memory view.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use super::proto;
use crate::ident::{QualifiedName, TableName};
use crate::state::ServiceState;
use lakets_core::lvc::view::{LastValue, LvcView};

/// Rows per page of a snapshot (a subscription's first rows, a BatchGet of every key).
const PAGE_ROWS: usize = 1000;
/// Keys (or rows) one call may ask for.
const MAX_ROWS_PER_CALL: usize = 10_000;
/// Changes queued for one subscriber before its task waits for the client to read.
const SUBSCRIBER_QUEUE: usize = 256;

pub struct LvcApi {
    state: Arc<ServiceState>,
    /// One permit per subscriber served.
    subscribers: Arc<tokio::sync::Semaphore>,
    max_subscribers: usize,
}

impl LvcApi {
    pub fn new(state: Arc<ServiceState>, max_subscribers: usize) -> Self {
        LvcApi {
            state,
            subscribers: Arc::new(tokio::sync::Semaphore::new(max_subscribers)),
            max_subscribers,
        }
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
        if r.keys.len() > MAX_ROWS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} keys asked at once; a BatchGet takes at most {MAX_ROWS_PER_CALL}",
                r.keys.len()
            )));
        }
        if !r.keys.is_empty() {
            let mut out = Vec::with_capacity(r.keys.len());
            for k in r.keys {
                let key = self.view().normalize_key(&table, &key_of(Some(k))?);
                if let Some(v) = self.view().get(&table, &key) {
                    out.push(to_proto(&v));
                }
            }
            return Ok(Response::new(proto::BatchGetResponse {
                values: out,
                next_page_token: String::new(),
            }));
        }
        // Every key: a page at a time.
        let size = match r.page_size as usize {
            0 => MAX_ROWS_PER_CALL,
            n => n.min(MAX_ROWS_PER_CALL),
        };
        let after: Option<Vec<String>> = match r.page_token.as_str() {
            "" => None,
            token => Some(serde_json::from_str(token).map_err(|_| {
                Status::invalid_argument("page_token is not one this service handed out")
            })?),
        };
        let page = self.view().page(&table, after.as_deref(), size);
        let next_page_token = match page.last() {
            Some(last) if page.len() == size => {
                serde_json::to_string(&last.key).expect("keys serialize")
            }
            _ => String::new(),
        };
        Ok(Response::new(proto::BatchGetResponse {
            values: page.iter().map(|v| to_proto(v)).collect(),
            next_page_token,
        }))
    }

    type SubscribeStream = ValueStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        let table = self.table(&r.table)?;
        if r.keys.len() > MAX_ROWS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} keys asked at once; a subscription takes at most {MAX_ROWS_PER_CALL} (or \
                 none: every key)",
                r.keys.len()
            )));
        }
        let permit = self.subscribers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the service serves {} subscribers already (grpc.max_subscribers); try again \
                 later",
                self.max_subscribers
            ))
        })?;
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
        let (tx, rx) = mpsc::channel::<Result<proto::LastValue, Status>>(SUBSCRIBER_QUEUE);
        let initial = !r.updates_only;
        tokio::spawn(async move {
            let _permit = permit;
            if initial && !filter.send_snapshot(&state.lvc, &tx).await {
                return;
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
                        if !filter.send_snapshot(&state.lvc, &tx).await {
                            return;
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

    /// The current rows a page at a time, each page read when the one before is sent (a
    /// client that does not read holds one page, not the cache). False: the client left.
    async fn send_snapshot(
        &self,
        view: &LvcView,
        tx: &mpsc::Sender<Result<proto::LastValue, Status>>,
    ) -> bool {
        if let Some(keys) = &self.keys {
            for key in keys {
                if let Some(v) = view.get(&self.table, key)
                    && tx.send(Ok(to_proto(&v))).await.is_err()
                {
                    return false;
                }
            }
            return true;
        }
        let mut after: Option<Vec<String>> = None;
        loop {
            let page = view.page(&self.table, after.as_deref(), PAGE_ROWS);
            let Some(last) = page.last() else {
                return true;
            };
            after = Some(last.key.clone());
            for v in &page {
                if tx.send(Ok(to_proto(v))).await.is_err() {
                    return false;
                }
            }
            if page.len() < PAGE_ROWS {
                return true;
            }
        }
    }
}
