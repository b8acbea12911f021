//! The OAuth example plugins (`examples/google-calendar`, `examples/slack`, `examples/github`),
//! run unchanged through the whole authorization flow against the upstream playing their
//! providers.
//!
//! A test plays every part but Keyhole's: the admin installs the plugin and sets its OAuth client;
//! the chat backend calls the tool for `alice` and is handed a link; the browser follows it to the
//! provider's authorization URL and, since no consent page is played, comes back to the callback
//! with a made-up code, as the provider would send it; the chat backend calls again, and the
//! plugin's request reaches the provider's API with alice's token.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::Method;
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

use crate::harness::{
    ApiKey, GITHUB_ACCESS_TOKEN, GITHUB_REPOSITORY, GOOGLE_ACCESS_TOKEN, GOOGLE_REFRESH_TOKEN,
    Guests, Keyhole, Reply, ReplyExt, SLACK_UNKNOWN_CHANNEL, SLACK_USER_TOKEN, guests,
    install_probe,
};

/// An example plugin, and how its provider must be asked.
struct Example {
    /// The plugin's id.
    plugin: &'static str,
    /// The tool that requires authorization.
    tool: &'static str,
    /// The built component.
    wasm: fn(&Guests) -> Result<Vec<u8>>,
    /// Where the browser is sent to authorize, without the query.
    authorization_url: &'static str,
    /// The `scope` parameter of the authorization URL; `None` when there must be none.
    scope: Option<&'static str>,
    /// The extra parameters of the authorization URL the plugin declares.
    params: &'static [(&'static str, &'static str)],
    /// The token endpoint's path on the upstream.
    token_path: &'static str,
    /// Whether the client authenticates in the token request's body rather than with HTTP Basic.
    secret_in_body: bool,
}

const GOOGLE_CALENDAR: Example = Example {
    plugin: "google-calendar",
    tool: "upcoming_events",
    wasm: Guests::google_calendar,
    authorization_url: "https://accounts.google.com/o/oauth2/v2/auth",
    scope: Some("https://www.googleapis.com/auth/calendar.readonly"),
    params: &[("access_type", "offline"), ("prompt", "consent")],
    token_path: "/token",
    secret_in_body: false,
};

const SLACK: Example = Example {
    plugin: "slack",
    tool: "post_message",
    wasm: Guests::slack,
    authorization_url: "https://slack.com/oauth/v2/authorize",
    // Slack's user scopes travel in `user_scope`; a `scope` would ask for a bot token.
    scope: None,
    params: &[("user_scope", "chat:write")],
    token_path: "/api/oauth.v2.access",
    secret_in_body: true,
};

const GITHUB: Example = Example {
    plugin: "github",
    tool: "list_issues",
    wasm: Guests::github,
    authorization_url: "https://github.com/login/oauth/authorize",
    scope: Some("repo"),
    params: &[],
    token_path: "/login/oauth/access_token",
    secret_in_body: true,
};

/// The query parameters Keyhole itself puts in every authorization URL.
const FLOW_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
];

/// A server with an example plugin installed and its OAuth client set, and everything the server
/// answered on the way, to look for secrets in.
struct Session {
    example: &'static Example,
    keyhole: Keyhole,
    key: ApiKey,
    client_id: String,
    client_secret: String,
    /// The `oauth.redirect_uri` of the plugin's view.
    redirect_uri: String,
    /// Every answer of the server: status, headers and body.
    answers: Vec<String>,
    /// Set once alice has authorized.
    authorized: Option<Authorized>,
}

/// What the browser's trip left behind.
struct Authorized {
    /// The query of the provider's authorization URL the browser was sent to.
    query: HashMap<String, String>,
    /// The code the test made up, as the provider would have.
    code: String,
}

impl Session {
    /// Starts a server, installs the example as the admin and gives it an OAuth client.
    ///
    /// The probe is installed too: its `log` tool marks the end of the log for leak checks.
    async fn install(example: &'static Example) -> Result<Self> {
        let keyhole = Keyhole::start().await?;
        install_probe(&keyhole).await?;
        let key = keyhole.create_api_key("acme").await?;
        let mut session = Self {
            example,
            keyhole,
            key,
            client_id: format!("{}-client-{}", example.plugin, random_hex()),
            client_secret: format!("secret-{}", random_hex()),
            redirect_uri: String::new(),
            answers: Vec::new(),
            authorized: None,
        };

        let wasm = (example.wasm)(guests().await?)?;
        let uploaded = session.keyhole.upload(wasm).await?;
        session.record(&uploaded);
        uploaded.expect(201)?;
        let client = json!({
            "client_id": session.client_id,
            "client_secret": session.client_secret,
        });
        let path = format!("/admin/plugins/{}/oauth-client", example.plugin);
        let set = session
            .keyhole
            .admin(Method::PUT, &path)
            .json(&client)
            .reply()
            .await?;
        session.record(&set);
        set.expect(200)?;

        let shown = session
            .keyhole
            .admin_get(&format!("/admin/plugins/{}", example.plugin))
            .await?;
        session.record(&shown);
        let oauth = shown.expect(200)?["oauth"].take();
        assert_eq!(
            oauth["authorization_url"], example.authorization_url,
            "{oauth}"
        );
        assert_eq!(oauth["client"]["client_id"], session.client_id, "{oauth}");
        assert_eq!(oauth["client"]["status"], "active", "{oauth}");
        session.redirect_uri = oauth["redirect_uri"]
            .as_str()
            .context("the view has an oauth.redirect_uri")?
            .to_owned();
        assert!(session.redirect_uri.ends_with("/oauth/callback"), "{oauth}");
        Ok(session)
    }

    /// Calls the example's tool for alice.
    async fn invoke(&mut self, arguments: Value) -> Result<Reply> {
        let (plugin, tool) = (self.example.plugin, self.example.tool);
        let reply = self
            .keyhole
            .invoke(&self.key, plugin, tool, arguments)
            .await?;
        self.record(&reply);
        Ok(reply)
    }

    /// Runs alice's authorization: the call that hands out a link, the browser's trip to the
    /// provider, and its return to the callback with a made-up code.
    async fn authorize(&mut self, arguments: Value) -> Result<()> {
        let refused = self.invoke(arguments).await?;
        let error = refused.expect_error(403, "authorization_required")?;
        let link = error["authorize_url"]
            .as_str()
            .context("authorization_required has an authorize_url")?;
        let requests = self.keyhole.upstream().requests();
        assert!(
            requests.is_empty(),
            "requests left before alice authorized: {requests:?}"
        );

        // The browser keeps cookies and shows redirects instead of following them. It talks to
        // the server by its address whatever public URL the links carry.
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .build()?;
        let link = Url::parse(link).context("the authorize_url is a URL")?;
        let opened = format!("{}{}", self.keyhole.base_url(), link.path());
        let page = browser.get(&opened).reply().await?;
        self.record(&page);
        assert_eq!(page.status.as_u16(), 200, "{page}");
        assert!(page.text.contains(r#"<form method="post">"#), "{page}");
        let started = browser.post(&opened).reply().await?;
        self.record(&started);
        assert_eq!(started.status.as_u16(), 303, "{started}");
        let cookie = started
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find(|cookie| cookie.starts_with("keyhole_oauth_"))
            .map(str::to_lowercase)
            .context("the link sets the keyhole_oauth cookie")?;
        for attribute in ["httponly", "samesite=lax", "path=/oauth"] {
            assert!(cookie.contains(attribute), "no {attribute} in {cookie}");
        }
        let query = self.check_authorization_url(&started)?;

        let code = format!("e2e-code-{}", random_hex());
        let callback = Url::parse(&self.redirect_uri)?;
        let state = query["state"].as_str();
        let connected = browser
            .get(format!("{}{}", self.keyhole.base_url(), callback.path()))
            .query(&[("code", code.as_str()), ("state", state)])
            .reply()
            .await?;
        self.record(&connected);
        assert_eq!(connected.status.as_u16(), 200, "{connected}");
        let page = connected.header("content-type").unwrap_or_default();
        assert!(page.starts_with("text/html"), "{connected}");

        self.authorized = Some(Authorized { query, code });
        Ok(())
    }

    /// Checks where the browser was sent, and answers the query it carries.
    fn check_authorization_url(&self, started: &Reply) -> Result<HashMap<String, String>> {
        let location = started
            .header("location")
            .context("the 302 has a location")?;
        let (target, _) = location
            .split_once('?')
            .context("the location has a query")?;
        assert_eq!(target, self.example.authorization_url);
        let url = Url::parse(location)?;
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let param = |name: &str| query.get(name).map(String::as_str);

        assert_eq!(param("response_type"), Some("code"), "{location}");
        assert_eq!(param("client_id"), Some(self.client_id.as_str()));
        assert_eq!(param("redirect_uri"), Some(self.redirect_uri.as_str()));
        assert!(
            param("state").is_some_and(|state| state.len() >= 16),
            "{location}"
        );
        assert_eq!(param("code_challenge_method"), Some("S256"), "{location}");
        // BASE64URL of a SHA-256, without padding (RFC 7636 §4.2).
        assert!(
            param("code_challenge").is_some_and(|c| c.len() == 43),
            "{location}"
        );
        assert_eq!(param("scope"), self.example.scope, "{location}");
        for (name, value) in self.example.params {
            assert_eq!(param(name), Some(*value), "{location}");
        }
        let declared = |name: &String| {
            FLOW_PARAMS.contains(&name.as_str())
                || self.example.params.iter().any(|(param, _)| param == name)
        };
        assert!(
            query.keys().all(declared),
            "unexpected parameters: {location}"
        );
        Ok(query)
    }

    /// Checks the one code exchange: the code, the PKCE verifier that matches the challenge, and
    /// the client authenticated exactly once, the way the provider wants.
    fn check_token_request(&self) {
        let authorized = self.authorized.as_ref().expect("alice authorized first");
        let requests = self.keyhole.upstream().requests_to(self.example.token_path);
        assert_eq!(requests.len(), 1, "one code exchange: {requests:?}");
        let exchange = &requests[0];

        assert_eq!(exchange.method, "POST");
        assert_eq!(
            exchange.form("grant_type").as_deref(),
            Some("authorization_code")
        );
        assert_eq!(exchange.form("code"), Some(authorized.code.clone()));
        assert_eq!(
            exchange.form("redirect_uri"),
            Some(self.redirect_uri.clone())
        );
        let verifier = exchange.form("code_verifier").expect("a PKCE verifier");
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert_eq!(Some(&challenge), authorized.query.get("code_challenge"));

        let basic = exchange.header("authorization");
        if self.example.secret_in_body {
            assert_eq!(basic, None, "the client authenticated twice");
            assert_eq!(exchange.form("client_id"), Some(self.client_id.clone()));
            assert_eq!(
                exchange.form("client_secret"),
                Some(self.client_secret.clone())
            );
        } else {
            let credentials = format!("{}:{}", self.client_id, self.client_secret);
            let expected = format!("Basic {}", STANDARD.encode(credentials));
            assert_eq!(basic, Some(expected.as_str()));
            assert_eq!(
                exchange.form("client_secret"),
                None,
                "the client authenticated twice"
            );
        }
    }

    /// Checks that the client secret and the tokens appear in no answer of the server, and that
    /// neither they nor the code, the PKCE verifier or the state appear in its log.
    async fn check_nothing_leaked(&self, tokens: &[&str]) -> Result<()> {
        let mut secrets = vec![("the client secret", self.client_secret.clone())];
        secrets.extend(tokens.iter().map(|token| ("a token", (*token).to_owned())));
        for answer in &self.answers {
            for (what, secret) in &secrets {
                assert!(!answer.contains(secret), "{what} is in an answer: {answer}");
            }
        }

        let authorized = self.authorized.as_ref().expect("alice authorized first");
        secrets.push(("the code", authorized.code.clone()));
        secrets.push(("the state", authorized.query["state"].clone()));
        let exchange = self
            .keyhole
            .upstream()
            .request_to(self.example.token_path)?;
        if let Some(verifier) = exchange.form("code_verifier") {
            secrets.push(("the PKCE verifier", verifier));
        }
        // The log is read asynchronously: a marker logged after the flow proves it is complete.
        let marker = format!("marker-{}", random_hex());
        self.keyhole
            .invoke(&self.key, "probe", "log", json!({ "message": marker }))
            .await?
            .expect(200)?;
        self.keyhole.logs().wait_for(&marker).await?;
        let logs = self.keyhole.logs().text();
        for (what, secret) in &secrets {
            let lines: Vec<&str> = logs.lines().filter(|line| line.contains(secret)).collect();
            assert!(lines.is_empty(), "{what} was logged: {lines:#?}");
        }
        Ok(())
    }

    fn record(&mut self, reply: &Reply) {
        self.answers
            .push(format!("{reply}\nheaders: {:?}", reply.headers));
    }
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

#[tokio::test]
async fn google_calendar_lists_upcoming_events_once_the_user_authorized() -> Result<()> {
    let mut session = Session::install(&GOOGLE_CALENDAR).await?;
    session.authorize(json!({})).await?;

    let reply = session.invoke(json!({ "max_results": 5 })).await?;
    let output = reply.expect(200)?["output"].take();

    assert_eq!(
        output,
        json!([
            {
                "summary": "Team sync",
                "start": "2026-12-04T10:00:00+01:00",
                "end": "2026-12-04T10:30:00+01:00",
                "location": "Room 4.12",
                "html_link": "https://www.google.com/calendar/event?eid=N2NiaDhycGMxMGxy"
            },
            {
                "summary": "Christmas Eve",
                "start": "2026-12-24",
                "end": "2026-12-25",
                "location": null,
                "html_link": "https://www.google.com/calendar/event?eid=MWc0ajFoNjduZHE3"
            }
        ])
    );
    let upstream = session.keyhole.upstream();
    let listed = upstream.request_to("/calendar/v3/calendars/primary/events")?;
    let bearer = format!("Bearer {GOOGLE_ACCESS_TOKEN}");
    assert_eq!(listed.header("authorization"), Some(bearer.as_str()));
    assert_eq!(listed.query("maxResults").as_deref(), Some("5"));
    assert_eq!(listed.query("singleEvents").as_deref(), Some("true"));
    assert_eq!(listed.query("orderBy").as_deref(), Some("startTime"));
    let time_min = listed.query("timeMin").context("timeMin is set")?;
    let time_min = humantime::parse_rfc3339(&time_min).context("timeMin is RFC 3339 UTC")?;
    let skew = SystemTime::now()
        .duration_since(time_min)
        .unwrap_or_else(|early| early.duration());
    assert!(
        skew < Duration::from_secs(300),
        "timeMin is {skew:?} from now"
    );

    // A calendar id holds `@`, and `#` for Google's public calendars: both are encoded.
    let holidays = "en.german#holiday@group.v.calendar.google.com";
    let reply = session.invoke(json!({ "calendar_id": holidays })).await?;
    reply.expect(200)?;
    let encoded = "/calendar/v3/calendars/en.german%23holiday%40group.v.calendar.google.com/events";
    let listed = session.keyhole.upstream().request_to(encoded)?;
    assert_eq!(listed.query("maxResults").as_deref(), Some("10"));

    session.check_token_request();
    session
        .check_nothing_leaked(&[GOOGLE_ACCESS_TOKEN, GOOGLE_REFRESH_TOKEN])
        .await
}

#[tokio::test]
async fn disconnecting_google_calendar_revokes_the_token_at_google() -> Result<()> {
    let mut session = Session::install(&GOOGLE_CALENDAR).await?;
    session.authorize(json!({})).await?;

    let listed = session
        .keyhole
        .api_get(&session.key, "/v1/users/alice/connections")
        .await?;
    session.record(&listed);
    let connections = listed.expect(200)?["connections"].take();
    assert_eq!(connections[0]["plugin"], "google-calendar", "{connections}");
    let path = "/v1/users/alice/connections/google-calendar";
    let deleted = session
        .keyhole
        .api(&session.key, Method::DELETE, path)
        .reply()
        .await?;
    session.record(&deleted);
    deleted.expect(204)?;

    let revocations = session.keyhole.upstream().requests_to("/revoke");
    assert!(!revocations.is_empty(), "nothing was revoked");
    for revocation in &revocations {
        assert_eq!(revocation.method, "POST");
        let token = revocation.form("token").unwrap_or_default();
        assert!(
            [GOOGLE_ACCESS_TOKEN, GOOGLE_REFRESH_TOKEN].contains(&token.as_str()),
            "revoked {revocation:?}"
        );
    }
    let listed = session
        .keyhole
        .api_get(&session.key, "/v1/users/alice/connections")
        .await?;
    session.record(&listed);
    assert_eq!(listed.expect(200)?["connections"], json!([]));
    let again = session.invoke(json!({})).await?;
    again.expect_error(403, "authorization_required")?;

    session
        .check_nothing_leaked(&[GOOGLE_ACCESS_TOKEN, GOOGLE_REFRESH_TOKEN])
        .await
}

#[tokio::test]
async fn slack_posts_as_the_user_once_the_user_authorized() -> Result<()> {
    let mut session = Session::install(&SLACK).await?;
    let message = json!({ "channel": "#general", "text": "Deploy finished" });
    session.authorize(message.clone()).await?;

    let reply = session.invoke(message).await?;
    let output = reply.expect(200)?["output"].take();

    assert_eq!(
        output,
        json!({ "channel": "C024BE91L", "ts": "1765051200.000200" })
    );
    let posted = session
        .keyhole
        .upstream()
        .request_to("/api/chat.postMessage")?;
    assert_eq!(posted.method, "POST");
    let bearer = format!("Bearer {SLACK_USER_TOKEN}");
    assert_eq!(posted.header("authorization"), Some(bearer.as_str()));
    let body: Value = serde_json::from_str(&posted.body).context("the post is JSON")?;
    assert_eq!(
        body,
        json!({ "channel": "#general", "text": "Deploy finished" })
    );

    session.check_token_request();
    session.check_nothing_leaked(&[SLACK_USER_TOKEN]).await
}

#[tokio::test]
async fn slack_refusing_an_unknown_channel_is_an_argument_error() -> Result<()> {
    let mut session = Session::install(&SLACK).await?;
    let message = json!({ "channel": SLACK_UNKNOWN_CHANNEL, "text": "Anyone there?" });
    session.authorize(message.clone()).await?;

    let reply = session.invoke(message).await?;
    let error = reply.expect_error(422, "tool_error")?;

    assert_eq!(error["kind"], "invalid_arguments", "{reply}");
    let text = error["message"].as_str().unwrap_or_default();
    assert!(text.contains("channel_not_found"), "{reply}");
    session.check_nothing_leaked(&[SLACK_USER_TOKEN]).await
}

#[tokio::test]
async fn github_lists_a_repositorys_issues_once_the_user_authorized() -> Result<()> {
    let mut session = Session::install(&GITHUB).await?;
    let (owner, repo) = GITHUB_REPOSITORY.split_once('/').context("owner/repo")?;
    let arguments = json!({ "owner": owner, "repo": repo, "state": "all", "per_page": 5 });
    session.authorize(arguments.clone()).await?;

    let reply = session.invoke(arguments).await?;
    let output = reply.expect(200)?["output"].take();

    // The pull request GitHub lists among the issues is left out.
    assert_eq!(
        output,
        json!([{
            "number": 1347,
            "title": "Found a bug",
            "state": "open",
            "user": "octocat",
            "url": "https://github.com/octocat/Hello-World/issues/1347"
        }])
    );
    let listed = session
        .keyhole
        .upstream()
        .request_to(&format!("/repos/{GITHUB_REPOSITORY}/issues"))?;
    let bearer = format!("Bearer {GITHUB_ACCESS_TOKEN}");
    assert_eq!(listed.header("authorization"), Some(bearer.as_str()));
    assert_eq!(listed.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(listed.header("x-github-api-version"), Some("2022-11-28"));
    assert_eq!(listed.header("user-agent"), Some("keyhole-github-plugin"));
    assert_eq!(listed.query("state").as_deref(), Some("all"));
    assert_eq!(listed.query("per_page").as_deref(), Some("5"));

    session.check_token_request();
    session.check_nothing_leaked(&[GITHUB_ACCESS_TOKEN]).await
}
