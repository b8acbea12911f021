//! The OAuth providers of the example plugins, as the upstream plays them: Google, Slack and
//! GitHub, each with its token endpoint and the API its plugin calls, answering in the shapes the
//! providers document, errors included.
//!
//! The providers' consent pages are not played: a test sends the browser back to Keyhole's
//! callback with a code it makes up. A token endpoint exchanges any code, provided the request is
//! a well-formed authorization-code grant that authenticates the client exactly once, the way the
//! provider wants it; it then hands out this module's tokens. Each API answers only to
//! `Authorization: Bearer <its token>`. Tests read what arrived with
//! [`Upstream::requests_to`](super::upstream::Upstream::requests_to).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::upstream::{Canned, SeenRequest};

/// The access token Google's token endpoint hands out.
pub(crate) const GOOGLE_ACCESS_TOKEN: &str = "ya29.e2e-google-access-3f9c1d";

/// The refresh token Google's token endpoint hands out with the access token.
pub(crate) const GOOGLE_REFRESH_TOKEN: &str = "1//e2e-google-refresh-8a1d07";

/// The user token Slack's `oauth.v2.access` hands out under `authed_user`.
pub(crate) const SLACK_USER_TOKEN: &str = "xoxp-e2e-slack-user-52c7e9";

/// The access token GitHub's token endpoint hands out.
pub(crate) const GITHUB_ACCESS_TOKEN: &str = "gho_e2eGithubAccess71b0c4";

/// A channel Slack does not know: posting there answers `channel_not_found`.
pub(crate) const SLACK_UNKNOWN_CHANNEL: &str = "#nowhere";

/// The repository GitHub knows, as `owner/repo`; any other answers 404.
pub(crate) const GITHUB_REPOSITORY: &str = "octocat/Hello-World";

/// The provider's answer to the request, or `None` when no provider serves its path.
pub(super) fn answer(request: &SeenRequest) -> Option<Canned> {
    let path = request.path();
    let answer = match (request.method.as_str(), path) {
        ("POST", "/token") => google_token(request),
        ("POST", "/revoke") => google_revoke(request),
        ("GET", _) if path.starts_with("/calendar/v3/calendars/") && path.ends_with("/events") => {
            google_events(request)
        }
        ("POST", "/api/oauth.v2.access") => slack_token(request),
        ("POST", "/api/chat.postMessage") => slack_post_message(request),
        ("POST", "/login/oauth/access_token") => github_token(request),
        ("GET", _) if path.starts_with("/repos/") && path.ends_with("/issues") => {
            github_issues(request)
        }
        _ => return None,
    };
    Some(answer)
}

/// How the client authenticated at a token endpoint.
#[derive(Debug, PartialEq, Eq)]
enum ClientAuth {
    /// HTTP Basic only.
    Basic,
    /// `client_id` and `client_secret` in the body only.
    Body,
    /// Neither, both, or half of one: a provider refuses it.
    Wrong,
}

fn client_auth(request: &SeenRequest) -> ClientAuth {
    let basic = request
        .header("authorization")
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded).ok())
        .is_some_and(|decoded| decoded.contains(&b':'));
    let id_in_body = request.form("client_id").is_some();
    let secret_in_body = request.form("client_secret").is_some();
    match (basic, id_in_body, secret_in_body) {
        // RFC 6749 §2.3.1 lets a client repeat its id in the body beside Basic, not its secret.
        (true, _, false) => ClientAuth::Basic,
        (false, true, true) => ClientAuth::Body,
        _ => ClientAuth::Wrong,
    }
}

/// Why an authorization-code grant is malformed, as an RFC 6749 §5.2 error code.
fn code_grant_error(request: &SeenRequest) -> Option<&'static str> {
    if request.form("grant_type").as_deref() != Some("authorization_code") {
        return Some("unsupported_grant_type");
    }
    let present = |name: &str| request.form(name).is_some_and(|value| !value.is_empty());
    if !present("code") || !present("redirect_uri") {
        return Some("invalid_request");
    }
    None
}

/// The bearer token of an API request, if any.
fn bearer(request: &SeenRequest) -> Option<&str> {
    request.header("authorization")?.strip_prefix("Bearer ")
}

/// `oauth2.googleapis.com/token`: HTTP Basic, the code grant, and the refresh grant.
fn google_token(request: &SeenRequest) -> Canned {
    let error = |error: &str| Canned::json(400, json!({ "error": error }));
    if client_auth(request) != ClientAuth::Basic {
        return error("invalid_client");
    }
    if request.form("grant_type").as_deref() == Some("refresh_token") {
        if request.form("refresh_token").as_deref() != Some(GOOGLE_REFRESH_TOKEN) {
            return error("invalid_grant");
        }
        return Canned::json(200, google_tokens(false));
    }
    match code_grant_error(request) {
        Some(code) => error(code),
        None => Canned::json(200, google_tokens(true)),
    }
}

fn google_tokens(with_refresh_token: bool) -> Value {
    let mut tokens = json!({
        "access_token": GOOGLE_ACCESS_TOKEN,
        "expires_in": 3599,
        "scope": "https://www.googleapis.com/auth/calendar.readonly",
        "token_type": "Bearer",
    });
    if with_refresh_token {
        tokens["refresh_token"] = json!(GOOGLE_REFRESH_TOKEN);
    }
    tokens
}

/// `oauth2.googleapis.com/revoke` (RFC 7009): either of the tokens it handed out.
fn google_revoke(request: &SeenRequest) -> Canned {
    let token = request.form("token");
    if [GOOGLE_ACCESS_TOKEN, GOOGLE_REFRESH_TOKEN].contains(&token.as_deref().unwrap_or_default()) {
        return Canned::json(200, json!({}));
    }
    Canned::json(
        400,
        json!({ "error": "invalid_token", "error_description": "Token expired or revoked" }),
    )
}

/// The Calendar API's `events.list`: a timed event and an all-day one, for any calendar.
fn google_events(request: &SeenRequest) -> Canned {
    if bearer(request) != Some(GOOGLE_ACCESS_TOKEN) {
        let error = json!({
            "code": 401,
            "message": "Request had invalid authentication credentials.",
            "status": "UNAUTHENTICATED",
        });
        return Canned::json(401, json!({ "error": error }));
    }
    Canned::json(
        200,
        json!({
            "kind": "calendar#events",
            "etag": "\"p32ofplvvfv8ge0o\"",
            "summary": "alice@example.com",
            "updated": "2026-12-03T18:02:11.271Z",
            "timeZone": "Europe/Berlin",
            "accessRole": "owner",
            "defaultReminders": [{ "method": "popup", "minutes": 10 }],
            "items": [
                {
                    "kind": "calendar#event",
                    "etag": "\"3429850120000000\"",
                    "id": "7cbh8rpc10lrc0ckih9tafss99",
                    "status": "confirmed",
                    "htmlLink": "https://www.google.com/calendar/event?eid=N2NiaDhycGMxMGxy",
                    "created": "2026-11-20T09:14:00.000Z",
                    "updated": "2026-11-20T09:14:00.000Z",
                    "summary": "Team sync",
                    "location": "Room 4.12",
                    "creator": { "email": "alice@example.com", "self": true },
                    "organizer": { "email": "alice@example.com", "self": true },
                    "start": { "dateTime": "2026-12-04T10:00:00+01:00", "timeZone": "Europe/Berlin" },
                    "end": { "dateTime": "2026-12-04T10:30:00+01:00", "timeZone": "Europe/Berlin" },
                    "iCalUID": "7cbh8rpc10lrc0ckih9tafss99@google.com",
                    "sequence": 0,
                    "eventType": "default"
                },
                {
                    "kind": "calendar#event",
                    "etag": "\"3429850120000001\"",
                    "id": "1g4j1h67ndq7kddrb2bptp2cua",
                    "status": "confirmed",
                    "htmlLink": "https://www.google.com/calendar/event?eid=MWc0ajFoNjduZHE3",
                    "summary": "Christmas Eve",
                    "start": { "date": "2026-12-24" },
                    "end": { "date": "2026-12-25" },
                    "transparency": "transparent",
                    "eventType": "default"
                }
            ]
        }),
    )
}

/// Slack's `oauth.v2.access`: the client in the body, a user token under `authed_user`, and
/// HTTP 200 even when it refuses.
fn slack_token(request: &SeenRequest) -> Canned {
    let refused = |error: &str| Canned::json(200, json!({ "ok": false, "error": error }));
    if client_auth(request) != ClientAuth::Body {
        return refused("invalid_client_id");
    }
    if code_grant_error(request).is_some() {
        return refused("invalid_code");
    }
    Canned::json(
        200,
        json!({
            "ok": true,
            "app_id": "A0KRD7HC3",
            "authed_user": {
                "id": "U1",
                "scope": "chat:write",
                "access_token": SLACK_USER_TOKEN,
                "token_type": "user"
            },
            "team": { "id": "T9TK3CUKW", "name": "Slack Softworks" },
            "enterprise": null,
            "is_enterprise_install": false
        }),
    )
}

/// Slack's `chat.postMessage` with a JSON body, HTTP 200 even when it refuses.
fn slack_post_message(request: &SeenRequest) -> Canned {
    let refused = |error: &str| Canned::json(200, json!({ "ok": false, "error": error }));
    match bearer(request) {
        None => return refused("not_authed"),
        Some(token) if token != SLACK_USER_TOKEN => return refused("invalid_auth"),
        Some(_) => {}
    }
    let message: Value = serde_json::from_str(&request.body).unwrap_or_default();
    let (Some(channel), Some(text)) = (message["channel"].as_str(), message["text"].as_str())
    else {
        return refused("invalid_arguments");
    };
    if channel == SLACK_UNKNOWN_CHANNEL {
        return refused("channel_not_found");
    }
    Canned::json(
        200,
        json!({
            "ok": true,
            "channel": "C024BE91L",
            "ts": "1765051200.000200",
            "message": {
                "type": "message",
                "user": "U1",
                "text": text,
                "ts": "1765051200.000200"
            }
        }),
    )
}

/// GitHub's `login/oauth/access_token`: the client in the body; form-encoded answers unless the
/// request accepts JSON, and HTTP 200 even for errors.
fn github_token(request: &SeenRequest) -> Canned {
    let error = match client_auth(request) {
        ClientAuth::Body => code_grant_error(request).map(|_| "bad_verification_code"),
        _ => Some("incorrect_client_credentials"),
    };
    let pairs: &[(&str, &str)] = match error {
        Some(error) => &[("error", error)],
        None => &[
            ("access_token", GITHUB_ACCESS_TOKEN),
            ("scope", "repo"),
            ("token_type", "bearer"),
        ],
    };
    let wants_json = request
        .header("accept")
        .is_some_and(|accept| accept.contains("application/json"));
    if wants_json {
        let fields = pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), json!(value)));
        return Canned::json(200, Value::Object(fields.collect()));
    }
    Canned::form(200, pairs)
}

/// GitHub's "list repository issues": an issue and a pull request, for one repository.
fn github_issues(request: &SeenRequest) -> Canned {
    let docs = "https://docs.github.com/rest/issues/issues#list-repository-issues";
    if bearer(request) != Some(GITHUB_ACCESS_TOKEN) {
        let body =
            json!({ "message": "Bad credentials", "documentation_url": docs, "status": "401" });
        return Canned::json(401, body);
    }
    // GitHub refuses requests without a User-Agent.
    if request.header("user-agent").is_none_or(str::is_empty) {
        return Canned::json(
            403,
            json!({ "message": "Request forbidden by administrative rules." }),
        );
    }
    if request.path() != format!("/repos/{GITHUB_REPOSITORY}/issues") {
        let body = json!({ "message": "Not Found", "documentation_url": docs, "status": "404" });
        return Canned::json(404, body);
    }

    let repo = format!("https://github.com/{GITHUB_REPOSITORY}");
    let api = format!("https://api.github.com/repos/{GITHUB_REPOSITORY}");
    Canned::json(
        200,
        json!([
            {
                "url": format!("{api}/issues/1347"),
                "html_url": format!("{repo}/issues/1347"),
                "id": 1,
                "node_id": "MDU6SXNzdWUx",
                "number": 1347,
                "title": "Found a bug",
                "user": { "login": "octocat", "id": 1, "type": "User" },
                "labels": [{ "id": 208045946, "name": "bug", "color": "f29513" }],
                "state": "open",
                "locked": false,
                "comments": 0,
                "created_at": "2026-11-22T13:33:48Z",
                "updated_at": "2026-11-22T13:33:48Z",
                "closed_at": null,
                "author_association": "COLLABORATOR",
                "body": "I'm having a problem with this."
            },
            {
                "url": format!("{api}/issues/1348"),
                "html_url": format!("{repo}/pull/1348"),
                "id": 2,
                "node_id": "MDExOlB1bGxSZXF1ZXN0Mg==",
                "number": 1348,
                "title": "Fix the bug",
                "user": { "login": "hubot", "id": 2, "type": "User" },
                "labels": [],
                "state": "open",
                "locked": false,
                "comments": 1,
                "created_at": "2026-11-23T08:01:12Z",
                "updated_at": "2026-11-23T08:01:12Z",
                "closed_at": null,
                "author_association": "CONTRIBUTOR",
                "pull_request": {
                    "url": format!("{api}/pulls/1348"),
                    "html_url": format!("{repo}/pull/1348"),
                    "merged_at": null
                },
                "body": "Fixes #1347."
            }
        ]),
    )
}
