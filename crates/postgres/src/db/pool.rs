//! A small bounded pool of SQL sessions, for work that callers start (the admin API): at
//! most `size` sessions at once, however many calls arrive; a call waits its turn for a
//! bounded time, then is told the service is busy.

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;

use super::DbConfig;
use crate::error::{Error, Result};

pub struct Pool {
    config: DbConfig,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
    wait: Duration,
}

/// A session of the pool; back to the pool when dropped.
pub struct Pooled<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(config: DbConfig, size: usize, wait: Duration) -> Self {
        Pool {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
            wait,
        }
    }

    /// A turn without a session (for work that opens its own, bounded the same way).
    pub async fn turn(&self) -> Result<OwnedSemaphorePermit> {
        tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                Error::NotReady(format!(
                    "busy: every one of the service's admin sessions stayed in use for {:?}; \
                     try again",
                    self.wait
                ))
            })?
            .map_err(|_| Error::NotReady("the service is stopping".into()))
    }

    pub async fn get(&self) -> Result<Pooled<'_>> {
        let permit = self.turn().await?;
        let reused = {
            let mut idle = self.idle.lock().unwrap();
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match reused {
            Some(c) => c,
            None => super::connect_with(&self.config).await?,
        };
        Ok(Pooled {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }
}

impl Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl Pooled<'_> {
    pub fn client_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.pool.idle.lock().unwrap().push(client);
        }
    }
}
