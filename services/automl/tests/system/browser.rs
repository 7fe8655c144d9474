//! A headless Chromium driven through chromedriver (WebDriver, via fantoccini), for the web
//! console's tests. `scripts/lib/tools.sh`'s `ensure_chromium` installs /usr/bin/chromium and
//! /usr/bin/chromedriver.
//!
//! ```ignore
//! let browser = Browser::start().await;
//! browser.goto(&format!("{base}/experiments")).await;
//! browser.wait_for_text("h1", "Experiments", WAIT).await;
//! assert_eq!(browser.count("table tbody tr").await, 2);
//! browser.close().await;
//! ```
//!
//! Every helper panics with a readable message (the selector, the page's URL and its text), so a
//! test reads as a list of steps. [`Browser::client`] gives the whole fantoccini API.
//!
//! fantoccini is built without TLS features: chromedriver listens on loopback and speaks plain
//! HTTP, so the client uses hyper-util's `HttpConnector` (fantoccini's `rustls-tls` feature
//! would pull in aws-lc-rs next to the workspace's ring).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A default for the `timeout` of the `wait_for_*` helpers.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often the `wait_for_*` helpers look again.
const POLL: Duration = Duration::from_millis(100);

/// How long chromedriver and then the browser session may take to come up.
const STARTUP: Duration = Duration::from_secs(60);

/// How much of a page's text a failure message shows.
const PAGE_EXCERPT: usize = 2_000;

/// The answer to a `fetch` run in the page (see [`Browser::fetch`]).
#[derive(Debug, Clone)]
pub struct FetchResponse {
    pub status: u16,
    /// Whether the request was redirected (the status and body are then the final page's).
    pub redirected: bool,
    /// The final URL, after redirects.
    pub url: String,
    pub body: String,
}

/// A headless Chromium behind its own chromedriver, with a fresh profile. Dropping it (also
/// when the test panics) kills chromedriver and the browser and removes the profile;
/// [`Browser::close`] ends the WebDriver session first.
pub struct Browser {
    client: Client,
    driver: Driver,
}

/// chromedriver and the browser's directory; dropping it kills chromedriver's process group
/// (the browser's processes included), then removes the directory.
struct Driver {
    child: Child,
    port: u16,
    /// Holds `profile/` (Chromium's --user-data-dir) and `chromedriver.log`.
    dir: TempDir,
}

impl Driver {
    fn log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        format!("chromedriver's output:\n{}", tail(&log, 4_000))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session.
    pub async fn start() -> Browser {
        let dir = tempfile::Builder::new()
            .prefix("automl-browser-")
            .tempdir()
            .expect("a temporary directory for the browser");
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).expect("the browser profile directory");
        let log = dir.path().join("chromedriver.log");
        let (child, port) = spawn_chromedriver(&log).await;
        // From here on a panic drops `driver` and so kills chromedriver.
        let driver = Driver { child, port, dir };
        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "timeouts".into(),
            json!({ "script": 30_000, "pageLoad": 30_000, "implicit": 0 }),
        );
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let url = format!("http://127.0.0.1:{port}");
        let connecting = builder.connect(&url);
        let client = match tokio::time::timeout(STARTUP, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => panic!(
                "no Chromium session from chromedriver on port {port}: {error}\n{}",
                driver.log()
            ),
            Err(_) => panic!(
                "no Chromium session from chromedriver on port {port} within {STARTUP:?}\n{}",
                driver.log()
            ),
        };
        Browser { client, driver }
    }

    /// The fantoccini client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// chromedriver's process id (the browser runs in its process group).
    pub fn driver_pid(&self) -> u32 {
        self.driver.child.id()
    }

    /// Chromium's --user-data-dir, removed with the browser.
    pub fn profile_dir(&self) -> PathBuf {
        self.driver.dir.path().join("profile")
    }

    /// Ends the WebDriver session (Chromium quits), then stops chromedriver and removes the
    /// profile.
    pub async fn close(self) {
        let Browser { client, driver } = self;
        let closing = client.close();
        if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(10), closing).await {
            eprintln!(
                "closing the browser session on port {}: {error}",
                driver.port
            );
        }
        drop(driver);
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        if let Err(error) = self.client.goto(url).await {
            panic!("navigating to {url}: {error}");
        }
    }

    /// The page's URL.
    pub async fn url(&self) -> String {
        match self.client.current_url().await {
            Ok(url) => url.to_string(),
            Err(error) => format!("<no URL: {error}>"),
        }
    }

    /// The page's visible text (`document.body.innerText`).
    pub async fn page_text(&self) -> String {
        match self
            .client
            .execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .await
        {
            Ok(Value::String(text)) => text,
            Ok(other) => other.to_string(),
            Err(error) => format!("<no page text: {error}>"),
        }
    }

    /// The page's HTML as it is now.
    pub async fn source(&self) -> String {
        self.client
            .source()
            .await
            .unwrap_or_else(|error| format!("<no page source: {error}>"))
    }

    /// The first element matching the CSS `selector`, now.
    pub async fn find(&self, selector: &str) -> Element {
        match self.client.find(Locator::Css(selector)).await {
            Ok(element) => element,
            Err(error) => panic!(
                "{}",
                self.report(&format!("no element `{selector}` ({error})"))
                    .await
            ),
        }
    }

    /// The elements matching the CSS `selector`, now.
    pub async fn find_all(&self, selector: &str) -> Vec<Element> {
        match self.client.find_all(Locator::Css(selector)).await {
            Ok(elements) => elements,
            Err(error) => panic!(
                "{}",
                self.report(&format!("finding `{selector}`: {error}")).await
            ),
        }
    }

    /// How many elements match the CSS `selector`, now.
    pub async fn count(&self, selector: &str) -> usize {
        self.find_all(selector).await.len()
    }

    /// The visible text of the first element matching `selector`, now.
    pub async fn text(&self, selector: &str) -> String {
        let element = self.find(selector).await;
        match element.text().await {
            Ok(text) => text,
            Err(error) => panic!(
                "{}",
                self.report(&format!("the text of `{selector}`: {error}"))
                    .await
            ),
        }
    }

    /// The texts of all elements matching `selector`, in document order.
    pub async fn texts(&self, selector: &str) -> Vec<String> {
        let mut texts = Vec::new();
        for element in self.find_all(selector).await {
            texts.push(element.text().await.unwrap_or_default());
        }
        texts
    }

    /// Clicks the first element matching `selector`.
    pub async fn click(&self, selector: &str) {
        let element = self.find(selector).await;
        if let Err(error) = element.click().await {
            panic!(
                "{}",
                self.report(&format!("clicking `{selector}`: {error}"))
                    .await
            )
        }
    }

    /// Replaces the value of the input matching `selector` with `value`, typed.
    pub async fn fill(&self, selector: &str, value: &str) {
        let element = self.find(selector).await;
        let typed = async {
            element.clear().await?;
            element.send_keys(value).await
        };
        if let Err(error) = typed.await {
            panic!(
                "{}",
                self.report(&format!("typing into `{selector}`: {error}"))
                    .await
            )
        }
    }

    /// Submits the form matching `selector` with its first submit button (as a user would;
    /// whatever the form carries, a CSRF token included, goes along) and waits for the next
    /// page to load.
    pub async fn submit_form(&self, selector: &str) {
        let form = match self.client.form(Locator::Css(selector)).await {
            Ok(form) => form,
            Err(error) => panic!(
                "{}",
                self.report(&format!("no form `{selector}` ({error})"))
                    .await
            ),
        };
        if let Err(error) = form.submit().await {
            panic!(
                "{}",
                self.report(&format!("submitting `{selector}`: {error}"))
                    .await
            )
        }
    }

    /// Waits until an element matches the CSS `selector`.
    pub async fn wait_for_css(&self, selector: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(selector)).await {
                return element;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}",
                    self.report(&format!("no element `{selector}` after {timeout:?}"))
                        .await
                )
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until an element matching `selector` has a text containing `needle`; returns
    /// that text.
    pub async fn wait_for_text(&self, selector: &str, needle: &str, timeout: Duration) -> String {
        self.wait_for_text_where(
            selector,
            &format!("containing {needle:?}"),
            |text| text.contains(needle),
            timeout,
        )
        .await
    }

    /// Waits until an element matching `selector` has a text for which `predicate` holds;
    /// returns that text. `what` describes the predicate in the failure message.
    pub async fn wait_for_text_where(
        &self,
        selector: &str,
        what: &str,
        predicate: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            seen.clear();
            for element in self
                .client
                .find_all(Locator::Css(selector))
                .await
                .unwrap_or_default()
            {
                // An element replaced since the search is stale: look again next round.
                if let Ok(text) = element.text().await {
                    if predicate(&text) {
                        return text;
                    }
                    seen.push(text);
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}",
                    self.report(&format!(
                        "no element `{selector}` with a text {what} after {timeout:?}; \
                     the texts of `{selector}`: {seen:?}"
                    ))
                    .await
                )
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the JavaScript expression `condition` is truthy in the page.
    pub async fn wait_for_js(&self, condition: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let script = format!("return !!({condition});");
        loop {
            if let Ok(Value::Bool(true)) = self.client.execute(&script, vec![]).await {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}",
                    self.report(&format!("`{condition}` still false after {timeout:?}"))
                        .await
                )
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `js` (a function body: `return ...;`) in the page; its result as JSON.
    pub async fn eval(&self, js: &str) -> Value {
        self.eval_with(js, vec![]).await
    }

    /// [`Browser::eval`] with `args` as `arguments[0]`, `arguments[1]`, ...
    pub async fn eval_with(&self, js: &str, args: Vec<Value>) -> Value {
        match self.client.execute(js, args).await {
            Ok(value) => value,
            Err(error) => panic!("{}", self.report(&format!("running {js:?}: {error}")).await),
        }
    }

    /// Runs `js` as the body of an async function in the page (it may `await`, e.g.
    /// `return (await fetch('/x', {method: 'POST'})).status;`) and waits (30 s at most) for
    /// what it returns. A rejection (a thrown error) fails the test with its message.
    pub async fn eval_async(&self, js: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];\n\
             (async () => {{\n{js}\n}})().then(\
               (value) => done({{ ok: value === undefined ? null : value }}),\
               (error) => done({{ error: String(error && error.stack || error) }}));"
        );
        match self.client.execute_async(&script, vec![]).await {
            Ok(Value::Object(mut answer)) => {
                if let Some(error) = answer.remove("error") {
                    panic!(
                        "{}",
                        self.report(&format!("running async {js:?}: {error}")).await
                    )
                }
                answer.remove("ok").unwrap_or(Value::Null)
            }
            Ok(other) => other,
            Err(error) => panic!(
                "{}",
                self.report(&format!("running async {js:?}: {error}")).await
            ),
        }
    }

    /// `fetch(url, {method, body, headers})` from the page (same origin: its cookies go along,
    /// nothing else is added, so a POST carries no CSRF token unless `body` or `headers` has
    /// one); redirects are followed.
    pub async fn fetch(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> FetchResponse {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), json!(value)))
            .collect();
        let request = json!({
            "method": method,
            "body": body,
            "headers": headers,
            "credentials": "same-origin",
        });
        let js = format!(
            "const response = await fetch({url}, {request});\n\
             return {{ status: response.status, redirected: response.redirected, \
                       url: response.url, body: await response.text() }};",
            url = json!(url),
        );
        let answer = self.eval_async(&js).await;
        FetchResponse {
            status: answer["status"].as_u64().unwrap_or_default() as u16,
            redirected: answer["redirected"].as_bool().unwrap_or_default(),
            url: answer["url"].as_str().unwrap_or_default().to_owned(),
            body: answer["body"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// [`Browser::fetch`] of a POST with `fields` form-encoded (and nothing else).
    pub async fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> FetchResponse {
        let body: String = fields
            .iter()
            .map(|(name, value)| format!("{}={}", url_encode(name), url_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        self.fetch(
            "POST",
            url,
            Some(&body),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await
    }

    /// Saves a PNG of the viewport to `path`; returns its bytes.
    pub async fn screenshot(&self, path: &Path) -> Vec<u8> {
        let png = match self.client.screenshot().await {
            Ok(png) => png,
            Err(error) => panic!(
                "{}",
                self.report(&format!("taking a screenshot: {error}")).await
            ),
        };
        std::fs::write(path, &png)
            .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
        png
    }

    /// Resizes the browser window (e.g. 390 × 844 for a phone).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        if let Err(error) = self.client.set_window_size(width, height).await {
            panic!(
                "{}",
                self.report(&format!("resizing the window to {width}x{height}: {error}"))
                    .await
            )
        }
    }

    /// `problem`, the page's URL and the start of its text (or of its HTML when it shows no
    /// text): what the helpers panic with.
    pub async fn report(&self, problem: &str) -> String {
        let url = self.url().await;
        let mut text = self.page_text().await;
        let mut what = "text";
        if text.trim().is_empty() {
            text = self.source().await;
            what = "HTML";
        }
        format!(
            "{problem}\n  page: {url}\n  its {what} (first {PAGE_EXCERPT} characters):\n{}",
            excerpt(&text, PAGE_EXCERPT)
        )
    }
}

/// Spawns chromedriver on a free port (output to `log`) and waits until it answers; retries
/// on another port when the chosen one was taken in the meantime.
async fn spawn_chromedriver(log: &Path) -> (Child, u16) {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let output = File::create(log).expect("chromedriver's log file");
        let mut driver = Command::new(CHROMEDRIVER);
        driver
            .args([format!("--port={port}"), "--log-level=WARNING".to_owned()])
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("chromedriver's log file"))
            .stderr(output);
        std::os::unix::process::CommandExt::process_group(&mut driver, 0);
        let mut child = driver.spawn().unwrap_or_else(|error| {
            panic!(
                "spawning {CHROMEDRIVER}: {error} (scripts/lib/tools.sh's ensure_chromium \
                 installs it)"
            )
        });
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break; // The port was taken: try another.
            }
            if driver_ready(port) {
                return (child, port);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromedriver did not answer on port {port} within {STARTUP:?}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
    panic!(
        "chromedriver exited five times on start:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Whether chromedriver on `port` says it is ready (`GET /status`).
fn driver_ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains("\"ready\":true")
}

fn url_encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                encoded.push(byte as char)
            }
            b' ' => encoded.push('+'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

fn excerpt(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn tail(text: &str, chars: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(chars)).collect()
}

/// The harness's own page: a button whose click adds a line at once and another 300 ms later,
/// and a form whose POST is refused without the token.
const HARNESS_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>harness</title>
<style>body { margin: 0; font-family: sans-serif; } #go { width: 100%; }</style>
</head>
<body>
<h1 id="title">Browser harness</h1>
<button id="go" type="button">Go</button>
<ul id="log"></ul>
<form id="form" method="post" action="/submit">
  <input id="token" name="token">
  <button type="submit">Send</button>
</form>
<script>
  document.getElementById('go').addEventListener('click', () => {
    const log = document.getElementById('log');
    const add = (text) => {
      const line = document.createElement('li');
      line.textContent = text;
      log.appendChild(line);
    };
    add('clicked');
    setTimeout(() => add('a moment later'), 300);
  });
</script>
</body>
</html>
"#;

/// Answers GET / with [`HARNESS_PAGE`] and POST /submit with 200 when the form-encoded body
/// carries `token=secret`, else 403; each connection on its own thread. Returns the base URL.
fn serve_harness_page() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the harness page");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer_harness_request(stream));
        }
    });
    base
}

fn answer_harness_request(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
        if let Some(at) = request.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
    }
    let body = String::from_utf8_lossy(&request[head_end..]).into_owned();
    let (status, page) = match head.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["GET", "/"] => ("200 OK", HARNESS_PAGE.to_owned()),
        ["POST", "/submit"] if body.split('&').any(|field| field == "token=secret") => (
            "200 OK",
            "<!doctype html><title>sent</title><p id=\"result\">accepted</p>".to_owned(),
        ),
        ["POST", "/submit"] => ("403 Forbidden", "refused: no token".to_owned()),
        _ => ("404 Not Found", "not found".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// The width and height in a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "not a PNG ({} bytes)",
        png.len()
    );
    let word = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    (word(16), word(20))
}

/// The processes (by pid) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_harness_drives_headless_chromium() {
    let base = serve_harness_page();
    let shots = tempfile::tempdir().expect("a directory for screenshots");

    let started = Instant::now();
    let browser = Browser::start().await;
    eprintln!(
        "chromedriver + headless Chromium up in {:?}",
        started.elapsed()
    );
    let profile = browser.profile_dir();
    assert!(profile.is_dir(), "the profile directory {profile:?}");

    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.url().await, format!("{base}/"));
    browser.wait_for_css("#title", WAIT).await;
    assert_eq!(browser.text("#title").await, "Browser harness");
    assert_eq!(
        browser.eval("return document.title;").await,
        json!("harness")
    );
    let title = browser
        .client()
        .title()
        .await
        .expect("the title via fantoccini");
    assert_eq!(title, "harness");
    assert_eq!(
        browser
            .eval_with(
                "return arguments[0] + arguments[1];",
                vec![json!(2), json!(3)]
            )
            .await,
        json!(5)
    );
    assert_eq!(browser.count("#log li").await, 0);

    // The click's first line is there at once, the second only after the 300 ms timer.
    browser.click("#go").await;
    let line = browser
        .wait_for_text("#log li", "a moment later", WAIT)
        .await;
    assert_eq!(line, "a moment later");
    assert_eq!(
        browser.texts("#log li").await,
        ["clicked", "a moment later"]
    );
    let lines = browser
        .wait_for_text_where(
            "#log",
            "of two lines",
            |text| text.lines().count() == 2,
            WAIT,
        )
        .await;
    assert_eq!(lines, "clicked\na moment later");
    browser
        .wait_for_js("document.querySelectorAll('#log li').length === 2", WAIT)
        .await;

    // A POST from the page's JS without the token is refused, with it accepted.
    let refused = browser.post_form("/submit", &[("note", "no token")]).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.body, "refused: no token");
    assert!(!refused.redirected);
    assert_eq!(refused.url, format!("{base}/submit"));
    let accepted = browser.post_form("/submit", &[("token", "secret")]).await;
    assert_eq!(accepted.status, 200, "{accepted:?}");
    let status = browser
        .eval_async("return (await fetch('/submit', { method: 'POST' })).status;")
        .await;
    assert_eq!(status, json!(403));
    let missing = browser.fetch("GET", "/nowhere", None, &[]).await;
    assert_eq!(missing.status, 404);

    // A wait that times out says what it waited for, where, and what the page shows.
    let timed_out = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        browser.wait_for_css("#never", Duration::from_millis(300)),
    ))
    .await
    .expect_err("waiting for a missing element fails");
    let message = timed_out
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("#never"), "{message}");
    assert!(message.contains(&format!("page: {base}/")), "{message}");
    assert!(message.contains("Browser harness"), "{message}");

    // The screenshot is a PNG of the 1280-pixel-wide viewport.
    let png = browser.screenshot(&shots.path().join("desktop.png")).await;
    let on_disk = std::fs::read(shots.path().join("desktop.png")).expect("the screenshot");
    assert_eq!(on_disk, png);
    let (width, height) = png_size(&png);
    assert_eq!(width, 1280, "the screenshot is {width}x{height}");
    assert!(height > 0);

    // A phone-sized window: the page lays out 390 CSS pixels wide.
    browser.set_window_size(390, 844).await;
    browser.wait_for_js("window.innerWidth === 390", WAIT).await;
    let button_width = browser
        .eval("return document.getElementById('go').getBoundingClientRect().width;")
        .await;
    assert_eq!(button_width.as_f64(), Some(390.0));
    let png = browser.screenshot(&shots.path().join("phone.png")).await;
    assert_eq!(png_size(&png).0, 390);

    // A form submitted as a user would: typed token, submit button, the next page.
    browser.fill("#token", "secret").await;
    browser.submit_form("#form").await;
    browser.wait_for_text("#result", "accepted", WAIT).await;
    assert_eq!(browser.url().await, format!("{base}/submit"));

    // Closing ends chromedriver and Chromium and removes the profile.
    let driver = browser.driver_pid();
    let needle = profile.to_string_lossy().into_owned();
    assert!(
        !processes_mentioning(&needle).is_empty(),
        "Chromium runs with {needle}"
    );
    browser.close().await;
    assert!(
        !Path::new(&format!("/proc/{driver}")).exists(),
        "chromedriver {driver} is gone"
    );
    assert!(!profile.exists(), "{profile:?} is removed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        processes_mentioning(&needle),
        Vec::<u32>::new(),
        "Chromium is gone"
    );
}
