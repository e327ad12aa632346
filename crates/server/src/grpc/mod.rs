//! The gRPC API (`proto/lakets/v1/lakets.proto`): the Last Value Cache from memory and
//! the admin calls, with server reflection, optional TLS, bearer tokens (the admin token
//! for admin calls, an optional read token for the cache), and bounds on what a caller
//! can make the service do: calls and streams per connection, subscribers, the rows of one
//! BatchGet, keepalives that find dead peers.

mod admin;
mod lvc;
pub mod proto;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::info;

use crate::error::{Error, Result};
use crate::state::ServiceState;

pub use admin::AdminApi;
pub use lvc::LvcApi;

#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// Admin calls need `authorization: Bearer <token>` when set.
    pub admin_token: Option<String>,
    /// Last Value Cache calls need it (or the admin token) when set.
    pub read_token: Option<String>,
    /// PEM certificate chain and key: serve TLS only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Subscribers served at once.
    pub max_subscribers: usize,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            admin_token: None,
            read_token: None,
            tls: None,
            max_subscribers: 64,
        }
    }
}

/// Calls served at once on one connection (HTTP/2 streams beyond it wait).
const CALLS_PER_CONNECTION: usize = 32;
/// Streams (calls) one connection may open at once.
const STREAMS_PER_CONNECTION: u32 = 64;

/// Binds `addr` and serves until `shutdown`; returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<ServiceState>,
    settings: GrpcSettings,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<Result<()>>)> {
    let mut builder = Server::builder()
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION))
        // A peer that vanished (or stalls its reads for good) is found and its streams
        // freed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)));
    if let Some((cert, key)) = &settings.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
        };
        lakets_core::install_crypto_provider();
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::invalid(format!("grpc TLS configuration: {e}")))?;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Operator(format!("building gRPC reflection: {e}")))?;
    let admin_token = settings.admin_token.clone().map(Arc::<str>::from);
    let token = admin_token.clone();
    let admin = proto::admin_server::AdminServer::with_interceptor(
        AdminApi::new(state.clone()),
        move |req: tonic::Request<()>| check_token(token.as_deref(), None, req),
    );
    let read_token = settings.read_token.clone().map(Arc::<str>::from);
    let lvc = proto::last_value_cache_server::LastValueCacheServer::with_interceptor(
        LvcApi::new(state, settings.max_subscribers),
        move |req: tonic::Request<()>| match read_token.as_deref() {
            // The admin token reads too.
            Some(read) => check_token(Some(read), admin_token.as_deref(), req),
            None => Ok(req),
        },
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding the gRPC endpoint to {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("reading the gRPC endpoint's address", e))?;
    info!(addr = %bound, tls = settings.tls.is_some(), admin_token = settings.admin_token.is_some(), "serving gRPC");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router = builder
        .add_service(reflection)
        .add_service(admin)
        .add_service(lvc);
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
            .await
            .map_err(|e| Error::Operator(format!("serving gRPC: {e}")))
    });
    Ok((bound, task))
}

/// Accepts the call when no token is configured or the bearer token is `token` (or
/// `also`).
fn check_token(
    token: Option<&str>,
    also: Option<&str>,
    req: tonic::Request<()>,
) -> std::result::Result<tonic::Request<()>, tonic::Status> {
    let Some(expected) = token else {
        return Ok(req);
    };
    let given = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let matches = |t: &str| given.is_some_and(|g| constant_time_eq(g.as_bytes(), t.as_bytes()));
    match given {
        Some(_) if matches(expected) || also.is_some_and(matches) => Ok(req),
        Some(_) => Err(tonic::Status::unauthenticated("wrong token")),
        None => Err(tonic::Status::unauthenticated(
            "this call needs a token: send the header `authorization: Bearer <token>`",
        )),
    }
}

/// Compares without an early exit, so the time taken does not reveal a matching prefix.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A library error as a gRPC status: bad input is the caller's, the rest is ours.
pub(crate) fn status_of(e: Error) -> tonic::Status {
    match &e {
        Error::InvalidInput(_) | Error::Unsupported(_) => {
            tonic::Status::invalid_argument(e.to_string())
        }
        Error::NotFound { .. } => tonic::Status::not_found(e.to_string()),
        Error::Conflict(_) => tonic::Status::failed_precondition(e.to_string()),
        Error::NotReady(_) => tonic::Status::unavailable(e.to_string()),
        _ => tonic::Status::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let with = |h: Option<&str>| {
            let mut req = tonic::Request::new(());
            if let Some(h) = h {
                req.metadata_mut()
                    .insert("authorization", h.parse().unwrap());
            }
            req
        };
        assert!(check_token(None, None, with(None)).is_ok());
        assert!(check_token(Some("s3cret"), None, with(Some("Bearer s3cret"))).is_ok());
        let e = check_token(Some("s3cret"), None, with(None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(check_token(Some("s3cret"), None, with(Some("Bearer s3cre"))).is_err());
        assert!(check_token(Some("s3cret"), None, with(Some("s3cret"))).is_err());
        // The read token, or the admin token.
        assert!(check_token(Some("read"), Some("admin"), with(Some("Bearer admin"))).is_ok());
        assert!(check_token(Some("read"), Some("admin"), with(Some("Bearer read"))).is_ok());
        assert!(check_token(Some("read"), Some("admin"), with(Some("Bearer other"))).is_err());
    }
}
