//! Everything a plugin sends to the network passes through here.
//!
//! Plugins speak standard `wasi:http`; wasmtime hands each outgoing request to
//! [`EgressHooks::send_request`], the one place where the host decides. A request leaves only
//! over https, only to a host the plugin declared, and only to a public address (checked after
//! DNS resolution, at connect time, by [`PublicOnlyResolver`]). A refused request reaches the
//! guest as `HttpRequestDenied` and is logged with the plugin, the call and the host, never the
//! path or query, which may hold user data.
//!
//! Requests are executed by one shared [`reqwest`] client (connection pool, system roots plus
//! the admin's extra roots, no redirects followed: a plugin that wants to follow one sends a new
//! request, which is checked again).

mod address;
mod credentials;
mod hooks;
mod policy;
mod redact;

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::config::{EgressConfig, EgressOverride};

pub use address::{PublicOnlyResolver, is_public};
pub use credentials::{ACCESS_TOKEN_PLACEHOLDER, Credentials, Refresher, SecretSetting};
pub use hooks::EgressHooks;
pub use policy::HostPolicy;

/// The shared HTTP client and the rules every outgoing request follows.
pub struct Egress {
    /// Resolves through [`PublicOnlyResolver`]; used for every request that is not overridden.
    public: reqwest::Client,
    /// Used only for origins the admin overrode, whose targets may be on loopback.
    overridden: reqwest::Client,
    overrides: Vec<EgressOverride>,
    /// Hosts the admin allows over plain http, port 80 unless given.
    http_hosts: HostPolicy,
    request_timeout: Duration,
}

/// The egress could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// An extra root certificate could not be read or parsed.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl Egress {
    /// Builds the shared clients from the configuration.
    pub fn new(config: &EgressConfig) -> Result<Self, EgressError> {
        let mut roots = Vec::new();
        for path in &config.ca_files {
            let ca_error = |reason: String| EgressError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|err| ca_error(err.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| ca_error(err.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no certificate in the file".to_owned()));
            }
            roots.extend(certs);
        }

        let build = |resolver: Option<Arc<PublicOnlyResolver>>| {
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // A proxy from the environment would resolve names itself, past the resolver
                // that keeps requests off internal addresses.
                .no_proxy()
                .connect_timeout(Duration::from_millis(config.request_timeout_ms))
                .pool_idle_timeout(Duration::from_secs(90))
                .user_agent(concat!("keyhole/", env!("CARGO_PKG_VERSION")));
            for root in &roots {
                builder = builder.add_root_certificate(root.clone());
            }
            if let Some(resolver) = resolver {
                builder = builder.dns_resolver(resolver);
            }
            builder
                .build()
                .map_err(|err| EgressError::Client(err.to_string()))
        };

        Ok(Self {
            public: build(Some(Arc::new(PublicOnlyResolver)))?,
            overridden: build(None)?,
            overrides: config.overrides.clone(),
            http_hosts: HostPolicy::with_default_port(&config.http_hosts, 80),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        })
    }

    /// Where a request for `url` really goes, and with which client: an overridden origin is
    /// sent to its target, anything else to `url` itself through the public-only client.
    pub fn route(&self, url: &Url) -> (Url, &reqwest::Client, bool) {
        let Some(rule) = self.overrides.iter().find(|rule| rule.matches(url)) else {
            return (url.clone(), &self.public, false);
        };
        let mut target = url.clone();
        // Setting scheme, host and port of a parsed http(s) URL to those of another parsed
        // http(s) URL cannot fail.
        let _ = target.set_scheme(rule.to.scheme());
        let _ = target.set_host(rule.to.host_str());
        let _ = target.set_port(rule.to.port());
        (target, &self.overridden, true)
    }

    /// Starts a request the host itself makes for a plugin, to a URL the plugin's author chose
    /// (token and revocation endpoints): https only, to public addresses unless overridden,
    /// through the same client, with the same deadline.
    pub fn host_request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, String> {
        let url = Url::parse(url).map_err(|_| "not a URL".to_owned())?;
        if url.scheme() != "https" {
            return Err("not https".to_owned());
        }
        let overridden = self.is_overridden(&url);
        if let Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) = url.host()
            && !overridden
        {
            let ip = url
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .parse()
                .map_err(|_| "not an address".to_owned())?;
            if !is_public(ip) {
                return Err("not a public address".to_owned());
            }
        }
        let (target, client, _) = self.route(&url);
        Ok(client.request(method, target).timeout(self.request_timeout))
    }

    /// Whether the admin lets plugins reach `host` on `port` over plain http.
    pub fn allows_http(&self, host: &str, port: u16) -> bool {
        self.http_hosts.allows(host, port)
    }

    /// Whether the admin overrode the origin of `url`.
    pub fn is_overridden(&self, url: &Url) -> bool {
        self.overrides.iter().any(|rule| rule.matches(url))
    }
}

/// Sends `request`, and when `repeatable` sends it once more if its connection closed before
/// the server answered anything. Mostly that is a pooled keep-alive connection the server closed
/// while idle (Node does after 5 s), just as the request went out on it: the server never read
/// the request.
pub(crate) async fn send_once_more_if_closed(
    request: reqwest::RequestBuilder,
    repeatable: bool,
) -> Result<reqwest::Response, reqwest::Error> {
    let again = repeatable.then(|| request.try_clone()).flatten();
    match (request.send().await, again) {
        (Err(err), Some(again)) if closed_before_answer(&err) => {
            tracing::info!("the connection closed before any answer; sending the request again");
            again.send().await
        }
        (result, _) => result,
    }
}

/// Whether a request failed because its connection closed before the server answered anything.
fn closed_before_answer(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            return hyper.is_incomplete_message() || hyper.is_canceled();
        }
        source = cause.source();
    }
    false
}
