//! A real OAuth 2.0 authorization server on loopback, and a "browser" that goes through its
//! authorization flow.
//!
//! The server is `tests/oauth-server`: the npm package `oidc-provider`, configured for one
//! confidential client and run with Node. It requires PKCE (S256), issues opaque access tokens and
//! a refresh token with every code, rotates the refresh token on each use, and revokes at
//! `/token/revocation`; reusing a rotated refresh token revokes the whole grant. No page asks the
//! user anything: a client that keeps cookies and follows redirects, as [`follow_authorization`]
//! does, goes from `/auth?...` back to its redirect URI in five hops, logged in as the request's
//! `login_hint` (or `alice`). Besides the protocol's endpoints it serves `GET /api/me`, an API
//! that takes its access tokens, `GET /test/stats`, which counts requests to the token and
//! revocation endpoints, and `POST /test/revoke-all`, which revokes every grant behind the
//! client's back.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use reqwest::header::LOCATION;
use reqwest::redirect::Policy;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;
use url::{Position, Url};

/// What the server prints on stdout, followed by its port, once it accepts connections.
const READY_LINE: &str = "oauth-server listening on http://127.0.0.1:";

/// How long Node may take to load the provider and listen.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How long `npm ci` may take, downloads included.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// How many redirects [`follow_authorization`] follows before it gives up.
const MAX_REDIRECTS: usize = 15;

/// A running `tests/oauth-server`; the Node process is killed when this is dropped.
pub(crate) struct OAuthServer {
    base_url: String,
    http: reqwest::Client,
    /// Spawned with `kill_on_drop`, so dropping the server kills it.
    _child: Child,
}

impl OAuthServer {
    /// Starts the server on a free loopback port, configured by `env`:
    ///
    /// - `CLIENT_ID`, `CLIENT_SECRET`, `REDIRECT_URI` (required): the one client it knows.
    /// - `CLIENT_AUTH`: `client_secret_basic` (the default) or `client_secret_post`; the token
    ///   and revocation endpoints refuse the other one with `invalid_client`.
    /// - `ACCESS_TOKEN_TTL`: the access tokens' lifetime in seconds, 60 by default.
    ///
    /// The server's issuer is its [`base_url`](Self::base_url). Installs the npm packages first
    /// if no earlier run did.
    pub(crate) async fn start(env: &[(&str, &str)]) -> Result<Self> {
        let dir = installed().await?;

        let mut child = Command::new("node")
            .arg("server.js")
            .current_dir(dir)
            .envs(env.iter().copied())
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("could not run node; is Node.js installed?")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_drain = tokio::spawn(collect(
            child.stderr.take().context("stderr is piped")?,
            stderr.clone(),
        ));
        let mut stdout = BufReader::new(child.stdout.take().context("stdout is piped")?).lines();

        let port = match timeout(START_TIMEOUT, ready_port(&mut stdout)).await {
            Ok(Ok(port)) => port,
            failed => {
                // Killing it closes stderr, so the log is complete once the drain ends.
                child.kill().await.ok();
                timeout(Duration::from_secs(1), stderr_drain).await.ok();
                let why = match failed {
                    Ok(Err(err)) => format!("{err:#}"),
                    _ => format!("no `{READY_LINE}...` within {START_TIMEOUT:?}"),
                };
                let log = stderr.lock().unwrap();
                bail!("the OAuth server did not start: {why}; stderr:\n{log}");
            }
        };
        // Keep reading, so that a chatty server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

        Ok(Self {
            base_url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            _child: child,
        })
    }

    /// The server's base URL and issuer, like `http://127.0.0.1:4242`. The endpoints are
    /// `/auth`, `/token`, `/token/revocation`, and the test API `/api/me`.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The request counts so far: `{"token_requests": {"authorization_code": n, "refresh_token":
    /// n}, "revocations": n, "wrong_client_auth": n}`. Requests the provider refused count too;
    /// those refused for the wrong client authentication method count only as `wrong_client_auth`.
    pub(crate) async fn stats(&self) -> Result<Value> {
        let url = format!("{}/test/stats", self.base_url);
        let response = self.http.get(url).send().await?.error_for_status()?;
        Ok(response.json().await?)
    }

    /// Revokes the access tokens the API has accepted, and only them: the refresh tokens stay
    /// good, as with a provider that cuts access tokens short.
    pub(crate) async fn revoke_access_tokens(&self) -> Result<()> {
        let url = format!("{}/test/revoke-access", self.base_url);
        self.http.post(url).send().await?.error_for_status()?;
        Ok(())
    }

    /// Revokes every grant the user gave, with its access and refresh tokens, the way a user who
    /// disconnects the application in the provider's own settings would: the client is not told.
    pub(crate) async fn revoke_all(&self) -> Result<()> {
        let url = format!("{}/test/revoke-all", self.base_url);
        self.http.post(url).send().await?.error_for_status()?;
        Ok(())
    }
}

/// Opens an authorization link as its user would: loads Keyhole's page, checks that it offers
/// the button that starts the flow, and presses it. Answers Keyhole's answer to the button (a
/// redirect to the provider, or a page saying why not), or the page itself when it has no button.
pub(crate) async fn open_link(browser: &reqwest::Client, link: &Url) -> Result<reqwest::Response> {
    let page = browser.get(link.clone()).send().await?;
    if page.status() != reqwest::StatusCode::OK {
        return Ok(page);
    }
    let html = page.text().await?;
    ensure!(
        html.contains(r#"<form method="post">"#),
        "the link's page offers no button: {html}"
    );
    Ok(browser.post(link.clone()).send().await?)
}

/// Plays the user's browser from `authorize_url` on: a cookie jar, Keyhole's page with its button
/// pressed ([`open_link`]), then each redirect followed by hand, at most 15. A URL whose origin is a key of `origin_map` is requested at the mapped
/// origin instead, path and query kept, such as `("https://auth.oidc.test",
/// "http://127.0.0.1:4242")`. Returns the first response that is not a redirect.
///
/// The jar is this call's own, so each call is a browser that has not logged in yet.
pub(crate) async fn follow_authorization(
    authorize_url: &str,
    origin_map: &[(&str, &str)],
) -> Result<reqwest::Response> {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut url = Url::parse(authorize_url).context("the authorization URL is not a URL")?;
    url = map_origin(url, origin_map)?;

    // Queries hold codes and state; error messages show each hop without its query.
    let mut trail = Vec::new();
    let mut response = open_link(&browser, &url)
        .await
        .with_context(|| format!("opening {} failed", without_query(&url)))?;
    for _ in 0..=MAX_REDIRECTS {
        let status = response.status();
        trail.push(format!("{} {}", status.as_u16(), without_query(&url)));
        if !status.is_redirection() {
            return Ok(response);
        }

        let location = response
            .headers()
            .get(LOCATION)
            .with_context(|| format!("a redirect without Location: {}", trail.join(" -> ")))?
            .to_str()
            .context("the Location header is not text")?;
        url = map_origin(url.join(location)?, origin_map)?;
        response = browser
            .get(url.clone())
            .send()
            .await
            .with_context(|| format!("GET {} failed", without_query(&url)))?;
    }
    bail!(
        "still redirected after {MAX_REDIRECTS} redirects: {}",
        trail.join(" -> ")
    )
}

/// `url` at the origin `origin_map` gives its origin, or unchanged if it gives none.
fn map_origin(url: Url, origin_map: &[(&str, &str)]) -> Result<Url> {
    let origin = url.origin().ascii_serialization();
    for (from, to) in origin_map {
        let from = Url::parse(from).with_context(|| format!("`{from}` is not an origin"))?;
        if from.origin().ascii_serialization() == origin {
            let to_origin = to.trim_end_matches('/');
            let mapped = format!("{to_origin}{}", &url[Position::BeforePath..]);
            return Url::parse(&mapped).with_context(|| format!("`{to}` is not an origin"));
        }
    }
    Ok(url)
}

/// The URL up to its path: what an error message may show of it.
fn without_query(url: &Url) -> &str {
    &url[..Position::AfterPath]
}

/// Reads stdout until the ready line and returns the port it names.
async fn ready_port(
    stdout: &mut tokio::io::Lines<BufReader<impl AsyncRead + Unpin>>,
) -> Result<u16> {
    while let Some(line) = stdout.next_line().await? {
        if let Some(port) = line.strip_prefix(READY_LINE) {
            return port
                .trim()
                .parse()
                .with_context(|| format!("no port in `{line}`"));
        }
    }
    bail!("the server closed stdout before it was ready")
}

/// Appends each line of `pipe` to `log` until the pipe closes.
async fn collect(pipe: impl AsyncRead + Unpin, log: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut log = log.lock().unwrap();
        log.push_str(&line);
        log.push('\n');
    }
}

/// The server's directory, with its npm packages installed on the first call of this test
/// process unless an earlier run left them; later calls share the outcome.
async fn installed() -> Result<&'static Path> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

    // `npm ci` blocks for a while; keep the test's runtime free meanwhile.
    let installed = tokio::task::spawn_blocking(|| {
        INSTALLED.get_or_init(|| install().map_err(|err| format!("{err:#}")))
    })
    .await?;
    installed
        .as_deref()
        .map_err(|err| anyhow!("the OAuth server's npm packages are missing: {err}"))
}

/// Runs `npm ci` in the server's directory if `node_modules` lacks the provider.
fn install() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oauth-server");
    let provider = dir.join("node_modules/oidc-provider/package.json");
    if provider.is_file() {
        return Ok(dir);
    }

    // npm's output goes to a file: a pipe nobody reads while we wait could fill up and stall it.
    let mut log = tempfile::tempfile()?;
    let mut npm = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .spawn()
        .context("could not run npm; is Node.js installed?")?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    let status = loop {
        if let Some(status) = npm.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            npm.kill().ok();
            npm.wait()?;
            bail!("`npm ci` did not finish within {INSTALL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    let mut output = String::new();
    log.rewind()?;
    log.read_to_string(&mut output)?;
    ensure!(
        status.success(),
        "`npm ci` in {} exited with {status}:\n{output}",
        dir.display()
    );
    Ok(dir)
}
