//! The dashboard, on the HTTP listener beside `/metrics`:
//! - `GET /`: the page (its script and style are compiled into the binary: nothing is
//!   fetched from elsewhere, and no JavaScript build step exists);
//! - `GET /api/status`: the page's figures as one JSON object ([`figures::DashboardStatus`]);
//! - `GET /api/events`: the same figures every second as server-sent events (`status`);
//! - `POST /api/ingest`: changes the stored ingest profile that a running `lakets ingest`
//!   (the demo's too) follows, and answers with the new one.
//!
//! Who may do what follows the gRPC API: with a read token configured the figures need it
//! (or the admin token), with an admin token configured a change needs it, as
//! `Authorization: Bearer <token>`. The listener has no TLS, so a token never crosses a
//! network: beyond loopback a change is refused, and so are the figures when a read token
//! is configured (the admin API over gRPC and TLS remains). On loopback the `Host` must
//! name this host, so that a page whose name was rebound to 127.0.0.1 gets nothing. A
//! change must be sent as JSON, and a browser's `Origin` must be this listener's, so that
//! another site open in the same browser cannot steer the ingest.

pub mod figures;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::state::ServiceState;
use figures::Collector;
use lakets_core::catalog::ingest_profile::{self, IngestProfile};

const INDEX_HTML: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// How often the event stream sends the figures.
const EVENT_EVERY: Duration = Duration::from_secs(1);

/// The dashboard's share of the service.
pub struct Dashboard {
    collector: Collector,
    access: Access,
}

/// The tokens the dashboard's calls need.
#[derive(Clone, Default)]
pub struct Access {
    pub admin_token: Option<String>,
    pub read_token: Option<String>,
    /// The listener's bound address, set once it is bound (port 0 picks one); until then
    /// every call is refused.
    pub listen: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

impl Access {
    pub fn new(admin_token: Option<String>, read_token: Option<String>) -> Self {
        Access {
            admin_token,
            read_token,
            listen: Arc::default(),
        }
    }

    fn listen(&self) -> Result<std::net::SocketAddr, Refusal> {
        self.listen.get().copied().ok_or_else(|| {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "the listener is starting")
        })
    }

    fn beyond_loopback(&self) -> bool {
        self.listen.get().is_none_or(|a| !a.ip().is_loopback())
    }
}

impl Dashboard {
    /// `loopback`: the listener's configured address is a loopback one.
    pub fn new(state: Arc<ServiceState>, access: Access, loopback: bool) -> Arc<Self> {
        let controls = figures::Controls {
            token_required: access.admin_token.is_some(),
            changes_allowed: loopback,
        };
        Arc::new(Dashboard {
            collector: Collector::new(state, controls),
            access,
        })
    }
}

/// The dashboard's routes, to merge into the HTTP listener's.
pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route("/api/ingest", get(ingest_profile_now).post(change_ingest))
        .with_state(dashboard)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Only this listener's own script, style and calls run on the page.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn json_response(code: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => (
            code,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON: {e}\n"),
        )
            .into_response(),
    }
}

/// A refused or failed call: its status and what to tell the caller, as `{"error": ...}`.
#[derive(Debug)]
struct Refusal {
    code: StatusCode,
    message: String,
}

impl Refusal {
    fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = json_response(self.code, &json!({ "error": self.message }));
        if self.code == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn error_response(code: StatusCode, message: impl Into<String>) -> Response {
    Refusal::new(code, message).into_response()
}

/// The bearer token of the request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Ok when no token is needed or the request carries one of `accepted`.
fn authorize(headers: &HeaderMap, needed: bool, accepted: &[&str]) -> Result<(), Refusal> {
    if !needed {
        return Ok(());
    }
    match bearer(headers) {
        Some(given)
            if accepted
                .iter()
                .any(|t| crate::grpc::constant_time_eq(given.as_bytes(), t.as_bytes())) =>
        {
            Ok(())
        }
        Some(_) => Err(Refusal::new(StatusCode::UNAUTHORIZED, "wrong token")),
        None => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "this call needs a token: send the header `Authorization: Bearer <token>`",
        )),
    }
}

impl Access {
    /// On loopback, the request must name this host: a name rebound to 127.0.0.1 by
    /// someone else's DNS would otherwise reach the API from their page.
    fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let listen = self.listen()?;
        if !listen.ip().is_loopback() {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let port = listen.port();
        let ours = [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            listen.to_string(),
        ];
        if ours.iter().any(|o| o.eq_ignore_ascii_case(host)) {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {host:?} is not this dashboard's: it listens on {listen}; open \
                     http://{listen}/"
                ),
            ))
        }
    }

    fn may_read(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        self.check_host(headers)?;
        if self.read_token.is_some() && self.beyond_loopback() {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "a read token is configured and this listener is reachable from other hosts \
                 without TLS: the token would cross the network in clear text. Read the \
                 figures on a loopback listener (or through an SSH tunnel), or over gRPC",
            ));
        }
        let accepted: Vec<&str> = [&self.read_token, &self.admin_token]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        authorize(headers, self.read_token.is_some(), &accepted)
    }

    fn may_change(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        self.check_host(headers)?;
        if self.beyond_loopback() {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "this listener is reachable from other hosts without TLS: changes are \
                 refused here (a token would cross the network in clear text). Change the \
                 ingest on a loopback listener, or with gRPC Admin.SetIngestProfile over TLS",
            ));
        }
        match &self.admin_token {
            Some(admin) => authorize(headers, true, &[admin.as_str()]),
            None => Ok(()),
        }
    }
}

async fn status(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Err(refused) = d.access.may_read(&headers) {
        return refused.into_response();
    }
    match d.collector.figures().await {
        Ok(figures) => json_response(StatusCode::OK, &*figures),
        Err(e) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the figures: {e}"),
        ),
    }
}

async fn events(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Err(refused) = d.access.may_read(&headers) {
        return refused.into_response();
    }
    let shutdown = d.collector.state().shutdown.clone();
    let mut tick = tokio::time::interval(EVENT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold((d, tick), |(d, mut tick)| async move {
        tick.tick().await;
        let event = match d.collector.figures().await {
            Ok(figures) => match serde_json::to_string(&*figures) {
                Ok(text) => Event::default().event("status").data(text),
                Err(e) => Event::default()
                    .event("failure")
                    .data(format!("encoding: {e}")),
            },
            // The page shows it and keeps listening: the database may be restarting.
            Err(e) => Event::default().event("failure").data(e.to_string()),
        };
        Some((Ok::<_, std::convert::Infallible>(event), (d, tick)))
    })
    // Open streams must not hold the listener's graceful shutdown.
    .take_until(shutdown.cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The profile as the dashboard and `POST /api/ingest` write it.
#[derive(serde::Serialize)]
struct ProfileBody {
    symbols: u32,
    rows_per_second: u64,
    burst: bool,
}

impl From<IngestProfile> for ProfileBody {
    fn from(p: IngestProfile) -> Self {
        ProfileBody {
            symbols: p.symbols,
            rows_per_second: p.rate,
            burst: p.burst,
        }
    }
}

async fn ingest_profile_now(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Err(refused) = d.access.may_read(&headers) {
        return refused.into_response();
    }
    match current_profile(d.collector.state()).await {
        Ok(profile) => json_response(StatusCode::OK, &ProfileBody::from(profile)),
        Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn current_profile(state: &ServiceState) -> crate::error::Result<IngestProfile> {
    let client = state.admin_pool.get().await?;
    Ok(ingest_profile::get_profile(&*client)
        .await?
        .map_or_else(IngestProfile::default, |s| s.profile))
}

async fn change_ingest(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = same_origin(&headers).and_then(|()| d.access.may_change(&headers)) {
        return refused.into_response();
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the change as JSON, with `Content-Type: application/json`",
        );
    }
    let change = match IngestChange::parse(&body) {
        Ok(change) => change,
        Err(why) => return error_response(StatusCode::BAD_REQUEST, why),
    };
    let state = d.collector.state();
    let result = async {
        let client = state.admin_pool.get().await?;
        // One statement: two changes naming different fields both land.
        ingest_profile::change_profile(
            &*client,
            ingest_profile::ProfileChange {
                symbols: change.symbols,
                rate: change.rows_per_second,
                burst: change.burst,
            },
        )
        .await
    }
    .await;
    match result {
        Ok(profile) => {
            tracing::info!(
                symbols = profile.symbols,
                rows_per_second = profile.rate,
                burst = profile.burst,
                "ingest profile changed from the dashboard"
            );
            json_response(StatusCode::OK, &ProfileBody::from(profile))
        }
        Err(e @ crate::error::Error::InvalidInput(_)) => {
            error_response(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A browser's request from another page is refused: its `Origin` must be this host.
fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Not a browser's cross-site request (scripts, curl).
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin.to_str().unwrap_or("");
    let ours = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            == Some(h)
    });
    if ours {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "a change from the page at {origin} is refused: only this dashboard's own page may change the ingest"
            ),
        ))
    }
}

/// Any subset of the profile's fields, checked one by one with what and why.
#[derive(Debug, Default, PartialEq, Eq)]
struct IngestChange {
    symbols: Option<u32>,
    rows_per_second: Option<u64>,
    burst: Option<bool>,
}

const CHANGE_FORM: &str =
    r#"{"symbols": N, "rows_per_second": R, "burst": true|false} (any of them)"#;

impl IngestChange {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not JSON ({e}); send {CHANGE_FORM}"))?;
        let Value::Object(fields) = value else {
            return Err(format!("the body must be a JSON object: {CHANGE_FORM}"));
        };
        if fields.is_empty() {
            return Err(format!("nothing to change: send {CHANGE_FORM}"));
        }
        let mut change = IngestChange::default();
        for (name, value) in &fields {
            match name.as_str() {
                "symbols" => {
                    let n = value
                        .as_u64()
                        .filter(|n| (1..=100_000).contains(n))
                        .ok_or_else(|| {
                            format!("symbols must be a whole number from 1 to 100000, got {value}")
                        })?;
                    change.symbols = Some(n as u32);
                }
                "rows_per_second" => {
                    let n = value
                        .as_u64()
                        .filter(|n| *n <= ingest_profile::MAX_RATE)
                        .ok_or_else(|| {
                            format!(
                                "rows_per_second must be a whole number from 0 to {}, got {value}",
                                ingest_profile::MAX_RATE
                            )
                        })?;
                    change.rows_per_second = Some(n);
                }
                "burst" => {
                    change.burst = Some(
                        value
                            .as_bool()
                            .ok_or_else(|| format!("burst must be true or false, got {value}"))?,
                    );
                }
                other => {
                    return Err(format!(
                        "unknown field {other:?}: the profile has symbols, rows_per_second and burst"
                    ));
                }
            }
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_names_any_subset_and_refuses_what_is_wrong() {
        let c = IngestChange::parse(br#"{"rows_per_second": 5000}"#).unwrap();
        assert_eq!(
            c,
            IngestChange {
                rows_per_second: Some(5000),
                ..IngestChange::default()
            }
        );
        for (body, says) in [
            (&br#"{"symbols": 0}"#[..], "symbols must be"),
            (br#"{"symbols": "ten"}"#, "symbols must be"),
            (br#"{"rows_per_second": -1}"#, "rows_per_second must be"),
            (br#"{"rows_per_second": 1.5}"#, "rows_per_second must be"),
            (br#"{"burst": "yes"}"#, "burst must be"),
            (br#"{"rate": 10}"#, "unknown field \"rate\""),
            (br#"{}"#, "nothing to change"),
            (br#"[1]"#, "must be a JSON object"),
            (br#"{"symbols": 5"#, "not JSON"),
        ] {
            let err = IngestChange::parse(body).unwrap_err();
            assert!(
                err.contains(says),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_browser_change_must_come_from_this_page() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9187"));
        assert!(same_origin(&h).is_ok(), "no Origin: a script");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9187"),
        );
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_origin(&h).is_err());
    }

    fn headers(host: &str, token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(t) = token {
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        h
    }

    #[test]
    fn tokens_are_asked_for_only_where_configured_and_never_cross_a_network() {
        let at = |addr: &str| {
            let access = Access::default();
            access.listen.set(addr.parse().unwrap()).unwrap();
            access
        };
        let local = at("127.0.0.1:9187");
        let h = headers("127.0.0.1:9187", None);
        assert!(local.may_read(&h).is_ok() && local.may_change(&h).is_ok());
        assert!(local.may_read(&headers("localhost:9187", None)).is_ok());
        let rebound = headers("attacker.example:9187", None);
        assert!(local.may_read(&rebound).is_err() && local.may_change(&rebound).is_err());

        let guarded = Access {
            admin_token: Some("admin".into()),
            read_token: Some("read".into()),
            ..local.clone()
        };
        assert!(guarded.may_read(&h).is_err());
        let read = headers("127.0.0.1:9187", Some("read"));
        assert!(guarded.may_read(&read).is_ok());
        assert!(
            guarded.may_change(&read).is_err(),
            "the read token changes nothing"
        );
        let admin = headers("127.0.0.1:9187", Some("admin"));
        assert!(guarded.may_read(&admin).is_ok() && guarded.may_change(&admin).is_ok());

        let remote = at("0.0.0.0:9187");
        let any = headers("metrics.internal:9187", None);
        assert!(
            remote.may_read(&any).is_ok(),
            "no token: the figures are open"
        );
        assert!(
            remote.may_change(&any).is_err(),
            "no change beyond loopback"
        );
        let remote_guarded = Access {
            listen: remote.listen.clone(),
            ..guarded
        };
        let admin = headers("metrics.internal:9187", Some("admin"));
        assert!(
            remote_guarded.may_read(&admin).is_err(),
            "no token in clear text"
        );
        assert!(remote_guarded.may_change(&admin).is_err());
    }
}
