//! The `keyhole` binary under test, run as a child process on a free loopback port.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::timeout;

use super::upstream::{OVERRIDDEN_HOSTS, Upstream};

/// The path of the binary cargo built for this test.
pub(crate) const KEYHOLE: &str = env!("CARGO_BIN_EXE_keyhole");

/// What the server prints on stdout, followed by its address, once it accepts connections.
const READY_LINE: &str = "keyhole listening on http://";

/// How long the server may take to start, compiling the installed plugins included.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a test waits for a line to show up in the server's log.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `keyhole serve` with its own data directory and its own HTTPS upstream.
///
/// The child process is killed when this is dropped.
pub(crate) struct Keyhole {
    upstream: Upstream,
    data_dir: TempDir,
    admin_token: String,
    extra_args: Vec<String>,
    /// The `--listen` address: port 0 unless the test chose one.
    listen: SocketAddr,
    child: Option<Child>,
    addr: SocketAddr,
    logs: Logs,
    http: reqwest::Client,
}

impl Keyhole {
    /// Starts a server with the default limits.
    pub(crate) async fn start() -> Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `keyhole serve` flags, such as `--max-upload-bytes`.
    pub(crate) async fn start_with(extra_args: &[&str]) -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), extra_args).await
    }

    /// Starts a server listening on `listen`, for a test that must tell another server the
    /// address before this one starts (an OAuth provider its redirect URI, say). It keeps the
    /// address across restarts.
    pub(crate) async fn start_on(listen: SocketAddr, extra_args: &[&str]) -> Result<Self> {
        let mut keyhole = Self {
            upstream: Upstream::start().await?,
            data_dir: tempfile::tempdir()?,
            admin_token: format!("admin-{}", hex::encode(rand::random::<[u8; 16]>())),
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            listen,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs: Logs::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        keyhole.spawn().await?;
        Ok(keyhole)
    }

    /// Stops the server gracefully if it runs, then starts it again on the same data directory.
    /// It listens on a new port afterwards, unless it was started with [`Self::start_on`].
    pub(crate) async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            let status = self.stop().await?;
            ensure!(
                status.success(),
                "keyhole exited with {status} after SIGTERM"
            );
        }
        self.spawn().await
    }

    /// Kills the server with SIGKILL, as a crash or a power cut would, and waits for it to die.
    pub(crate) async fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("keyhole is not running")?;
        child.kill().await?;
        Ok(())
    }

    /// Asks the server to stop with SIGTERM and waits for it to exit.
    pub(crate) async fn stop(&mut self) -> Result<ExitStatus> {
        self.signal("TERM")?;
        self.wait_exit().await
    }

    /// Sends SIGKILL without waiting, so that a test can crash the server while it drives
    /// requests through `&self`; [`Self::wait_exit`] collects the process afterwards.
    pub(crate) fn kill_by_pid(&self) -> Result<()> {
        self.signal("KILL")
    }

    /// Sends SIGTERM without waiting; see [`Self::kill_by_pid`].
    pub(crate) fn signal_term(&self) -> Result<()> {
        self.signal("TERM")
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let child = self.child.as_ref().context("keyhole is not running")?;
        let pid = child.id().context("keyhole has already exited")?;
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        ensure!(
            sent.success(),
            "could not send SIG{signal} to keyhole ({pid})"
        );
        Ok(())
    }

    /// Waits for the signalled server to exit.
    pub(crate) async fn wait_exit(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("keyhole is not running")?;
        // On timeout the child is dropped here, which kills it.
        let status = timeout(STOP_TIMEOUT, child.wait())
            .await
            .with_context(|| {
                format!("keyhole did not exit within {STOP_TIMEOUT:?} of SIGTERM")
            })??;
        Ok(status)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut command = Command::new(KEYHOLE);
        remove_keyhole_env(&mut command);
        command
            .args(["serve", "--listen", &self.listen.to_string(), "--data-dir"])
            .arg(self.data_dir.path())
            .args(self.egress_args())
            .args(&self.extra_args)
            .env("KEYHOLE_ADMIN_TOKEN", &self.admin_token)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .context("could not start the keyhole binary")?;

        let (ready, listening) = oneshot::channel();
        let stdout = child.stdout.take().context("stdout is piped")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        tokio::spawn(drain(stdout, self.logs.clone(), Some(ready)));
        tokio::spawn(drain(stderr, self.logs.clone(), None));
        self.child = Some(child);

        self.addr = match timeout(START_TIMEOUT, listening).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => bail!(
                "keyhole closed stdout before it was ready; log:\n{}",
                self.logs
            ),
            Err(_) => bail!(
                "keyhole did not print `{READY_LINE}...` within {START_TIMEOUT:?}; log:\n{}",
                self.logs
            ),
        };
        Ok(())
    }

    /// Sends every overridden host to the upstream, trusting the upstream's CA.
    fn egress_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for host in OVERRIDDEN_HOSTS {
            args.push("--egress-override".to_owned());
            args.push(format!(
                "https://{host}=https://127.0.0.1:{}",
                self.upstream.port()
            ));
        }
        args.push("--egress-ca".to_owned());
        args.push(self.upstream.ca_pem().display().to_string());
        args
    }

    /// The base URL of the running server, like `http://127.0.0.1:4242`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's data directory.
    pub(crate) fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The admin token the server was started with.
    pub(crate) fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The server's log so far, stdout and stderr, across restarts.
    pub(crate) fn logs(&self) -> &Logs {
        &self.logs
    }

    /// The HTTPS server the plugins' requests are sent to.
    pub(crate) fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// A request without credentials.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url()))
    }

    /// A request with the admin token.
    pub(crate) fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(&self.admin_token)
    }

    /// A request with an API key.
    pub(crate) fn api(&self, key: &ApiKey, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(&key.secret)
    }

    /// GETs an admin path.
    pub(crate) async fn admin_get(&self, path: &str) -> Result<Reply> {
        self.admin(Method::GET, path).reply().await
    }

    /// DELETEs an admin path.
    pub(crate) async fn admin_delete(&self, path: &str) -> Result<Reply> {
        self.admin(Method::DELETE, path).reply().await
    }

    /// GETs a chat-backend path with an API key.
    pub(crate) async fn api_get(&self, key: &ApiKey, path: &str) -> Result<Reply> {
        self.api(key, Method::GET, path).reply().await
    }

    /// Uploads a plugin; the reply is 201 or 200 on success.
    pub(crate) async fn upload(&self, wasm: Vec<u8>) -> Result<Reply> {
        self.admin(Method::POST, "/admin/plugins")
            .header("content-type", "application/wasm")
            .body(wasm)
            .reply()
            .await
    }

    /// Replaces a plugin's settings.
    pub(crate) async fn configure(&self, plugin: &str, settings: Value) -> Result<Reply> {
        self.admin(Method::PUT, &format!("/admin/plugins/{plugin}/settings"))
            .json(&settings)
            .reply()
            .await
    }

    /// Creates an API key for `tenant`.
    pub(crate) async fn create_api_key(&self, tenant: &str) -> Result<ApiKey> {
        let created = self
            .admin(Method::POST, "/admin/api-keys")
            .json(&json!({ "tenant": tenant }))
            .reply()
            .await?
            .expect(201)?;
        Ok(ApiKey {
            key_id: created["key_id"].as_str().context("no key_id")?.to_owned(),
            secret: created["api_key"]
                .as_str()
                .context("no api_key")?
                .to_owned(),
        })
    }

    /// Invokes a tool directly, as user `alice`.
    pub(crate) async fn invoke(
        &self,
        key: &ApiKey,
        plugin: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<Reply> {
        self.api(
            key,
            Method::POST,
            &format!("/v1/plugins/{plugin}/tools/{tool}/invoke"),
        )
        .json(&json!({ "user": "alice", "arguments": arguments }))
        .reply()
        .await
    }

    /// Invokes a tool the way a chat backend relays a model's tool call, as user `alice`.
    pub(crate) async fn tool_call(
        &self,
        key: &ApiKey,
        name: &str,
        arguments: &str,
    ) -> Result<Reply> {
        let body = json!({
            "user": "alice",
            "tool_call": {
                "id": "call_1",
                "type": "function",
                "function": { "name": name, "arguments": arguments },
            },
        });
        self.api(key, Method::POST, "/v1/tool-calls")
            .json(&body)
            .reply()
            .await
    }
}

impl Drop for Keyhole {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.start_kill();
        // Reap the process before its data directory is removed, for up to a second.
        for _ in 0..100 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Keeps the developer's own `KEYHOLE_*` variables away from the process under test.
pub(crate) fn remove_keyhole_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYHOLE_") {
            command.env_remove(name);
        }
    }
}

/// Copies a stream of the server's output into the log, line by line, and reports the address
/// from the ready line to `ready`.
async fn drain(
    stream: impl AsyncRead + Unpin,
    logs: Logs,
    mut ready: Option<oneshot::Sender<SocketAddr>>,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while let Ok(read) = reader.read_until(b'\n', &mut line).await {
        if read == 0 {
            break;
        }
        let text = strip_ansi(&String::from_utf8_lossy(&line));
        if let Some(addr) = listening_address(&text)
            && let Some(ready) = ready.take()
        {
            let _ = ready.send(addr);
        }
        logs.push(text.trim_end());
        line.clear();
    }
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(READY_LINE)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Removes terminal colour codes, in case the server colours its log anyway.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `ESC [ params letter`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The server's output, shared with the tasks that read it.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<String>>);

impl Logs {
    fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }

    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits until a logged line satisfies `matches`, and returns it.
    pub(crate) async fn wait_for_line(
        &self,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = tokio::time::Instant::now() + LOG_TIMEOUT;
        loop {
            if let Some(line) = self.text().lines().find(|line| matches(line)) {
                return Ok(line.to_owned());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no line in the log {what} within {LOG_TIMEOUT:?}; log:\n{self}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `needle` shows up in the log.
    pub(crate) async fn wait_for(&self, needle: &str) -> Result<String> {
        self.wait_for_line(&format!("contains `{needle}`"), |line| {
            line.contains(needle)
        })
        .await
    }
}

impl fmt::Display for Logs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// An API key the admin created.
#[derive(Debug, Clone)]
pub(crate) struct ApiKey {
    /// The key's public identifier, used to revoke it.
    pub(crate) key_id: String,
    /// The bearer secret, `kh_...`.
    pub(crate) secret: String,
}

/// A response read in full, whose `Display` shows status and body for assertion messages.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) text: String,
}

impl Reply {
    async fn read(response: reqwest::Response) -> Result<Self> {
        Ok(Self {
            status: response.status(),
            headers: response.headers().clone(),
            text: response.text().await?,
        })
    }

    /// The body as JSON; an empty body is `null`.
    pub(crate) fn json(&self) -> Result<Value> {
        if self.text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.text).with_context(|| format!("the body is not JSON: {self}"))
    }

    /// The body as JSON, provided the status is `status`.
    pub(crate) fn expect(&self, status: u16) -> Result<Value> {
        ensure!(
            self.status.as_u16() == status,
            "expected HTTP {status}, got {self}"
        );
        self.json()
    }

    /// The `error` object of an error answer with this status and code.
    pub(crate) fn expect_error(&self, status: u16, code: &str) -> Result<Value> {
        let body = self.expect(status)?;
        let error = &body["error"];
        ensure!(
            error["code"] == code,
            "expected error code `{code}`, got {self}"
        );
        ensure!(
            error["message"].is_string(),
            "the error has no message: {self}"
        );
        Ok(error.clone())
    }

    /// A response header's value.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.text)
    }
}

/// Sends a request and reads its whole response.
pub(crate) trait ReplyExt {
    /// Sends the request and reads the whole response, whatever its status.
    async fn reply(self) -> Result<Reply>;
}

impl ReplyExt for RequestBuilder {
    async fn reply(self) -> Result<Reply> {
        Reply::read(self.send().await?).await
    }
}
