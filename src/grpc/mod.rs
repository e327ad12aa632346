//! The gRPC API (`proto/lakets/v1/lakets.proto`): the Last Value Cache from memory and
//! the admin calls, with server reflection, optional TLS and an optional bearer token for
//! the admin service.

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
use crate::service::ServiceState;

pub use admin::AdminApi;
pub use lvc::LvcApi;

#[derive(Debug, Clone, Default)]
pub struct GrpcSettings {
    /// Admin calls need `authorization: Bearer <token>` when set.
    pub admin_token: Option<String>,
    /// PEM certificate chain and key: serve TLS only.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Binds `addr` and serves until `shutdown`; returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<ServiceState>,
    settings: GrpcSettings,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<Result<()>>)> {
    let mut builder = Server::builder();
    if let Some((cert, key)) = &settings.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
        };
        crate::install_crypto_provider();
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::invalid(format!("grpc TLS configuration: {e}")))?;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Operator(format!("building gRPC reflection: {e}")))?;
    let token = settings.admin_token.clone().map(Arc::<str>::from);
    let admin = proto::admin_server::AdminServer::with_interceptor(
        AdminApi::new(state.clone()),
        move |req: tonic::Request<()>| check_token(token.as_deref(), req),
    );
    let lvc = proto::last_value_cache_server::LastValueCacheServer::new(LvcApi::new(state));
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

/// Accepts the call when no token is configured or the bearer token matches.
fn check_token(
    token: Option<&str>,
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
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(req),
        Some(_) => Err(tonic::Status::unauthenticated("wrong admin token")),
        None => Err(tonic::Status::unauthenticated(
            "this call needs the admin token: send the header `authorization: Bearer <token>`",
        )),
    }
}

/// Compares without an early exit, so the time taken does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
        assert!(check_token(None, with(None)).is_ok());
        assert!(check_token(Some("s3cret"), with(Some("Bearer s3cret"))).is_ok());
        let e = check_token(Some("s3cret"), with(None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(check_token(Some("s3cret"), with(Some("Bearer s3cre"))).is_err());
        assert!(check_token(Some("s3cret"), with(Some("s3cret"))).is_err());
    }
}
