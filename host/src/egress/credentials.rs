//! What a call may send upstream besides the plugin's own bytes: the user's access token and
//! the plugin's secret settings, each only to the hosts declared for it.
//!
//! The plugin never holds either. The host adds `Authorization: Bearer <token>` to requests to
//! the OAuth API hosts (unless the plugin set its own `Authorization`), and replaces the
//! placeholders `{OAUTH_PLUGIN_ACCESS_TOKEN}` and `{SETTING:name}` (also percent-encoded) in the
//! URL and headers. A placeholder in a request to any other host makes the request refused, so
//! a plugin cannot steer a secret to a host of its choosing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderValue};

use super::HostPolicy;
use super::redact::Redactions;
use crate::description::OAuthSpec;
use crate::oauth::{ConnectionRef, OAuth, OAuthClient};
use crate::vault::Secret;

/// The placeholder of the user's access token.
pub const ACCESS_TOKEN_PLACEHOLDER: &str = "{OAUTH_PLUGIN_ACCESS_TOKEN}";

/// A secret setting and where it may go.
pub struct SecretSetting {
    /// Its name, as in `{SETTING:name}`.
    pub name: String,
    /// Its value.
    pub value: Secret,
    /// The hosts its placeholder may be sent to.
    pub hosts: HostPolicy,
}

/// How to get a new token when the API answers 401.
pub struct Refresher {
    /// The OAuth side.
    pub oauth: Arc<OAuth>,
    /// Whose token.
    pub who: ConnectionRef,
    /// The plugin's provider.
    pub spec: Arc<OAuthSpec>,
    /// The admin's client.
    pub client: OAuthClient,
}

/// The credentials of one call.
#[derive(Default)]
pub struct Credentials {
    api_hosts: HostPolicy,
    token: std::sync::Mutex<Option<Secret>>,
    refresher: Option<Refresher>,
    secrets: Vec<SecretSetting>,
    authorization_lost: AtomicBool,
    /// Every secret of the call, and every token it held, to keep out of all its answers.
    redactions: std::sync::Mutex<Arc<Redactions>>,
}

/// A request's URL and headers with the credentials in place.
pub(super) struct Prepared {
    pub(super) uri: String,
    pub(super) headers: HeaderMap,
    /// The token this request carries, if any; a 401 answer to it triggers one refresh.
    pub(super) carried: Option<Secret>,
}

impl Credentials {
    /// Credentials for a call: the API hosts, the user's token if any, how to refresh it, and
    /// the plugin's secret settings.
    pub fn new(
        api_hosts: HostPolicy,
        token: Option<Secret>,
        refresher: Option<Refresher>,
        secrets: Vec<SecretSetting>,
    ) -> Self {
        let placeholders: Vec<String> = secrets
            .iter()
            .map(|secret| format!("{{SETTING:{}}}", secret.name))
            .collect();
        let token_redaction = token
            .as_ref()
            .map(|token| (token.expose(), ACCESS_TOKEN_PLACEHOLDER));
        let settings_redactions = secrets
            .iter()
            .zip(&placeholders)
            .map(|(secret, placeholder)| (secret.value.expose(), placeholder.as_str()));
        let redactions = Redactions::new(token_redaction.into_iter().chain(settings_redactions));
        Self {
            api_hosts,
            token: std::sync::Mutex::new(token),
            refresher,
            secrets,
            authorization_lost: AtomicBool::new(false),
            redactions: std::sync::Mutex::new(Arc::new(redactions)),
        }
    }

    /// What to keep out of the call's answers: the secret settings and every token the call
    /// has held (a refreshed-away token may still be valid for a while).
    pub(super) fn redactions(&self) -> Arc<Redactions> {
        self.redactions.lock().expect("redactions lock").clone()
    }

    /// Whether a refresh during the call found the user's authorization gone.
    pub fn authorization_lost(&self) -> bool {
        self.authorization_lost.load(Ordering::Relaxed)
    }

    /// Refuses a request that would carry a placeholder to a host not declared for it.
    pub(super) fn check(
        &self,
        uri: &str,
        headers: &HeaderMap,
        host: &str,
        port: u16,
    ) -> Result<(), &'static str> {
        let texts = std::iter::once(uri.to_owned()).chain(
            headers
                .values()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
        for text in texts {
            let text = decode_braces(&text);
            if text.contains(ACCESS_TOKEN_PLACEHOLDER) && !self.api_hosts.allows(host, port) {
                return Err("access token placeholder to a host that is not an API host");
            }
            for name in setting_placeholders(&text) {
                let secret = self.secrets.iter().find(|s| s.name == name);
                match secret {
                    Some(secret) if secret.hosts.allows(host, port) => {}
                    Some(_) => {
                        return Err("secret setting placeholder to a host not declared for it");
                    }
                    None => return Err("placeholder of an unknown or unset secret setting"),
                }
            }
        }
        Ok(())
    }

    /// Fills the placeholders and adds the bearer token, for a request already checked.
    pub(super) fn prepare(
        &self,
        uri: &str,
        headers: &HeaderMap,
        host: &str,
        port: u16,
    ) -> Result<Prepared, &'static str> {
        let token = self.token.lock().expect("token lock").clone();
        let is_api_host = self.api_hosts.allows(host, port);
        let mut filling = Filling {
            token: token.as_ref(),
            secrets: &self.secrets,
            carried: None,
        };

        let uri = filling.fill(uri)?;
        let mut prepared_headers = HeaderMap::with_capacity(headers.len() + 1);
        for (name, value) in headers {
            let filled = filling.fill(&String::from_utf8_lossy(value.as_bytes()))?;
            let value = HeaderValue::from_str(&filled)
                .map_err(|_| "a filled header is not a valid value")?;
            prepared_headers.append(name.clone(), value);
        }

        if is_api_host
            && !prepared_headers.contains_key(http::header::AUTHORIZATION)
            && let Some(token) = &token
        {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| "the token is not a valid header value")?;
            value.set_sensitive(true);
            prepared_headers.insert(http::header::AUTHORIZATION, value);
            filling.carried = Some(token.clone());
        }

        Ok(Prepared {
            uri,
            headers: prepared_headers,
            carried: filling.carried,
        })
    }

    /// After a 401 to a request that carried `stale`: refreshes once (single-flight across
    /// calls) and answers whether a new token is in place.
    pub(super) async fn refresh(&self, stale: &Secret) -> bool {
        let Some(refresher) = &self.refresher else {
            return false;
        };
        let result = refresher
            .oauth
            .refresh_after_unauthorized(
                &refresher.who,
                &refresher.spec,
                &refresher.client,
                stale.expose(),
            )
            .await;
        match result {
            Ok(Some(token)) => {
                let mut redactions = self.redactions.lock().expect("redactions lock");
                *redactions = Arc::new(redactions.with(token.expose(), ACCESS_TOKEN_PLACEHOLDER));
                *self.token.lock().expect("token lock") = Some(token);
                true
            }
            Ok(None) => {
                self.authorization_lost.store(true, Ordering::Relaxed);
                *self.token.lock().expect("token lock") = None;
                false
            }
            Err(err) => {
                tracing::warn!(plugin = %refresher.who.plugin, error = %err, "token refresh failed");
                false
            }
        }
    }
}

/// The most a URL or a header may grow to by filling its placeholders: a request full of
/// placeholders of a long secret must not make the host build megabytes of headers.
const MAX_FILLED_BYTES: usize = 64 * 1024;

/// What one request's placeholders are filled with, and which token it carries.
struct Filling<'a> {
    token: Option<&'a Secret>,
    secrets: &'a [SecretSetting],
    carried: Option<Secret>,
}

impl Filling<'_> {
    /// Replaces the placeholders of `text` in one pass: what is put in is never read again, so
    /// a token that happens to spell `{SETTING:key}` stays that text and pulls in no secret.
    /// Each `}` closes at most one placeholder, opened by the nearest `{` before it, which keeps
    /// the pass linear whatever braces the plugin sends.
    fn fill(&mut self, text: &str) -> Result<String, &'static str> {
        let text = decode_braces_if_placeholder(text);
        let mut filled = String::with_capacity(text.len());
        let mut rest = text.as_str();

        while let Some(end) = rest.find('}') {
            let candidate = &rest[..=end];
            let found = candidate
                .rfind('{')
                .and_then(|start| Some((start, self.value_of(&candidate[start..])?)));
            match found {
                Some((start, value)) => {
                    filled.push_str(&candidate[..start]);
                    filled.push_str(&value);
                }
                None => filled.push_str(candidate),
            }
            if filled.len() > MAX_FILLED_BYTES && filled.len() > text.len() {
                return Err("the request is too large once its placeholders are filled");
            }
            rest = &rest[end + 1..];
        }
        filled.push_str(rest);
        Ok(filled)
    }

    /// The value a placeholder stands for; `None` leaves the text as it is.
    fn value_of(&mut self, placeholder: &str) -> Option<String> {
        if placeholder == ACCESS_TOKEN_PLACEHOLDER {
            let Some(token) = self.token else {
                return Some(String::new());
            };
            self.carried = Some(token.clone());
            return Some(token.expose().to_owned());
        }
        let name = placeholder.strip_prefix("{SETTING:")?.strip_suffix('}')?;
        let secret = self.secrets.iter().find(|s| s.name == name)?;
        Some(secret.value.expose().to_owned())
    }
}

/// `%7B` and `%7D` (any case) as braces, to find placeholders a client percent-encoded.
fn decode_braces(text: &str) -> String {
    text.replace("%7B", "{")
        .replace("%7b", "{")
        .replace("%7D", "}")
        .replace("%7d", "}")
}

/// Decodes braces only where they enclose a placeholder (`%7BSETTING:key%7D`, any case),
/// leaving other escapes alone; one pass.
fn decode_braces_if_placeholder(text: &str) -> String {
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text;

    while let Some(at) = find_escape(rest, "%7b") {
        decoded.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let inner_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b':')
            .count();
        let inner = &after[..inner_len];
        let closed = find_escape(&after[inner_len..], "%7d") == Some(0);
        let is_placeholder = inner == "OAUTH_PLUGIN_ACCESS_TOKEN" || inner.starts_with("SETTING:");
        if closed && is_placeholder {
            decoded.push('{');
            decoded.push_str(inner);
            decoded.push('}');
            rest = &after[inner_len + 3..];
        } else {
            decoded.push_str(&rest[at..at + 3]);
            rest = after;
        }
    }
    decoded.push_str(rest);
    decoded
}

/// Where the escape `%xy` (given in lower case) first occurs in `text`, in any case.
fn find_escape(text: &str, escape: &str) -> Option<usize> {
    text.match_indices('%').map(|(at, _)| at).find(|&at| {
        text.get(at..at + escape.len())
            .is_some_and(|found| found.eq_ignore_ascii_case(escape))
    })
}

/// The names in every `{SETTING:name}` of `text`.
fn setting_placeholders(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{SETTING:") {
        rest = &rest[start + "{SETTING:".len()..];
        match rest.find('}') {
            Some(end) => {
                names.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
            None => {
                names.push(rest.to_owned());
                break;
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(token: Option<&str>) -> Credentials {
        Credentials::new(
            HostPolicy::new(&["api.example.com"]),
            token.map(|t| Secret(t.to_owned())),
            None,
            vec![SecretSetting {
                name: "key".to_owned(),
                value: Secret("s3cret".to_owned()),
                hosts: HostPolicy::new(&["keys.example.com"]),
            }],
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn attaches_the_token_to_api_hosts_only() {
        let credentials = credentials(Some("tok"));
        let prepared = credentials
            .prepare(
                "https://api.example.com/v1",
                &HeaderMap::new(),
                "api.example.com",
                443,
            )
            .unwrap();
        assert_eq!(prepared.headers["authorization"], "Bearer tok");
        assert!(prepared.carried.is_some());

        let elsewhere = credentials
            .prepare(
                "https://other.example.com/",
                &HeaderMap::new(),
                "other.example.com",
                443,
            )
            .unwrap();
        assert!(elsewhere.headers.get("authorization").is_none());
        assert!(elsewhere.carried.is_none());
    }

    #[test]
    fn keeps_the_plugins_own_authorization_header() {
        let credentials = credentials(Some("tok"));
        let own = headers(&[("authorization", "token {OAUTH_PLUGIN_ACCESS_TOKEN}")]);
        let prepared = credentials
            .prepare("https://api.example.com/", &own, "api.example.com", 443)
            .unwrap();
        assert_eq!(prepared.headers["authorization"], "token tok");
    }

    #[test]
    fn fills_placeholders_in_urls_and_headers_also_percent_encoded() {
        let credentials = credentials(Some("tok"));
        let prepared = credentials
            .prepare(
                "https://api.example.com/x?a=%7BOAUTH_PLUGIN_ACCESS_TOKEN%7D&b={OAUTH_PLUGIN_ACCESS_TOKEN}",
                &headers(&[("x-token", "{OAUTH_PLUGIN_ACCESS_TOKEN}")]),
                "api.example.com",
                443,
            )
            .unwrap();
        assert_eq!(prepared.uri, "https://api.example.com/x?a=tok&b=tok");
        assert_eq!(prepared.headers["x-token"], "tok");
    }

    #[test]
    fn an_absent_token_fills_in_as_empty() {
        let credentials = credentials(None);
        let prepared = credentials
            .prepare(
                "https://api.example.com/?t={OAUTH_PLUGIN_ACCESS_TOKEN}",
                &HeaderMap::new(),
                "api.example.com",
                443,
            )
            .unwrap();
        assert_eq!(prepared.uri, "https://api.example.com/?t=");
        assert!(prepared.headers.get("authorization").is_none());
    }

    #[test]
    fn refuses_placeholders_to_hosts_not_declared_for_them() {
        let credentials = credentials(Some("tok"));
        let none = HeaderMap::new();
        // Every spelling the host would substitute on an API host is refused elsewhere.
        for uri in [
            "https://evil.example.com/?t={OAUTH_PLUGIN_ACCESS_TOKEN}",
            "https://evil.example.com/?t=%7bOAUTH_PLUGIN_ACCESS_TOKEN%7D",
            "https://evil.example.com/?t=%7BOAUTH_PLUGIN_ACCESS_TOKEN%7d",
            "https://evil.example.com/{OAUTH_PLUGIN_ACCESS_TOKEN}/x",
        ] {
            assert!(
                credentials
                    .check(uri, &none, "evil.example.com", 443)
                    .is_err(),
                "{uri}"
            );
        }
        assert!(
            credentials
                .check(
                    "https://evil.example.com/?t={OAUTH_PLUGIN_ACCESS_TOKEN}",
                    &none,
                    "evil.example.com",
                    443
                )
                .is_err()
        );
        assert!(
            credentials
                .check(
                    "https://evil.example.com/?t=%7BOAUTH_PLUGIN_ACCESS_TOKEN%7d",
                    &none,
                    "evil.example.com",
                    443
                )
                .is_err()
        );
        assert!(
            credentials
                .check(
                    "https://evil.example.com/",
                    &headers(&[("x", "{OAUTH_PLUGIN_ACCESS_TOKEN}")]),
                    "evil.example.com",
                    443
                )
                .is_err()
        );
        assert!(
            credentials
                .check(
                    "https://api.example.com/?k={SETTING:key}",
                    &none,
                    "api.example.com",
                    443
                )
                .is_err()
        );
        assert!(
            credentials
                .check(
                    "https://keys.example.com/?k={SETTING:other}",
                    &none,
                    "keys.example.com",
                    443
                )
                .is_err()
        );
        assert!(
            credentials
                .check(
                    "https://keys.example.com/?k={SETTING:key}",
                    &none,
                    "keys.example.com",
                    443
                )
                .is_ok()
        );
    }

    #[test]
    fn fills_secret_settings_for_their_hosts() {
        let credentials = credentials(None);
        let prepared = credentials
            .prepare(
                "https://keys.example.com/?k=%7BSETTING:key%7D",
                &headers(&[("x-key", "{SETTING:key}")]),
                "keys.example.com",
                443,
            )
            .unwrap();
        assert_eq!(prepared.uri, "https://keys.example.com/?k=s3cret");
        assert_eq!(prepared.headers["x-key"], "s3cret");
        assert!(prepared.carried.is_none());
    }

    /// The URL of a request to api.example.com without headers, once filled.
    fn filled_api_url(credentials: &Credentials, uri: &str) -> String {
        credentials
            .prepare(uri, &HeaderMap::new(), "api.example.com", 443)
            .unwrap()
            .uri
    }

    #[test]
    fn a_token_spelling_a_placeholder_pulls_in_no_secret() {
        let credentials = credentials(Some("{SETTING:key}"));
        let uri = filled_api_url(
            &credentials,
            "https://api.example.com/?t={OAUTH_PLUGIN_ACCESS_TOKEN}",
        );
        assert_eq!(uri, "https://api.example.com/?t={SETTING:key}");
    }

    #[test]
    fn a_placeholder_after_a_stray_brace_is_still_filled() {
        let credentials = credentials(Some("tok"));
        let uri = filled_api_url(
            &credentials,
            "https://api.example.com/?q={a{OAUTH_PLUGIN_ACCESS_TOKEN}}",
        );
        assert_eq!(uri, "https://api.example.com/?q={atok}");
    }

    #[test]
    fn the_calls_secrets_and_every_token_it_held_are_kept_out_of_answers() {
        let credentials = credentials(Some("tok-9f8e"));
        let redactions = credentials.redactions();

        let echoed = redactions
            .apply(b"authorization: Bearer tok-9f8e; k=s3cret")
            .unwrap();
        assert_eq!(
            &echoed[..],
            b"authorization: Bearer {OAUTH_PLUGIN_ACCESS_TOKEN}; k={SETTING:key}"
        );
        assert!(Credentials::default().redactions().is_empty());
    }

    #[test]
    fn braces_by_the_thousand_cost_one_pass_and_filled_size_is_bounded() {
        let credentials = credentials(Some("tok"));
        let braces = format!("{}{}", "{".repeat(200_000), "}");
        let braced = headers(&[("x-braces", &braces)]);
        let prepared = credentials
            .prepare("https://api.example.com/", &braced, "api.example.com", 443)
            .unwrap();
        assert_eq!(prepared.headers["x-braces"], braces.as_str());
        let escapes = "%7BSETTING:key%7D".repeat(20_000);
        assert!(decode_braces_if_placeholder(&escapes).starts_with("{SETTING:key}{SETTING:key}"));

        let long = Credentials::new(
            HostPolicy::new(&["api.example.com"]),
            Some(Secret("t".repeat(2048))),
            None,
            Vec::new(),
        );
        let many = "{OAUTH_PLUGIN_ACCESS_TOKEN}".repeat(100);
        let many = headers(&[("x-many", &many)]);
        assert!(
            long.prepare("https://api.example.com/", &many, "api.example.com", 443)
                .is_err()
        );
    }
}
