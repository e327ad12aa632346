//! The object stores under the Delta tables, metered: every request deltalake or lakets
//! makes (after the store client's own retries) is counted by operation and outcome and
//! timed, so a failing, slow or unreachable store shows in the metrics
//! (`lakets_object_store_requests_total`, `lakets_object_store_request_seconds`) before
//! the lag it causes does.
//!
//! deltalake builds stores through a registry of factories, one per URL scheme; [`meter`]
//! wraps each registered factory once, so tables opened any way (the stream, the CLI,
//! maintenance, the gate) go through the same meter.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Once};
use std::time::Instant;

use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig};
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use url::Url;

/// The operations `lakets_object_store_requests_total{operation}` counts.
pub const OPERATIONS: &[&str] = &["get", "put", "put_multipart", "delete", "list", "copy"];

/// The outcomes it counts: `not_found` and `exists` are answers deltalake asks for (probing
/// for the next log version, creating a commit file that another writer created first),
/// `error` is a store that failed after the client's retries.
pub const OUTCOMES: &[&str] = &["ok", "not_found", "exists", "error"];

/// The schemes lakets opens tables on (see [`crate::table::parse_location`]).
const SCHEMES: &[&str] = &["file", "s3", "s3a", "gs", "az", "abfs", "abfss"];

/// The store client's options lakets sets: a request that keeps failing (a store down, a
/// network gone) fails within about half a minute instead of the client's default three,
/// so that the error shows (`lakets_object_store_requests_total{outcome="error"}`) and
/// the stream retries from its durable position with its own backoff
/// (`lakets_wal_restarts_total`); shorter blips are absorbed by the client's retries.
pub fn options() -> std::collections::HashMap<String, String> {
    [("max_retries", "5"), ("retry_timeout", "30s")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Wraps every registered store factory with the meter. Idempotent; called before a table
/// is opened or created.
pub fn meter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        warn_on_unsafe_rename();
        let registry = deltalake::logstore::object_store_factories();
        for scheme in SCHEMES {
            let Ok(url) = Url::parse(&format!("{scheme}://")) else {
                continue;
            };
            let Some(inner) = registry.get(&url).map(|e| Arc::clone(e.value())) else {
                continue; // a store this build leaves out
            };
            registry.insert(url, Arc::new(MeteredFactory { inner }));
        }
    });
}

/// deltalake copies and renames on S3 without a lock when this is set: two writers (a
/// standby taking over, a second source) can then overwrite each other's commits. Commits
/// use the store's conditional put without it.
fn warn_on_unsafe_rename() {
    let set = std::env::var("AWS_S3_ALLOW_UNSAFE_RENAME")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
    if set {
        tracing::warn!(
            "AWS_S3_ALLOW_UNSAFE_RENAME is set: Delta commits on S3 are not atomic, and two \
             writers of one table can overwrite each other's commits; unset it unless the \
             store lacks conditional writes (If-None-Match) and a single lakets writes each \
             table"
        );
    }
}

struct MeteredFactory {
    inner: Arc<dyn ObjectStoreFactory>,
}

impl ObjectStoreFactory for MeteredFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> deltalake::DeltaResult<(ObjectStoreRef, Path)> {
        let (store, path) = self.inner.parse_url_opts(url, config)?;
        Ok((Arc::new(MeteredStore { inner: store }), path))
    }
}

/// An object store that counts and times every request of the one it wraps.
#[derive(Debug)]
struct MeteredStore {
    inner: ObjectStoreRef,
}

impl fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
}

fn outcome<T>(result: &object_store::Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => error_outcome(e),
    }
}

fn error_outcome(e: &object_store::Error) -> &'static str {
    match e {
        object_store::Error::NotFound { .. } => "not_found",
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            "exists"
        }
        _ => "error",
    }
}

fn record(operation: &'static str, outcome: &'static str, started: Instant) {
    metrics::counter!(
        "lakets_object_store_requests_total",
        "operation" => operation,
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!("lakets_object_store_request_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
}

async fn metered<T>(
    operation: &'static str,
    request: impl Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    let started = Instant::now();
    let result = request.await;
    record(operation, outcome(&result), started);
    result
}

/// A streamed request (a listing, a batch of deletes), counted once: at its first error,
/// or as ok when it is dropped without one (a caller may stop reading early).
struct MeteredStream<T> {
    inner: BoxStream<'static, object_store::Result<T>>,
    operation: &'static str,
    started: Instant,
    recorded: bool,
}

impl<T> MeteredStream<T> {
    fn boxed(
        operation: &'static str,
        inner: BoxStream<'static, object_store::Result<T>>,
    ) -> BoxStream<'static, object_store::Result<T>>
    where
        T: Send + 'static,
    {
        Box::pin(MeteredStream {
            inner,
            operation,
            started: Instant::now(),
            recorded: false,
        })
    }
}

impl<T> futures_util::Stream for MeteredStream<T> {
    type Item = object_store::Result<T>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled
            && !self.recorded
        {
            self.recorded = true;
            record(self.operation, error_outcome(e), self.started);
        }
        polled
    }
}

impl<T> Drop for MeteredStream<T> {
    fn drop(&mut self) {
        if !self.recorded {
            record(self.operation, "ok", self.started);
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        metered("put", self.inner.put_opts(location, payload, opts)).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        metered(
            "put_multipart",
            self.inner.put_multipart_opts(location, opts),
        )
        .await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        metered("get", self.inner.get_opts(location, options)).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        metered("get", self.inner.get_ranges(location, ranges)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        MeteredStream::boxed("delete", self.inner.delete_stream(locations))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        MeteredStream::boxed("list", self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        MeteredStream::boxed("list", self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        metered("list", self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        metered("copy", self.inner.copy_opts(from, to, options)).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        metered("copy", self.inner.rename_opts(from, to, options)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt as _;
    use object_store::memory::InMemory;

    #[test]
    fn outcomes_tell_answers_from_failures() {
        let missing: object_store::Result<()> = Err(object_store::Error::NotFound {
            path: "x".into(),
            source: "".into(),
        });
        assert_eq!(outcome(&missing), "not_found");
        let exists: object_store::Result<()> = Err(object_store::Error::AlreadyExists {
            path: "x".into(),
            source: "".into(),
        });
        assert_eq!(outcome(&exists), "exists");
        let failed: object_store::Result<()> = Err(object_store::Error::Generic {
            store: "S3",
            source: "503".into(),
        });
        assert_eq!(outcome(&failed), "error");
    }

    #[tokio::test]
    async fn the_metered_store_passes_every_request_through() {
        let store = MeteredStore {
            inner: Arc::new(InMemory::new()),
        };
        let path = Path::from("a/b");
        store.put(&path, "x".into()).await.unwrap();
        let create = store
            .put_opts(&path, "y".into(), object_store::PutMode::Create.into())
            .await;
        assert!(matches!(
            create,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&bytes[..], b"x");
        let listed: Vec<_> = store.list(Some(&Path::from("a"))).collect().await;
        assert_eq!(listed.len(), 1);
        assert!(listed[0].is_ok());
    }
}
