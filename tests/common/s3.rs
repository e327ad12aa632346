//! A real S3-compatible store for the tests, and faults between lakets and it.
//!
//! The store is moto's server mode (`moto[server]==5.2.5` from PyPI, installed by `.ci/run`
//! into the interop venv): it runs offline, speaks the S3 REST API with SigV4, and honours
//! `If-None-Match: *` on PutObject (Delta's atomic commit). Its check-then-put is not
//! atomic across its request threads, which a single writer per table never meets.
//!
//! [`FaultProxy`] sits between lakets and the store: an HTTP/1.1 proxy that answers 503
//! before forwarding (a clean failure), forwards and then answers 503 (the write landed
//! and the client cannot know: the hard case for exactly-once), holds a request past the
//! client's timeout, delays every request, or drops every connection (the store is down).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::workload::Rng;

/// The bucket every S3 test writes to.
pub const BUCKET: &str = "lakets";

/// The secret key the store is given: a test looks for it in every log line.
pub const SECRET_KEY: &str = "lakets-test-secret-0f9c2e7a";

/// The interop venv's Python with moto, or `None` (the caller skips, unless
/// `LAKETS_REQUIRE_INTEROP` is set).
pub fn moto_python() -> Option<String> {
    super::interop_python("moto.server, flask", "moto[server]==5.2.5")
}

/// moto's S3 server, killed when dropped.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts the server and waits until it answers.
    pub fn start(python: &str) -> Moto {
        let port = super::free_port();
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let moto = Moto { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Creates `bucket` (moto takes unsigned requests for this).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.addr).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "creating bucket {bucket}: {}",
            response.lines().next().unwrap_or("")
        );
    }
}

/// The store and its proxy, one per test binary: the process's `AWS_*` environment points
/// at the proxy (lakets reads a store's endpoint and credentials only from there).
pub struct Fixture {
    pub moto: Moto,
    pub proxy: FaultProxy,
}

/// The binary's fixture, started by the first test that asks (None: no moto; the test
/// skips). The environment is set here, while every other test thread waits on the same
/// initialisation, before any runtime of a test starts.
pub fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let python = moto_python()?;
            let moto = Moto::start(&python);
            moto.create_bucket(BUCKET);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            for (key, value) in store_env(listener.local_addr().unwrap()) {
                // SAFETY: see above; no other thread reads the environment meanwhile.
                unsafe { std::env::set_var(key, value) };
            }
            // The proxy runs on a runtime of its own, which outlives every test's.
            let (sender, receiver) = std::sync::mpsc::channel();
            let upstream = moto.addr;
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    sender
                        .send(FaultProxy::start(listener, upstream, 0x5eed))
                        .unwrap();
                    std::future::pending::<()>().await
                })
            });
            let proxy = receiver.recv().unwrap();
            Some(Fixture { moto, proxy })
        })
        .as_ref()
}

/// Held by each test for its whole run: the proxy's faults are shared.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The environment a process needs to reach the store through `endpoint`, as lakets
/// reads it (credentials only from the environment). Short client timeouts, so that a
/// held request fails in seconds, not the default 30.
pub fn store_env(endpoint: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://{endpoint}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "lakets-test".into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ("AWS_TIMEOUT", "4s".into()),
        ("AWS_CONNECT_TIMEOUT", "2s".into()),
    ]
}

/// What the proxy does to each request. Probabilities are per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Answer 503 without forwarding.
    pub fail_before: f64,
    /// Forward, then answer 503 instead of the store's answer.
    pub fail_after: f64,
    /// Hold the request without answering (the client's timeout fires).
    pub hang: f64,
    /// Wait this long before forwarding each request.
    pub delay: Duration,
    /// Forward every commit file's PUT, then answer 503: the commit landed and the
    /// client cannot know (its retry finds the version taken).
    pub lose_commit_answers: bool,
    /// Drop every connection and request: the store is unreachable.
    pub down: bool,
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub forwarded: AtomicU64,
    pub failed_before: AtomicU64,
    pub failed_after: AtomicU64,
    pub hung: AtomicU64,
    pub lost_commit_answers: AtomicU64,
    pub refused: AtomicU64,
    /// PUTs of a Delta commit file (`_delta_log/<version>.json`), and those among them
    /// without `If-None-Match: *` (a commit that could overwrite another's).
    pub commit_puts: AtomicU64,
    pub unconditional_commit_puts: AtomicU64,
    /// Commit PUTs the store refused because the version existed (412).
    pub commit_conflicts: AtomicU64,
}

struct ProxyState {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    rng: Mutex<Rng>,
    stats: ProxyStats,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The fault-injecting proxy; it runs until the test's runtime ends.
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
}

impl FaultProxy {
    /// Serves on `listener` (bound before the runtime, so its address can go in the
    /// environment first) in front of `upstream`.
    pub fn start(listener: std::net::TcpListener, upstream: SocketAddr, seed: u64) -> FaultProxy {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            faults: Mutex::new(Faults::default()),
            rng: Mutex::new(Rng(seed | 1)),
            stats: ProxyStats::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let accept_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if accept_state.faults().down {
                    accept_state.stats.refused.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { state.handle(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy { addr, state }
    }

    pub fn set(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = faults;
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.state.stats
    }
}

fn count(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

fn slow_down() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from_static(
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
              <Message>Please reduce your request rate.</Message></Error>",
        )))
        .unwrap()
}

impl ProxyState {
    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap()
    }

    /// A uniform draw in [0, 1), seeded: a failing run can be replayed.
    fn draw(&self) -> f64 {
        (self.rng.lock().unwrap().next() >> 11) as f64 / (1u64 << 53) as f64
    }

    async fn handle(&self, request: Request<Incoming>) -> std::io::Result<Response<Full<Bytes>>> {
        let faults = self.faults();
        if faults.down {
            count(&self.stats.refused);
            // hyper drops the connection.
            return Err(std::io::Error::other("the store is down"));
        }
        let path = request.uri().path().to_string();
        let is_commit = request.method() == hyper::Method::PUT
            && path.contains("/_delta_log/")
            && path.ends_with(".json")
            && !path.contains("_tmp");
        if is_commit {
            count(&self.stats.commit_puts);
            let conditional = request
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v.as_bytes() == b"*");
            if !conditional {
                count(&self.stats.unconditional_commit_puts);
            }
        }
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        let roll = self.draw();
        if roll < faults.fail_before {
            count(&self.stats.failed_before);
            return Ok(slow_down());
        }
        if roll < faults.fail_before + faults.hang {
            count(&self.stats.hung);
            tokio::time::sleep(Duration::from_secs(300)).await;
            return Ok(slow_down());
        }
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        let mut upstream = Request::builder().method(parts.method).uri(format!(
            "http://{}{}",
            self.upstream,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        ));
        for (name, value) in &parts.headers {
            upstream = upstream.header(name, value);
        }
        let request = upstream
            .body(Full::new(body))
            .map_err(std::io::Error::other)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(std::io::Error::other)?;
        count(&self.stats.forwarded);
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        if is_commit && parts.status == StatusCode::PRECONDITION_FAILED {
            count(&self.stats.commit_conflicts);
        }
        if is_commit && faults.lose_commit_answers && parts.status.is_success() {
            count(&self.stats.lost_commit_answers);
            return Ok(slow_down());
        }
        if roll < faults.fail_before + faults.hang + faults.fail_after {
            count(&self.stats.failed_after);
            return Ok(slow_down());
        }
        Ok(Response::from_parts(parts, Full::new(body)))
    }
}
