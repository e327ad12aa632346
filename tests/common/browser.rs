//! Headless Chromium (Debian's `chromium`), driven over the DevTools protocol: open a
//! page, evaluate script in it, click and type as a person would (input events at the
//! element's position), collect every console error and uncaught exception, and take a
//! screenshot.
//!
//! Chromium is started with the flags this closed network needs (no background
//! networking, no component updates), a fresh profile, and `--remote-debugging-port=0`;
//! its address is read from the line it prints. Without the browser the tests that need
//! it are skipped, unless `LAKETS_REQUIRE_BROWSER=1` (CI) makes that a failure.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    outgoing: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    session: String,
    /// Console errors, uncaught exceptions and failed loads, as text.
    errors: Arc<Mutex<Vec<String>>>,
}

/// Whether browser tests run here: `None` (skip, said on stderr) without Chromium.
pub fn available() -> bool {
    if std::path::Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        std::env::var("LAKETS_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "LAKETS_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)"
    );
    eprintln!("skipping: {CHROMIUM} is not installed (apt-get install chromium)");
    false
}

impl Browser {
    /// Starts Chromium with one page of `width` x `height` CSS pixels.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chromium");
        let stderr = child.stderr.take().expect("chromium's stderr");
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(tx) = found.take()
                {
                    let _ = tx.send(url.trim().to_string());
                }
                // Keep draining, so that chromium never blocks on a full pipe.
            }
        });
        let url = address
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed no DevTools address within 30 s");
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connecting to chromium's DevTools");
        let (mut write, mut read) = socket.split();
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = to_send.recv().await {
                if write.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let (pending, errors) = (pending.clone(), errors.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = read.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(value) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if let Some(id) = value.get("id").and_then(Value::as_u64) {
                        if let Some(tx) = pending.lock().unwrap().remove(&id) {
                            let _ = tx.send(match value.get("error") {
                                Some(e) => Err(e.to_string()),
                                None => Ok(value.get("result").cloned().unwrap_or(Value::Null)),
                            });
                        }
                    } else if let Some(error) = page_error(&value) {
                        errors.lock().unwrap().push(error);
                    }
                }
            });
        }
        let mut browser = Browser {
            child,
            _profile: profile,
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            session: String::new(),
            errors,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.page(domain, json!({})).await;
        }
        browser
            .page(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser
    }

    async fn send(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.outgoing
            .send(Message::Text(message.to_string().into()))
            .expect("chromium's socket closed");
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(e))) => panic!("{method} failed: {e}"),
            _ => panic!("{method}: no answer from chromium within 30 s"),
        }
    }

    async fn call(&self, method: &str, params: Value) -> Value {
        self.send(None, method, params).await
    }

    /// A command to the page's session.
    pub async fn page(&self, method: &str, params: Value) -> Value {
        self.send(Some(&self.session.clone()), method, params).await
    }

    pub async fn navigate(&self, url: &str) {
        let result = self.page("Page.navigate", json!({ "url": url })).await;
        assert!(
            result.get("errorText").is_none(),
            "navigating to {url}: {result}"
        );
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .page(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = result.get("exceptionDetails") {
            panic!("evaluating {expression}: {e}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page.
    pub async fn wait_for(&self, what: &str, expression: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // A page still loading has no body yet: that is "not yet", not a failure.
            let value = self
                .eval(&format!("(() => {{ try {{ return Boolean({expression}); }} catch (e) {{ return false; }} }})()"))
                .await;
            if value == json!(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not true after {timeout:?} ({expression}); page errors: {:?}",
                self.errors()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clicks the centre of the element `selector` with the mouse.
    pub async fn click(&self, selector: &str) {
        let (x, y) = self.centre(selector).await;
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.page(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Replaces the text of the input `selector` by typing `text` into it.
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.click(selector).await;
        let selector_json = serde_json::to_string(selector).unwrap();
        self.eval(&format!("document.querySelector({selector_json}).select()"))
            .await;
        self.page("Input.insertText", json!({ "text": text })).await;
    }

    async fn centre(&self, selector: &str) -> (f64, f64) {
        let selector_json = serde_json::to_string(selector).unwrap();
        let rect = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector_json}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let rect = rect
            .as_array()
            .unwrap_or_else(|| panic!("no element {selector} on the page"));
        (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap())
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&self) -> Vec<u8> {
        let shot = self
            .page(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("the screenshot is base64")
    }

    /// Every console error, uncaught exception and failed load so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The error a DevTools event reports, if it is one.
fn page_error(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event.get("method")?.as_str()? {
        "Runtime.exceptionThrown" => Some(format!(
            "uncaught: {}",
            params["exceptionDetails"]["exception"]["description"]
                .as_str()
                .or(params["exceptionDetails"]["text"].as_str())
                .unwrap_or("?")
        )),
        "Runtime.consoleAPICalled" if params["type"] == "error" => Some(format!(
            "console.error: {}",
            params["args"]
                .as_array()
                .map(|a| a
                    .iter()
                    .map(|v| v["value"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v["description"].to_string()))
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default()
        )),
        "Log.entryAdded" if params["entry"]["level"] == "error" => Some(format!(
            "log: {} ({})",
            params["entry"]["text"].as_str().unwrap_or("?"),
            params["entry"]["url"].as_str().unwrap_or("")
        )),
        _ => None,
    }
}
