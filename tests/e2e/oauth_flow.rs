//! The whole OAuth flow against a real authorization server: `tests/oauth-server`, oidc-provider
//! on loopback, which requires PKCE, rotates the refresh token at every use and revokes the whole
//! grant when a rotated one comes back.
//!
//! The plugin `oidc-probe` names its provider `auth.oidc.test` and its API `api.oidc.test`; Keyhole
//! reaches both at the provider's loopback address through egress overrides. The browser reaches
//! the provider there too: [`follow_authorization`] plays it in one go, [`Flow::trip`] step by
//! step, stopping before it returns to Keyhole so that a test can tamper with the callback. Each
//! test starts its own provider and its own server.

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::future::join_all;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::{sleep, timeout};
use url::{Position, Url};

use crate::harness::{
    ApiKey, KEYHOLE, Keyhole, OAuthServer, Reply, ReplyExt, contains, files_under,
    follow_authorization, guests, open_link, remove_keyhole_env,
};

/// The plugin's id, for both builds.
const PLUGIN: &str = "oidc-probe";

/// The client the provider knows and the admin sets.
const CLIENT_ID: &str = "keyhole-e2e";

/// The origin the plugin gives its authorization endpoint; the browser finds the provider there.
const AUTH_ORIGIN: &str = "https://auth.oidc.test";

/// The tenant of the tests' API key.
const TENANT: &str = "acme";

/// An access token lifetime no test outlives: the token is never due for a refresh.
const LONG_TTL: u64 = 3600;

/// Keyhole refreshes a token this long before it expires (`REFRESH_MARGIN_SECS` in the host).
const REFRESH_MARGIN: u64 = 60;

/// How many redirects [`Flow::trip`] follows before it gives up.
const MAX_HOPS: usize = 15;

/// How long the CLI may take to print the link, and to finish once the user has connected.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A provider and a Keyhole that knows it, with `oidc-probe` installed, its client set, and an
/// API key of [`TENANT`].
struct Flow {
    keyhole: Keyhole,
    provider: OAuthServer,
    key: ApiKey,
    client_secret: String,
}

impl Flow {
    /// Starts both servers; the provider's access tokens live `access_token_ttl` seconds.
    async fn start(access_token_ttl: u64) -> Result<Self> {
        Self::start_with(access_token_ttl, &[]).await
    }

    /// Starts both servers, with extra `keyhole serve` flags.
    async fn start_with(access_token_ttl: u64, keyhole_args: &[&str]) -> Result<Self> {
        let client_secret = format!("secret-{}", hex::encode(rand::random::<[u8; 16]>()));

        // The provider must know Keyhole's redirect URI, and Keyhole the provider's address, when
        // each starts: hold a port for Keyhole while the provider starts, so nothing else takes it.
        let reserved = TcpListener::bind("127.0.0.1:0")?;
        let addr: SocketAddr = reserved.local_addr()?;
        let redirect_uri = format!("http://{addr}/oauth/callback");
        let ttl = access_token_ttl.to_string();
        let provider = OAuthServer::start(&[
            ("CLIENT_ID", CLIENT_ID),
            ("CLIENT_SECRET", &client_secret),
            ("REDIRECT_URI", &redirect_uri),
            ("ACCESS_TOKEN_TTL", &ttl),
        ])
        .await?;

        let mut args = Vec::new();
        for origin in [
            AUTH_ORIGIN,
            "https://auth2.oidc.test",
            "https://api.oidc.test",
        ] {
            args.push("--egress-override".to_owned());
            args.push(format!("{origin}={}", provider.base_url()));
        }
        args.extend(keyhole_args.iter().map(|arg| (*arg).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        drop(reserved);
        let keyhole = Keyhole::start_on(addr, &args).await?;

        keyhole
            .upload(guests().await?.oidc_probe()?)
            .await?
            .expect(201)?;
        let key = keyhole.create_api_key(TENANT).await?;
        let flow = Self {
            keyhole,
            provider,
            key,
            client_secret,
        };
        flow.set_client().await?.expect(200)?;
        Ok(flow)
    }

    /// The admin sets the plugin's OAuth client.
    async fn set_client(&self) -> Result<Reply> {
        let client = json!({ "client_id": CLIENT_ID, "client_secret": self.client_secret });
        self.keyhole
            .admin(
                Method::PUT,
                &format!("/admin/plugins/{PLUGIN}/oauth-client"),
            )
            .json(&client)
            .reply()
            .await
    }

    /// The plugin as the admin sees it.
    async fn plugin_view(&self) -> Result<Value> {
        self.keyhole
            .admin_get(&format!("/admin/plugins/{PLUGIN}"))
            .await?
            .expect(200)
    }

    /// Calls one of the plugin's tools for `user` with the tests' API key.
    async fn invoke(&self, user: &str, tool: &str) -> Result<Reply> {
        self.invoke_with(&self.key, user, tool).await
    }

    /// Calls one of the plugin's tools for `user` with `key`.
    async fn invoke_with(&self, key: &ApiKey, user: &str, tool: &str) -> Result<Reply> {
        let path = format!("/v1/plugins/{PLUGIN}/tools/{tool}/invoke");
        self.keyhole
            .api(key, Method::POST, &path)
            .json(&json!({ "user": user, "arguments": {} }))
            .reply()
            .await
    }

    /// The user's connections as `key`'s tenant sees them.
    async fn connections(&self, key: &ApiKey, user: &str) -> Result<Vec<Value>> {
        let listed = self
            .keyhole
            .api_get(key, &format!("/v1/users/{user}/connections"))
            .await?
            .expect(200)?;
        listed["connections"]
            .as_array()
            .cloned()
            .with_context(|| format!("no `connections` list in {listed}"))
    }

    /// Where the browser finds the provider.
    fn origin_map(&self) -> [(&str, &str); 1] {
        [(AUTH_ORIGIN, self.provider.base_url())]
    }

    /// Asks for a link by calling `me` for `user`, and goes through it with a browser; the
    /// callback must say the account is connected.
    async fn connect(&self, user: &str) -> Result<()> {
        let link = authorize_url(&self.invoke(user, "me").await?)?;
        self.authorize(&link).await
    }

    /// Goes through an authorization link with a fresh browser, up to Keyhole's page saying the
    /// account is connected.
    async fn authorize(&self, link: &str) -> Result<()> {
        let page = follow_authorization(link, &self.origin_map()).await?;
        let status = page.status();
        let text = page.text().await?;
        ensure!(
            status == StatusCode::OK && text.contains("connected"),
            "the callback answered HTTP {status}: {text}"
        );
        Ok(())
    }

    /// A browser's trip through `link` to the provider and back to Keyhole's door, without
    /// knocking: it stops at the callback URL.
    async fn trip(&self, link: &str) -> Result<Trip> {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?;

        let opened = open_link(&browser, &Url::parse(link)?).await?;
        ensure!(
            opened.status() == StatusCode::SEE_OTHER,
            "opening the link answered HTTP {}",
            opened.status()
        );
        let cookie = opened
            .headers()
            .get(SET_COOKIE)
            .context("opening the link set no cookie")?
            .to_str()?
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        ensure!(
            cookie.starts_with("keyhole_oauth_") && cookie.contains('='),
            "unexpected cookie `{cookie}`"
        );

        let callback = format!("{}/oauth/callback", self.keyhole.base_url());
        let mut url = next_hop(&Url::parse(link)?, &opened)?;
        for _ in 0..MAX_HOPS {
            if url[..Position::AfterPath] == callback {
                return Ok(Trip { url, cookie });
            }
            url = self.at_provider(url)?;
            let response = browser.get(url.clone()).send().await?;
            ensure!(
                response.status().is_redirection(),
                "the provider answered HTTP {} at {} instead of redirecting",
                response.status(),
                &url[..Position::AfterPath]
            );
            url = next_hop(&url, &response)?;
        }
        bail!("the browser did not come back to Keyhole within {MAX_HOPS} redirects")
    }

    /// `url` at the provider's loopback address, if it names the provider's public origin.
    fn at_provider(&self, url: Url) -> Result<Url> {
        if url.origin().ascii_serialization() != AUTH_ORIGIN {
            return Ok(url);
        }
        let mapped = format!(
            "{}{}",
            self.provider.base_url(),
            &url[Position::BeforePath..]
        );
        Ok(Url::parse(&mapped)?)
    }

    /// Knocks: sends the browser to the callback of `trip` with `cookie` (a `name=value` pair),
    /// or without any.
    async fn callback(&self, trip: &Trip, cookie: Option<&str>) -> Result<Reply> {
        self.callback_at(&trip.url, cookie).await
    }

    /// Sends a browser to a callback URL at Keyhole.
    async fn callback_at(&self, url: &Url, cookie: Option<&str>) -> Result<Reply> {
        let mut request = self
            .keyhole
            .request(Method::GET, &url[Position::BeforePath..]);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.reply().await
    }

    /// The provider's request counts.
    async fn stats(&self) -> Result<Value> {
        self.provider.stats().await
    }

    /// How many token requests of `grant_type` the provider received.
    async fn token_requests(&self, grant_type: &str) -> Result<u64> {
        let stats = self.stats().await?;
        stats["token_requests"][grant_type]
            .as_u64()
            .with_context(|| format!("no count of {grant_type} in {stats}"))
    }

    /// Fails unless every request to the token and revocation endpoints authenticated the client
    /// the way the plugin declares (HTTP Basic).
    async fn ensure_right_client_auth(&self) -> Result<()> {
        let stats = self.stats().await?;
        ensure!(
            stats["wrong_client_auth"] == 0,
            "the client authenticated the wrong way: {stats}"
        );
        Ok(())
    }
}

/// Where a browser stopped, back from the provider: the callback URL, and the flow cookie Keyhole
/// gave it, as `keyhole_oauth_<id>=<value>`.
struct Trip {
    url: Url,
    cookie: String,
}

impl Trip {
    /// A parameter of the callback's query.
    fn param(&self, name: &str) -> Result<String> {
        self.url
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .with_context(|| format!("the callback has no `{name}`"))
    }
}

/// Where a redirect points, resolved against the URL that answered it.
fn next_hop(from: &Url, response: &reqwest::Response) -> Result<Url> {
    let location = response
        .headers()
        .get(LOCATION)
        .context("a redirect without Location")?
        .to_str()?;
    Ok(from.join(location)?)
}

/// The link of a 403 `authorization_required`.
fn authorize_url(reply: &Reply) -> Result<String> {
    let error = reply.expect_error(403, "authorization_required")?;
    let link = error["authorize_url"]
        .as_str()
        .with_context(|| format!("no authorize_url in {reply}"))?;
    ensure!(
        link.contains("/oauth/authorize/"),
        "not an authorization link: {link}"
    );
    Ok(link.to_owned())
}

/// What the provider's API answered `me`, provided it answered 200: its body.
fn api_answer(reply: &Reply) -> Result<Value> {
    let output = reply.expect(200)?["output"].take();
    ensure!(
        output["status"] == 200,
        "the API refused the call: {output}"
    );
    Ok(output["body"].clone())
}

#[tokio::test]
async fn the_whole_flow_connects_the_user_and_calls_the_api_with_their_token() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;

    let view = flow.plugin_view().await?;
    let oauth = &view["oauth"];
    let redirect_uri = format!("{}/oauth/callback", flow.keyhole.base_url());
    assert_eq!(oauth["redirect_uri"], redirect_uri.as_str(), "{view}");
    assert_eq!(oauth["client"]["client_id"], CLIENT_ID, "{view}");
    assert_eq!(oauth["client"]["status"], "active", "{view}");
    assert!(!view.to_string().contains(&flow.client_secret), "{view}");

    let refused = flow.invoke("alice", "me").await?;
    let link = authorize_url(&refused)?;
    assert!(
        link.starts_with(&format!("{}/oauth/authorize/", flow.keyhole.base_url())),
        "{link}"
    );
    assert!(flow.connections(&flow.key, "alice").await?.is_empty());

    flow.authorize(&link).await?;
    let me = api_answer(&flow.invoke("alice", "me").await?)?;

    // The API answers only to a valid bearer token, so this is alice's, attached by the host.
    assert_eq!(me["sub"], "alice", "{me}");
    assert!(
        me["scope"]
            .as_str()
            .unwrap_or_default()
            .contains("api:read"),
        "{me}"
    );
    let connections = flow.connections(&flow.key, "alice").await?;
    assert_eq!(connections.len(), 1, "{connections:?}");
    assert_eq!(connections[0]["plugin"], PLUGIN);
    assert!(connections[0]["expires_at"].is_string(), "{connections:?}");
    let scopes = connections[0]["scopes"].as_str().unwrap_or_default();
    assert!(scopes.contains("api:read"), "{connections:?}");
    let stats = flow.stats().await?;
    assert_eq!(stats["token_requests"]["authorization_code"], 1, "{stats}");
    assert_eq!(stats["token_requests"]["refresh_token"], 0, "{stats}");
    flow.ensure_right_client_auth().await?;
    Ok(())
}

#[tokio::test]
async fn a_tool_without_authorization_runs_for_a_user_who_never_connected() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;

    let reply = flow.invoke("carol", "public").await?;

    assert_eq!(reply.expect(200)?["output"]["status"], 200, "{reply}");
    assert!(flow.connections(&flow.key, "carol").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_token_is_refreshed_once_it_is_due_and_not_before() -> Result<()> {
    // Due a few seconds after it is issued, once it expires within Keyhole's refresh margin.
    let due_after = 5;
    let flow = Flow::start(REFRESH_MARGIN + due_after).await?;
    flow.connect("alice").await?;

    let fresh = api_answer(&flow.invoke("alice", "me").await?)?;
    let refreshes_while_fresh = flow.token_requests("refresh_token").await?;
    let expires_before = flow.connections(&flow.key, "alice").await?[0]["expires_at"].clone();
    sleep(Duration::from_secs(due_after + 1)).await;
    let due = api_answer(&flow.invoke("alice", "me").await?)?;

    assert_eq!(fresh["sub"], "alice", "{fresh}");
    assert_eq!(refreshes_while_fresh, 0);
    assert_eq!(due["sub"], "alice", "{due}");
    assert_eq!(flow.token_requests("refresh_token").await?, 1);
    let expires_after = flow.connections(&flow.key, "alice").await?[0]["expires_at"].clone();
    assert!(
        expires_after.as_str() > expires_before.as_str(),
        "{expires_before} -> {expires_after}"
    );
    flow.ensure_right_client_auth().await?;
    Ok(())
}

#[tokio::test]
async fn an_api_answering_401_gets_the_request_again_with_a_refreshed_token() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    flow.connect("alice").await?;
    api_answer(&flow.invoke("alice", "me").await?)?;

    // The token is far from due, so only the API's 401 can make Keyhole refresh it.
    flow.provider.revoke_access_tokens().await?;
    let answer = api_answer(&flow.invoke("alice", "me").await?)?;

    assert_eq!(answer["sub"], "alice", "{answer}");
    let stats = flow.stats().await?;
    assert_eq!(stats["api_unauthorized"], 1, "{stats}");
    assert_eq!(stats["token_requests"]["refresh_token"], 1, "{stats}");
    flow.ensure_right_client_auth().await?;
    Ok(())
}

#[tokio::test]
async fn tokens_expired_before_each_call_are_refreshed_with_the_rotated_refresh_token() -> Result<()>
{
    let flow = Flow::start(2).await?;
    flow.connect("alice").await?;

    sleep(Duration::from_millis(2500)).await;
    let first = api_answer(&flow.invoke("alice", "me").await?)?;
    let refreshes_after_first = flow.token_requests("refresh_token").await?;
    // Every token is due at once, so this refreshes again, with the rotated refresh token: the
    // provider would revoke the grant had Keyhole kept the first one.
    let second = api_answer(&flow.invoke("alice", "me").await?)?;

    assert_eq!(first["sub"], "alice", "{first}");
    assert_eq!(refreshes_after_first, 1);
    assert_eq!(second["sub"], "alice", "{second}");
    assert_eq!(flow.token_requests("refresh_token").await?, 2);
    flow.ensure_right_client_auth().await?;
    Ok(())
}

#[tokio::test]
async fn concurrent_calls_with_a_due_token_share_one_refresh() -> Result<()> {
    let due_after = 5;
    let flow = Flow::start(REFRESH_MARGIN + due_after).await?;
    flow.connect("alice").await?;
    sleep(Duration::from_secs(due_after + 1)).await;

    let calls = (0..8).map(|_| flow.invoke("alice", "me"));
    let replies = join_all(calls).await;

    for reply in replies {
        let me = api_answer(&reply?)?;
        assert_eq!(me["sub"], "alice", "{me}");
    }
    // The provider rotates refresh tokens: a second refresh racing the first would have used a
    // spent token, revoking the grant and failing calls.
    assert_eq!(flow.token_requests("refresh_token").await?, 1);
    flow.ensure_right_client_auth().await?;
    Ok(())
}

#[tokio::test]
async fn disconnecting_revokes_the_token_at_the_provider() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    flow.connect("alice").await?;
    let path = format!("/v1/users/alice/connections/{PLUGIN}");

    let deleted = flow
        .keyhole
        .api(&flow.key, Method::DELETE, &path)
        .reply()
        .await?;

    deleted.expect(204)?;
    let stats = flow.stats().await?;
    assert_eq!(stats["revocations"], 1, "{stats}");
    flow.ensure_right_client_auth().await?;
    assert!(flow.connections(&flow.key, "alice").await?.is_empty());
    authorize_url(&flow.invoke("alice", "me").await?)?;
    let again = flow
        .keyhole
        .api(&flow.key, Method::DELETE, &path)
        .reply()
        .await?;
    again.expect_error(404, "not_found")?;
    Ok(())
}

#[tokio::test]
async fn a_grant_revoked_at_the_provider_fails_the_refresh_and_asks_to_authorize_again()
-> Result<()> {
    // Tokens are always due: the call starts with a refresh, which the provider refuses.
    let flow = Flow::start(2).await?;
    flow.connect("alice").await?;

    flow.provider.revoke_all().await?;
    let reply = flow.invoke("alice", "me").await?;

    authorize_url(&reply)?;
    assert!(flow.connections(&flow.key, "alice").await?.is_empty());
    assert_eq!(flow.token_requests("refresh_token").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_token_revoked_at_the_provider_is_refused_by_the_api_and_asks_to_authorize_again()
-> Result<()> {
    // Tokens are never due: the API's 401 is what tells Keyhole, which then fails to refresh.
    let flow = Flow::start(LONG_TTL).await?;
    flow.connect("alice").await?;
    api_answer(&flow.invoke("alice", "me").await?)?;

    flow.provider.revoke_all().await?;
    let reply = flow.invoke("alice", "me").await?;

    let link = authorize_url(&reply)?;
    assert!(flow.connections(&flow.key, "alice").await?.is_empty());
    assert_eq!(flow.token_requests("refresh_token").await?, 1);
    flow.authorize(&link).await?;
    let me = api_answer(&flow.invoke("alice", "me").await?)?;
    assert_eq!(me["sub"], "alice", "{me}");
    Ok(())
}

#[tokio::test]
async fn a_tool_call_without_authorization_gives_the_model_the_link() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    let name = format!("{PLUGIN}__me");

    let refused = flow.keyhole.tool_call(&flow.key, &name, "{}").await?;

    let message = refused.expect(200)?;
    assert_eq!(
        refused.header("x-keyhole-outcome"),
        Some("authorization_required"),
        "{refused}"
    );
    let content = message["content"].as_str().context("no content")?;
    let link = content
        .split_whitespace()
        .find(|word| word.contains("/oauth/authorize/"))
        .with_context(|| format!("no link in `{content}`"))?;
    flow.authorize(link).await?;
    let answered = flow.keyhole.tool_call(&flow.key, &name, "{}").await?;
    let message = answered.expect(200)?;
    assert_eq!(
        answered.header("x-keyhole-outcome"),
        Some("ok"),
        "{answered}"
    );
    let output: Value = serde_json::from_str(message["content"].as_str().unwrap_or_default())?;
    assert_eq!(output["body"]["sub"], "alice", "{answered}");
    Ok(())
}

#[tokio::test]
async fn an_authorization_link_works_once() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    let link = authorize_url(&flow.invoke("alice", "me").await?)?;
    let browser = reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;

    let link = Url::parse(&link)?;
    // Fetched before anyone clicks, as a chat app that previews links does: nothing is used up.
    let previewed = browser.get(link.clone()).send().await?;
    let first = open_link(&browser, &link).await?;
    let second = open_link(&browser, &link).await?;

    assert_eq!(previewed.status(), StatusCode::OK);
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let location = first
        .headers()
        .get(LOCATION)
        .context("no Location")?
        .to_str()?;
    assert!(
        location.starts_with(&format!("{AUTH_ORIGIN}/auth?")),
        "{location}"
    );
    assert_eq!(second.status(), StatusCode::GONE);
    assert!(second.text().await?.contains("<html"));
    Ok(())
}

#[tokio::test]
async fn a_form_posted_from_another_site_starts_no_flow() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    let link = Url::parse(&authorize_url(&flow.invoke("alice", "me").await?)?)?;
    let browser = reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;

    let forged = browser
        .post(link.clone())
        .header(ORIGIN, "https://evil.example")
        .send()
        .await?;
    let cross_site = browser
        .post(link.clone())
        .header("sec-fetch-site", "cross-site")
        .send()
        .await?;
    let from_its_page = browser
        .post(link.clone())
        .header(ORIGIN, flow.keyhole.base_url())
        .send()
        .await?;

    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    // The refusals used nothing up: the button on Keyhole's own page still works.
    assert_eq!(from_its_page.status(), StatusCode::SEE_OTHER);
    Ok(())
}

#[tokio::test]
async fn a_replayed_callback_is_refused() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    let link = authorize_url(&flow.invoke("alice", "me").await?)?;
    let trip = flow.trip(&link).await?;

    let first = flow.callback(&trip, Some(&trip.cookie)).await?;
    let replayed = flow.callback(&trip, Some(&trip.cookie)).await?;

    assert_eq!(first.status, StatusCode::OK, "{first}");
    assert_eq!(replayed.status, StatusCode::BAD_REQUEST, "{replayed}");
    assert!(!replayed.text.contains(&trip.param("code")?), "{replayed}");
    assert_eq!(flow.token_requests("authorization_code").await?, 1);
    assert_eq!(flow.connections(&flow.key, "alice").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_link_or_a_flow_past_its_lifetime_is_refused() -> Result<()> {
    let ttl = 2;
    let flow = Flow::start_with(LONG_TTL, &["--oauth-flow-ttl-secs", &ttl.to_string()]).await?;
    let link = authorize_url(&flow.invoke("alice", "me").await?)?;
    let unopened = authorize_url(&flow.invoke("alice", "me").await?)?;
    // Links and flows expire on whole seconds: opened within a second, the link is still valid.
    let trip = flow.trip(&link).await?;

    sleep(Duration::from_secs(ttl + 1)).await;
    // A browser drops the cookie once its Max-Age passes; this one still sends it, so that the
    // flow's own expiry is what refuses it.
    let late = flow.callback(&trip, Some(&trip.cookie)).await?;
    let opened_late = flow
        .keyhole
        .request(Method::GET, &Url::parse(&unopened)?[Position::BeforePath..])
        .reply()
        .await?;

    assert_eq!(late.status, StatusCode::BAD_REQUEST, "{late}");
    assert!(late.text.contains("expired"), "{late}");
    assert_eq!(opened_late.status, StatusCode::GONE, "{opened_late}");
    assert_eq!(flow.token_requests("authorization_code").await?, 0);
    assert!(flow.connections(&flow.key, "alice").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_callback_from_another_browser_is_refused() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    let without_cookie = flow
        .trip(&authorize_url(&flow.invoke("alice", "me").await?)?)
        .await?;
    let with_wrong_cookie = flow
        .trip(&authorize_url(&flow.invoke("alice", "me").await?)?)
        .await?;

    let no_cookie = flow.callback(&without_cookie, None).await?;
    // The right cookie's name, with another value: a cookie from another browser's flow.
    let (name, _) = with_wrong_cookie
        .cookie
        .split_once('=')
        .context("a name=value cookie")?;
    let forged = format!("{name}=0123456789abcdef");
    let wrong_cookie = flow.callback(&with_wrong_cookie, Some(&forged)).await?;

    assert_eq!(no_cookie.status, StatusCode::BAD_REQUEST, "{no_cookie}");
    assert!(no_cookie.text.contains("another browser"), "{no_cookie}");
    assert_eq!(
        wrong_cookie.status,
        StatusCode::BAD_REQUEST,
        "{wrong_cookie}"
    );
    assert_eq!(flow.token_requests("authorization_code").await?, 0);
    assert!(flow.connections(&flow.key, "alice").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn one_browser_can_have_two_authorizations_under_way() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    let first = flow
        .trip(&authorize_url(&flow.invoke("alice", "me").await?)?)
        .await?;
    let second = flow
        .trip(&authorize_url(&flow.invoke("bob", "me").await?)?)
        .await?;
    // The browser holds both flows' cookies and sends both back with each callback.
    let both = format!("{}; {}", first.cookie, second.cookie);

    let finished_first = flow.callback(&first, Some(&both)).await?;
    let finished_second = flow.callback(&second, Some(&both)).await?;

    assert_eq!(finished_first.status, StatusCode::OK, "{finished_first}");
    assert_eq!(finished_second.status, StatusCode::OK, "{finished_second}");
    api_answer(&flow.invoke("alice", "me").await?)?;
    api_answer(&flow.invoke("bob", "me").await?)?;
    // Each finished flow tells the browser to drop its cookie, and only that one.
    let (first_name, _) = first
        .cookie
        .split_once('=')
        .context("a name=value cookie")?;
    let cleared = finished_first
        .headers
        .get(SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(
        cleared.starts_with(&format!("{first_name}=;")) && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    Ok(())
}

#[tokio::test]
async fn a_provider_error_at_the_callback_connects_nobody() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    let link = authorize_url(&flow.invoke("alice", "me").await?)?;
    let trip = flow.trip(&link).await?;
    let mut denied = trip.url.clone();
    denied
        .query_pairs_mut()
        .clear()
        .append_pair("error", "access_denied")
        .append_pair("state", &trip.param("state")?);

    let refused = flow.callback_at(&denied, Some(&trip.cookie)).await?;
    // The flow ended with the error: its real code cannot finish it afterwards.
    let too_late = flow.callback(&trip, Some(&trip.cookie)).await?;

    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.text.contains("access_denied"), "{refused}");
    assert_eq!(too_late.status, StatusCode::BAD_REQUEST, "{too_late}");
    assert_eq!(flow.token_requests("authorization_code").await?, 0);
    assert!(flow.connections(&flow.key, "alice").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_new_token_url_suspends_the_client_and_drops_the_connections() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    flow.connect("alice").await?;

    let moved = guests().await?.oidc_probe_moved()?;
    let replaced = flow.keyhole.upload(moved).await?.expect(200)?;

    assert_eq!(replaced["version"], "0.2.0", "{replaced}");
    let view = flow.plugin_view().await?;
    assert_eq!(
        view["oauth"]["token_url"], "https://auth2.oidc.test/token",
        "{view}"
    );
    assert_eq!(view["oauth"]["client"]["status"], "suspended", "{view}");
    assert!(flow.connections(&flow.key, "alice").await?.is_empty());
    flow.invoke("alice", "me")
        .await?
        .expect_error(409, "oauth_not_configured")?;

    // The admin approves the new token URL by setting the client again; alice authorizes anew.
    let approved = flow.set_client().await?.expect(200)?;
    assert_eq!(
        approved["oauth"]["client"]["status"], "active",
        "{approved}"
    );
    flow.connect("alice").await?;
    let me = api_answer(&flow.invoke("alice", "me").await?)?;
    assert_eq!(me["sub"], "alice", "{me}");
    assert_eq!(flow.token_requests("authorization_code").await?, 2);
    Ok(())
}

#[tokio::test]
async fn an_unchanged_plugin_uploaded_again_keeps_its_client_and_connections() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    flow.connect("alice").await?;

    let same = guests().await?.oidc_probe()?;
    flow.keyhole.upload(same).await?.expect(200)?;

    let view = flow.plugin_view().await?;
    assert_eq!(view["oauth"]["client"]["status"], "active", "{view}");
    assert_eq!(flow.connections(&flow.key, "alice").await?.len(), 1);
    let me = api_answer(&flow.invoke("alice", "me").await?)?;
    assert_eq!(me["sub"], "alice", "{me}");
    assert_eq!(flow.token_requests("authorization_code").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_tenant_sees_none_of_another_tenants_connections() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    flow.connect("alice").await?;
    let other = flow.keyhole.create_api_key("globex").await?;

    let listed = flow.connections(&other, "alice").await?;
    let called = flow.invoke_with(&other, "alice", "me").await?;
    let path = format!("/v1/users/alice/connections/{PLUGIN}");
    let deleted = flow
        .keyhole
        .api(&other, Method::DELETE, &path)
        .reply()
        .await?;

    assert!(listed.is_empty(), "{listed:?}");
    authorize_url(&called)?;
    deleted.expect_error(404, "not_found")?;
    let me = api_answer(&flow.invoke("alice", "me").await?)?;
    assert_eq!(me["sub"], "alice", "{me}");
    Ok(())
}

/// Rounds of the token crash loop; each kills the server while accounts are being connected.
const TOKEN_CRASH_ROUNDS: u64 = 3;

/// Kills the server with SIGKILL while users connect their accounts (each callback seals and
/// stores the user's tokens) and disconnect them, a few rounds over: after each restart every
/// connection the server acknowledged is there and works, and every acknowledged disconnection
/// stays done.
#[tokio::test]
async fn a_crash_in_the_middle_of_token_writes_loses_no_acknowledged_connection() -> Result<()> {
    let mut flow = Flow::start(LONG_TTL).await?;
    let mut connected: Vec<String> = Vec::new();
    let mut disconnected: Vec<String> = Vec::new();

    for round in 0..TOKEN_CRASH_ROUNDS {
        let writes = async {
            let (mut users, mut gone, mut in_doubt) = (Vec::new(), Vec::new(), None);
            for n in 0.. {
                // Every third step drops one of the connections acknowledged in an earlier round.
                if n % 3 == 2
                    && let Some(user) = connected.get(gone.len())
                {
                    let path = format!("/v1/users/{user}/connections/{PLUGIN}");
                    let request = flow.keyhole.api(&flow.key, Method::DELETE, &path);
                    match request.reply().await {
                        Ok(reply) if reply.status == 204 => gone.push(user.clone()),
                        // Cut off by the kill: it may or may not have been dropped.
                        _ => {
                            in_doubt = Some(user.clone());
                            break;
                        }
                    }
                    continue;
                }
                // A flow cut off by the kill is not acknowledged; stop at the first one.
                let user = format!("user-{round}-{n}");
                if flow.connect(&user).await.is_err() {
                    break;
                }
                users.push(user);
            }
            (users, gone, in_doubt)
        };
        let crash = async {
            sleep(Duration::from_millis(400 + 400 * round)).await;
            flow.keyhole.kill_by_pid()
        };
        let ((users, gone, in_doubt), killed) = tokio::join!(writes, crash);
        killed?;
        connected.retain(|user| !gone.contains(user) && in_doubt.as_ref() != Some(user));
        connected.extend(users);
        disconnected.extend(gone);

        flow.keyhole.wait_exit().await?;
        flow.keyhole.restart().await?;

        // The provider signs every browser in as the same account; what tells the users apart
        // is that each call runs with a token stored for that user.
        for user in &connected {
            api_answer(&flow.invoke(user, "me").await?)
                .with_context(|| format!("round {round}: {user} was connected, then lost"))?;
            let listed = flow.connections(&flow.key, user).await?;
            assert_eq!(listed.len(), 1, "round {round}: {user}: {listed:?}");
        }
        for user in &disconnected {
            let listed = flow.connections(&flow.key, user).await?;
            assert!(
                listed.is_empty(),
                "round {round}: {user} was disconnected, then came back: {listed:?}"
            );
        }
    }
    assert!(
        connected.len() as u64 >= TOKEN_CRASH_ROUNDS && !disconnected.is_empty(),
        "too few writes were acknowledged before the kills to prove anything: {} connected, {} disconnected",
        connected.len(),
        disconnected.len()
    );
    Ok(())
}

#[tokio::test]
async fn the_data_directory_holds_no_client_secret_or_token_in_clear() -> Result<()> {
    let mut flow = Flow::start(2).await?;
    flow.connect("alice").await?;
    // A refresh rewrites the tokens; stopping the server flushes the store to its files.
    api_answer(&flow.invoke("alice", "me").await?)?;
    let status = flow.keyhole.stop().await?;
    ensure!(status.success(), "keyhole exited with {status}");

    let mut clear_text = Vec::new();
    let mut client_id_seen = false;
    for file in files_under(flow.keyhole.data_dir())? {
        let bytes = std::fs::read(&file)?;
        client_id_seen |= contains(&bytes, CLIENT_ID.as_bytes());
        // The field names of a connection record: seeing one would mean it is not sealed.
        let record_fields = ["access_token", "refresh_token"];
        for needle in [flow.client_secret.as_str(), "Bearer"]
            .into_iter()
            .chain(record_fields)
        {
            if contains(&bytes, needle.as_bytes()) {
                clear_text.push(format!("{} holds `{needle}`", file.display()));
            }
        }
    }

    // The client id is stored in clear: seeing it proves the scan reads the records.
    assert!(
        client_id_seen,
        "no file of the data directory holds the client id"
    );
    assert!(clear_text.is_empty(), "{clear_text:#?}");
    Ok(())
}

#[tokio::test]
async fn the_server_log_holds_no_secret_code_state_or_link() -> Result<()> {
    let flow = Flow::start(2).await?;
    let link = authorize_url(&flow.invoke("alice", "me").await?)?;
    let trip = flow.trip(&link).await?;
    let connected = flow.callback(&trip, Some(&trip.cookie)).await?;
    ensure!(connected.status == StatusCode::OK, "{connected}");
    api_answer(&flow.invoke("alice", "me").await?)?;
    flow.keyhole.logs().wait_for("token refreshed").await?;

    let logs = flow.keyhole.logs().text();

    let link_token = link.rsplit('/').next().unwrap_or_default();
    let (_, cookie_value) = trip.cookie.split_once('=').unwrap_or_default();
    let secrets = [
        ("client secret", flow.client_secret.as_str()),
        ("code", &trip.param("code")?),
        ("state", &trip.param("state")?),
        ("link", link_token),
        ("cookie", cookie_value),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(secret), "the log holds the {what}:\n{logs}");
    }
    for query in ["?code=", "&code=", "?state=", "&state="] {
        assert!(!logs.contains(query), "the log holds `{query}`:\n{logs}");
    }
    Ok(())
}

#[tokio::test]
async fn the_cli_prints_the_link_and_finishes_the_call_once_the_user_connects() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    let mut command = Command::new(KEYHOLE);
    remove_keyhole_env(&mut command);
    command
        .args(["invoke", PLUGIN, "me", "--user", "bob"])
        .env("KEYHOLE_URL", flow.keyhole.base_url())
        .env("KEYHOLE_API_KEY", &flow.key.secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr is piped")?).lines();

    let find_link = async {
        let mut printed = String::new();
        while let Some(line) = stderr.next_line().await? {
            printed.push_str(&line);
            printed.push('\n');
            if let Some(link) = line
                .split_whitespace()
                .find(|word| word.contains("/oauth/authorize/"))
            {
                return Ok(link.to_owned());
            }
        }
        bail!("the CLI closed stderr without printing a link; it printed:\n{printed}")
    };
    let link: String = timeout(CLI_TIMEOUT, find_link)
        .await
        .context("the CLI printed no link in time")??;
    // Keep draining stderr, so the CLI never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    flow.authorize(&link).await?;
    let output = timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .context("the CLI did not finish after the user connected")??;

    ensure!(
        output.status.success(),
        "the CLI exited with {}",
        output.status
    );
    let printed: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "stdout is not JSON: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    assert_eq!(printed["output"]["status"], 200, "{printed}");
    assert!(printed["output"]["body"]["sub"].is_string(), "{printed}");
    assert_eq!(flow.connections(&flow.key, "bob").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn behind_an_https_public_url_links_redirects_and_the_cookie_follow_it() -> Result<()> {
    let public = "https://keyhole.example.com";
    let flow = Flow::start_with(LONG_TTL, &["--public-url", public]).await?;

    let view = flow.plugin_view().await?;
    assert_eq!(
        view["oauth"]["redirect_uri"],
        format!("{public}/oauth/callback")
    );
    let link = authorize_url(&flow.invoke("alice", "me").await?)?;
    let path = link
        .strip_prefix(public)
        .with_context(|| format!("the link {link} is not under the public URL"))?;

    // A proxy would forward the public URL's path to the server as it is.
    let browser = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()?;
    let opened = browser
        .post(format!("{}{path}", flow.keyhole.base_url()))
        .reply()
        .await?;
    assert_eq!(opened.status, StatusCode::SEE_OTHER, "{opened}");
    let cookie = opened.header("set-cookie").context("no cookie")?;
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/oauth"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    let location = Url::parse(opened.header("location").context("no redirect")?)?;
    let redirect_uri = location
        .query_pairs()
        .find(|(name, _)| name == "redirect_uri")
        .map(|(_, value)| value.into_owned());
    assert_eq!(redirect_uri, Some(format!("{public}/oauth/callback")));
    Ok(())
}

/// Runs `keyhole ARGS` against the flow's server with `env`, and answers its JSON output.
async fn cli(flow: &Flow, args: &[&str], env: &[(&str, &str)]) -> Result<Value> {
    let mut command = Command::new(KEYHOLE);
    remove_keyhole_env(&mut command);
    command
        .args(args)
        .env("KEYHOLE_URL", flow.keyhole.base_url())
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let output = timeout(CLI_TIMEOUT, command.output()).await??;
    ensure!(
        output.status.success(),
        "`keyhole {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.stdout.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test]
async fn the_cli_sets_the_client_lists_connections_and_disconnects() -> Result<()> {
    let flow = Flow::start(LONG_TTL).await?;
    let admin = [("KEYHOLE_ADMIN_TOKEN", flow.keyhole.admin_token())];
    let backend = [("KEYHOLE_API_KEY", flow.key.secret.as_str())];

    // Setting the same client again, from the command line, keeps it active.
    let secret = [
        admin[0],
        ("KEYHOLE_CLIENT_SECRET", flow.client_secret.as_str()),
    ];
    let args = ["plugin", "oauth-client", PLUGIN, "--client-id", CLIENT_ID];
    let view = cli(&flow, &args, &secret).await?;
    assert_eq!(view["oauth"]["client"]["status"], "active", "{view}");
    assert!(
        !view.to_string().contains(&flow.client_secret),
        "the secret was printed"
    );

    flow.connect("carol").await?;
    let listed = cli(&flow, &["connections", "--user", "carol"], &backend).await?;
    assert_eq!(listed["connections"][0]["plugin"], PLUGIN, "{listed}");

    cli(&flow, &["disconnect", PLUGIN, "--user", "carol"], &backend).await?;
    let listed = cli(&flow, &["connections", "--user", "carol"], &backend).await?;
    assert_eq!(listed["connections"], json!([]), "{listed}");
    assert_eq!(flow.stats().await?["revocations"], 1);
    Ok(())
}
