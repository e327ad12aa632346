//! `lakets status`: slot, lag, operators, chunks, rollups and jobs, with the running
//! service's live figures when its gRPC endpoint answers.

use std::path::Path;

use crate::context::Context;
use crate::output::{Format, Render};

pub async fn run(ctx: &Context, config: Option<&Path>, format: Format) -> anyhow::Result<()> {
    let config = ctx.load_config(config, None)?;
    let db = config.database_config()?;
    let client = lakets::db::connect_with(&db).await?;
    let slot = lakets::service::slot_name(&config, &db);
    let mut status = lakets::status::collect(&client, &slot, None).await?;
    overlay_live_status(&config, &mut status).await;
    format.print(&status)
}

impl Render for lakets::status::ServiceStatus {
    fn text(&self) -> String {
        lakets::status::render(self)
    }
}

/// Adds the running service's live figures (lag in seconds, received position, last
/// error) when its gRPC endpoint answers within a second.
async fn overlay_live_status(
    config: &lakets::config::Config,
    status: &mut lakets::status::ServiceStatus,
) {
    use lakets::grpc::proto::admin_client::AdminClient;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let Ok(listen) = config.grpc.listen.parse::<SocketAddr>() else {
        return; // "off"
    };
    // A wildcard listener is reached on this host's loopback.
    let target = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    };
    let tls = config.grpc.tls_cert_file.as_ref();
    // The admin token goes only where nobody on the way can read it: over TLS (checked
    // against the service's own certificate chain), or to a loopback address.
    let send_token = tls.is_some() || target.ip().is_loopback();
    let live = async {
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!(
            "{}://{target}",
            if tls.is_some() { "https" } else { "http" }
        ))
        .ok()?
        .connect_timeout(std::time::Duration::from_secs(1));
        if let Some(chain) = tls {
            lakets::install_crypto_provider();
            let pem = std::fs::read(chain).ok()?;
            let domain = if target.ip().is_loopback() {
                "localhost".to_owned()
            } else {
                target.ip().to_string()
            };
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                        .domain_name(domain),
                )
                .ok()?;
        }
        let channel = endpoint.connect().await.ok()?;
        let mut request = tonic::Request::new(lakets::grpc::proto::StatusRequest {});
        if send_token && let Ok(Some(token)) = config.admin_token() {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().ok()?);
        }
        AdminClient::new(channel)
            .status(request)
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    let Ok(Some(live)) = tokio::time::timeout(std::time::Duration::from_secs(2), live).await else {
        return;
    };
    if live.slot != status.slot {
        return;
    }
    status.lag_seconds = Some(live.lag_seconds);
    status.streaming = Some(live.streaming);
    status.received_lsn = live.received_lsn.parse().ok();
    if !live.last_error.is_empty() {
        status.last_error = Some(live.last_error);
    }
}
