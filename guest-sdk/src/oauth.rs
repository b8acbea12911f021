//! How a plugin declares that its tools act on the user's account through OAuth 2.0.
//!
//! The plugin names its provider's endpoints and the API hosts the user's token is for; the
//! admin brings the client id and secret; the host runs the authorization flow, keeps the tokens
//! and attaches the user's access token (`Authorization: Bearer …`) to every request to an API
//! host. The plugin never sees the token. Where an API wants the token elsewhere (a query
//! parameter, another header), write [`ACCESS_TOKEN`] there and the host substitutes it, for
//! API hosts only.

use serde_json::{Value, json};

/// Written in a request's URL or headers, replaced by the user's access token by the host, and
/// only in requests to the plugin's API hosts; a request that carries it anywhere else is
/// refused. Without a token (for tools that do not require authorization) it becomes empty.
pub const ACCESS_TOKEN: &str = "{OAUTH_PLUGIN_ACCESS_TOKEN}";

/// The placeholder of a secret setting, replaced by its value in requests to its hosts.
///
/// ```
/// assert_eq!(keyhole_sdk::oauth::secret_setting("api_key"), "{SETTING:api_key}");
/// ```
pub fn secret_setting(name: &str) -> String {
    format!("{{SETTING:{name}}}")
}

/// An OAuth 2.0 provider, as a plugin declares it.
///
/// ```
/// use keyhole_sdk::oauth::OAuth;
///
/// let google = OAuth::new(
///     "https://accounts.google.com/o/oauth2/v2/auth",
///     "https://oauth2.googleapis.com/token",
/// )
/// .revocation_url("https://oauth2.googleapis.com/revoke")
/// .scope("https://www.googleapis.com/auth/calendar.readonly")
/// .api_host("www.googleapis.com")
/// .param("access_type", "offline")
/// .param("prompt", "consent");
/// ```
#[derive(Debug, Clone)]
pub struct OAuth {
    authorization_url: &'static str,
    token_url: &'static str,
    revocation_url: Option<&'static str>,
    scopes: Vec<&'static str>,
    api_hosts: Vec<&'static str>,
    params: Vec<(&'static str, &'static str)>,
    scope_separator: &'static str,
    client_auth: &'static str,
    token_request_format: &'static str,
    pkce: bool,
    token_path: &'static str,
}

impl OAuth {
    /// A provider with its authorization and token endpoints (both https).
    pub fn new(authorization_url: &'static str, token_url: &'static str) -> Self {
        Self {
            authorization_url,
            token_url,
            revocation_url: None,
            scopes: Vec::new(),
            api_hosts: Vec::new(),
            params: Vec::new(),
            scope_separator: " ",
            client_auth: "basic",
            token_request_format: "form",
            pkce: true,
            token_path: "",
        }
    }

    /// Where tokens are revoked when the user disconnects (RFC 7009).
    pub fn revocation_url(mut self, url: &'static str) -> Self {
        self.revocation_url = Some(url);
        self
    }

    /// Asks for a scope.
    pub fn scope(mut self, scope: &'static str) -> Self {
        self.scopes.push(scope);
        self
    }

    /// A host the user's token is sent to; as in [`crate::Plugin::host`]. At least one.
    pub fn api_host(mut self, host: &'static str) -> Self {
        self.api_hosts.push(host);
        self
    }

    /// An extra query parameter of the authorization URL, such as Google's
    /// `access_type=offline` or Dropbox's `token_access_type=offline`.
    pub fn param(mut self, name: &'static str, value: &'static str) -> Self {
        self.params.push((name, value));
        self
    }

    /// Joins scopes with commas instead of spaces (Slack and others).
    pub fn comma_separated_scopes(mut self) -> Self {
        self.scope_separator = ",";
        self
    }

    /// Sends the client id and secret in the token request's body instead of HTTP Basic.
    pub fn client_secret_in_body(mut self) -> Self {
        self.client_auth = "form";
        self
    }

    /// Sends token requests as JSON instead of a form.
    pub fn json_token_requests(mut self) -> Self {
        self.token_request_format = "json";
        self
    }

    /// Turns PKCE off, for providers that refuse it.
    pub fn without_pkce(mut self) -> Self {
        self.pkce = false;
        self
    }

    /// Where the token fields sit in the token response when not at the top level, as a JSON
    /// Pointer: Slack's user tokens are under `/authed_user`.
    pub fn token_path(mut self, pointer: &'static str) -> Self {
        self.token_path = pointer;
        self
    }

    pub(crate) fn to_json(&self) -> Value {
        let params: serde_json::Map<String, Value> = self
            .params
            .iter()
            .map(|(name, value)| ((*name).to_owned(), json!(value)))
            .collect();
        let mut oauth = json!({
            "authorization_url": self.authorization_url,
            "token_url": self.token_url,
            "scopes": self.scopes,
            "api_hosts": self.api_hosts,
            "authorization_params": params,
            "scope_separator": self.scope_separator,
            "client_auth": self.client_auth,
            "token_request_format": self.token_request_format,
            "pkce": self.pkce,
            "token_path": self.token_path,
        });
        if let Some(url) = self.revocation_url {
            oauth["revocation_url"] = json!(url);
        }
        oauth
    }
}
