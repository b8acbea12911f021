//! `/oauth`: the end user's browser during authorization. No credentials: the link and the
//! flow's cookie are the capability. Answers are small HTML pages; nothing on them echoes a
//! request parameter (the confirmation page shows the link's own plugin, provider and user,
//! escaped), and the route pattern, not the URI (whose query holds the code), is what is logged.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use url::Url;

use super::AppState;
use super::extract::ApiPath;
use crate::description::OAuthSpec;
use crate::oauth::{FlowError, LinkRecord, OAuthClient, Started, flow_cookie_name};

/// `GET /oauth/authorize/{link}`: a page saying what the user is about to connect, with one
/// button that starts the flow. Opening the link uses nothing up, so a chat app that fetches
/// links to preview them does not spend the user's link; and the user sees which plugin, which
/// provider and which user name the account will be connected to before anything starts.
pub(super) async fn confirm(
    State(state): State<AppState>,
    ApiPath(link): ApiPath<String>,
) -> Response {
    match prepare(&state, &link) {
        Ok(ready) => {
            let provider = Url::parse(&ready.spec.authorization_url)
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned))
                .unwrap_or_default();
            let body = format!(
                "<p>{plugin} asks to act on your account at <b>{provider}</b>, for the user \
                 <b>{user}</b>.</p><p>Continue to sign in there and approve it. You will come \
                 back here afterwards.</p><form method=\"post\"><button type=\"submit\">\
                 Continue to {provider}</button></form>",
                plugin = escape(&ready.plugin_name),
                provider = escape(&provider),
                user = escape(&ready.link.user),
            );
            page_with(StatusCode::OK, "Connect your account", &body)
        }
        Err(err) => flow_error_page(&err),
    }
}

/// `POST /oauth/authorize/{link}`: the button of the page above. Uses the link up, starts the
/// flow, gives the browser the flow's cookie and sends it to the provider. A form posted from
/// another site is refused: a page elsewhere must not start a flow in the user's browser
/// without the user seeing this one.
pub(super) async fn authorize(
    State(state): State<AppState>,
    ApiPath(link): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    if !same_origin(&state, &headers) {
        return page(
            StatusCode::FORBIDDEN,
            "Not connected",
            "This authorization was not started from Keyhole's own page. Open the link again.",
        );
    }
    match start(&state, &link) {
        Ok(started) => {
            let cookie = flow_cookie(
                &state,
                &started.cookie_name,
                &started.cookie,
                state.oauth.flow_ttl_secs(),
            );
            let mut headers = HeaderMap::new();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let (Ok(location), Some(cookie)) =
                (HeaderValue::from_str(&started.redirect_to), cookie)
            {
                headers.insert(LOCATION, location);
                headers.insert(SET_COOKIE, cookie);
                return (StatusCode::SEE_OTHER, headers).into_response();
            }
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Try again from the chat.",
            )
        }
        Err(err) => flow_error_page(&err),
    }
}

/// Whether a form post comes from this server's own pages, as far as the browser says: by
/// `Origin`, or by `Sec-Fetch-Site` when there is no `Origin`. A client that sends neither is
/// not a browser acting for a third-party page.
fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    if let Some(origin) = headers.get(ORIGIN) {
        return origin.as_bytes() == state.oauth.public_origin().as_bytes();
    }
    headers
        .get("sec-fetch-site")
        .is_none_or(|site| site.as_bytes() == b"same-origin" || site.as_bytes() == b"none")
}

/// A link that can start a flow now, and what it needs for that.
struct Ready {
    link: LinkRecord,
    plugin_name: String,
    spec: Arc<OAuthSpec>,
    client: OAuthClient,
}

/// Checks, without using it up, that the link is live and its plugin has an active client.
fn prepare(state: &AppState, token: &str) -> Result<Ready, FlowError> {
    let link = state.oauth.peek_link(token)?;
    let plugin = state
        .registry
        .get(&link.plugin)
        .ok_or(FlowError::NotConfigured)?;
    let spec = plugin.oauth.clone().ok_or(FlowError::NotConfigured)?;
    let client = state
        .oauth
        .client(&link.plugin)?
        .filter(|client| client.is_active(&spec))
        .ok_or(FlowError::NotConfigured)?;
    Ok(Ready {
        plugin_name: plugin.description().name.clone(),
        link,
        spec,
        client,
    })
}

/// The `Set-Cookie` value of a flow's cookie, living `max_age` seconds (0 drops it); Secure
/// when users reach the server over https.
fn flow_cookie(state: &AppState, name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if state.oauth.is_https() {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{name}={value}; HttpOnly; SameSite=Lax; Path=/oauth; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&cookie).ok()
}

/// Starts the flow of a link: where to send the browser, and the cookie to give it.
fn start(state: &AppState, token: &str) -> Result<Started, FlowError> {
    let ready = prepare(state, token)?;
    // Taken only now, once the flow can start; a concurrent opening of the same link loses here.
    let link = state.oauth.open_link(token)?;
    let started = state.oauth.begin(&link, &ready.spec, &ready.client)?;
    tracing::info!(plugin = %link.plugin, tenant = %link.tenant, user = %link.user, "authorization started");
    Ok(started)
}

#[derive(Deserialize)]
pub(super) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /oauth/callback`: the browser, back from the provider. Whatever the outcome, the flow
/// is over and the browser is told to drop its cookie.
pub(super) async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(callback): Query<Callback>,
) -> Response {
    let cookie_name = callback.state.as_deref().map(flow_cookie_name);
    let mut response = match finish(&state, &headers, callback).await {
        Ok(plugin_name) => page(
            StatusCode::OK,
            "Account connected",
            &format!(
                "Your account is now connected to {}. You can close this page and return to the chat.",
                escape(&plugin_name)
            ),
        ),
        Err(err) => flow_error_page(&err),
    };
    let expired = cookie_name.and_then(|name| flow_cookie(&state, &name, "", 0));
    if let Some(expired) = expired {
        response.headers_mut().insert(SET_COOKIE, expired);
    }
    response
}

async fn finish(
    state: &AppState,
    headers: &HeaderMap,
    callback: Callback,
) -> Result<String, FlowError> {
    let flow_state = callback.state.ok_or(FlowError::Missing("state"))?;
    let flow = state.oauth.take_flow(
        &flow_state,
        cookie(headers, &flow_cookie_name(&flow_state)).as_deref(),
    )?;
    if let Some(error) = callback.error {
        tracing::info!(plugin = %flow.plugin, tenant = %flow.tenant, user = %flow.user, "the provider did not authorize");
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(FlowError::Denied(error));
    }
    let code = callback.code.ok_or(FlowError::Missing("code"))?;

    let plugin = state
        .registry
        .get(&flow.plugin)
        .ok_or(FlowError::NotConfigured)?;
    let spec = plugin.oauth.clone().ok_or(FlowError::NotConfigured)?;
    let client = state
        .oauth
        .client(&flow.plugin)?
        .filter(|client| client.is_active(&spec))
        .ok_or(FlowError::NotConfigured)?;
    state.oauth.complete(&flow, &spec, &client, &code).await?;
    Ok(plugin.description().name.clone())
}

/// The value of the request's cookie `wanted`.
fn cookie(headers: &HeaderMap, wanted: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == wanted).then(|| value.to_owned())
        })
}

fn flow_error_page(err: &FlowError) -> Response {
    match err {
        FlowError::LinkGone => page(StatusCode::GONE, "Link expired", &err.to_string()),
        FlowError::OAuth(cause) => {
            tracing::warn!(error = %cause, "authorization could not be completed");
            page(
                StatusCode::BAD_GATEWAY,
                "Not connected",
                "The provider could not complete the authorization. Start again from the chat.",
            )
        }
        _ => page(StatusCode::BAD_REQUEST, "Not connected", &err.to_string()),
    }
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    page_with(status, title, &format!("<p>{}</p>", escape(message)))
}

/// A small page around `body`, which must already be HTML with every value escaped.
fn page_with(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family: sans-serif; max-width: 36em; margin: 4em auto\">\
         <h1>{title}</h1>{body}</body></html>"
    );
    let mut response = (status, Html(html)).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
