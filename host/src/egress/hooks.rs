//! The `wasi:http` hook: the one place where a plugin's request is checked and sent.

use std::error::Error as _;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use http::uri::Scheme;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Frame;
use url::Url;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::address::ProhibitedAddress;
use super::credentials::{Credentials, Prepared};
use super::redact::Redactions;
use super::{Egress, HostPolicy, is_public, send_once_more_if_closed};
use crate::limits::{CallLimits, bytes};

type Pending = Box<dyn Future<Output = Result<(), Error>> + Send>;
type Sent = Box<dyn Future<Output = Result<(http::Response<WasiBody>, Pending), Error>> + Send>;

/// The hooks of one call: which plugin is calling, where it may go, what it may carry.
pub struct EgressHooks {
    egress: Arc<Egress>,
    policy: Arc<HostPolicy>,
    credentials: Arc<Credentials>,
    plugin: Arc<str>,
    call: u64,
    limits: CallLimits,
    /// Requests made so far in this call.
    requests: u32,
}

/// A request that passed the checks.
struct Checked {
    url: Url,
    /// Sent over plain http to a host the admin allows so: it carries no credentials.
    plain_http: bool,
}

impl EgressHooks {
    /// Hooks for one call of `plugin`.
    pub fn new(
        egress: Arc<Egress>,
        policy: Arc<HostPolicy>,
        credentials: Arc<Credentials>,
        plugin: Arc<str>,
        call: u64,
        limits: CallLimits,
    ) -> Self {
        Self {
            egress,
            policy,
            credentials,
            plugin,
            call,
            limits,
            requests: 0,
        }
    }

    /// Decides whether the request may leave, and logs a refusal.
    ///
    /// Every decision is made on the URL as the client will use it (WHATWG-parsed), not on the
    /// guest's raw authority: `127.1`, `0x7f000001` or `127.0.0.1.` are all 127.0.0.1 to the
    /// client, and must be to the checks.
    fn check(&mut self, uri: &http::Uri, headers: &http::HeaderMap) -> Result<Checked, Error> {
        self.requests = self.requests.saturating_add(1);
        let raw_host = uri.host().unwrap_or_default();
        let refuse = |reason: &str| {
            tracing::warn!(
                plugin = %self.plugin,
                call = self.call,
                host = raw_host,
                reason,
                "outgoing request refused (HttpRequestDenied)"
            );
            Err(Error::HttpRequestDenied)
        };

        if self.requests > self.limits.max_requests_per_call {
            return refuse("too many requests in one call");
        }
        let plain_http = uri.scheme() == Some(&Scheme::HTTP);
        if !plain_http && uri.scheme() != Some(&Scheme::HTTPS) {
            return refuse("not https");
        }
        let Ok(mut url) = Url::parse(&uri.to_string()) else {
            return refuse("not a valid URL");
        };
        if !url.username().is_empty() || url.password().is_some() {
            return refuse("credentials in the URL");
        }
        let port = url.port_or_known_default().unwrap_or(443);

        let host = match url.host() {
            Some(url::Host::Domain(domain)) => {
                let domain = domain.trim_end_matches('.').to_owned();
                // One spelling for the policy, the overrides and the resolver.
                if url.set_host(Some(&domain)).is_err() {
                    return refuse("not a valid host");
                }
                domain
            }
            Some(url::Host::Ipv4(ip)) => {
                if !is_public(IpAddr::V4(ip)) && !self.egress.is_overridden(&url) {
                    return refuse("address not public");
                }
                ip.to_string()
            }
            Some(url::Host::Ipv6(ip)) => {
                if !is_public(IpAddr::V6(ip)) && !self.egress.is_overridden(&url) {
                    return refuse("address not public");
                }
                format!("[{ip}]")
            }
            None => return refuse("no host"),
        };

        if plain_http && !self.egress.allows_http(&host, port) {
            return refuse("not https");
        }
        if !self.policy.allows(&host, port) {
            return refuse("host not declared by the plugin");
        }
        // Nothing secret travels in clear: over plain http every placeholder is refused, as
        // for a host the credentials are not meant for.
        let credentials = if plain_http {
            &Credentials::default()
        } else {
            self.credentials.as_ref()
        };
        if let Err(reason) = credentials.check(url.as_str(), headers, &host, port) {
            return refuse(reason);
        }
        Ok(Checked { url, plain_http })
    }
}

/// Headers a plugin may not set besides wasmtime's own list (most hop-by-hop headers, `Host`):
/// the rest of the hop-by-hop set, which would act on the host's pooled connection rather than
/// on the request. (`Content-Length` stays allowed: wasmtime checks the body against it.)
const FORBIDDEN_HEADERS: [http::HeaderName; 2] = [http::header::TE, http::header::TRAILER];

impl WasiHttpHooks for EgressHooks {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(|name| {
            wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
                || FORBIDDEN_HEADERS.contains(name)
        })
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Pending,
    ) -> Sent {
        let checked = self.check(request.uri(), request.headers());
        let egress = self.egress.clone();
        let credentials = self.credentials.clone();
        let plugin = self.plugin.clone();
        let (call, limits) = (self.call, self.limits);

        Box::new(async move {
            let Checked { url, plain_http } = checked?;
            // Whatever the request carries, its answer is kept clean of all the call's secrets:
            // one request may store a secret upstream and another read it back.
            let redactions = credentials.redactions();
            let credentials = if plain_http {
                Arc::default()
            } else {
                credentials
            };
            let response = forward(&egress, &credentials, &redactions, &limits, request, url)
                .await
                .inspect_err(|err| {
                    tracing::info!(plugin = %plugin, call, error = %err, "outgoing request failed")
                })?;
            Ok((response, Box::new(async { Ok(()) }) as Pending))
        })
    }
}

/// Sends a checked request with the shared client, with the call's credentials in place, and
/// streams the answer back within the body size caps, or reads it whole to redact it when the
/// call holds secrets. A 401 to a request that carried the user's token is retried once after a
/// refresh; the body was buffered for that.
async fn forward(
    egress: &Egress,
    credentials: &Credentials,
    redactions: &Redactions,
    limits: &CallLimits,
    request: http::Request<WasiBody>,
    url: Url,
) -> Result<http::Response<WasiBody>, Error> {
    let (parts, body) = request.into_parts();
    let limit = bytes(limits.max_body_bytes);
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| Error::HttpRequestBodySize(None))?
        .to_bytes();
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);

    let mut retried = false;
    loop {
        let prepared = credentials
            .prepare(url.as_str(), &parts.headers, &host, port)
            .map_err(|reason| Error::InternalError(Some(reason.to_owned())))?;
        let response = send(
            egress,
            limits,
            &parts.method,
            &prepared,
            body.clone(),
            !redactions.is_empty(),
        )
        .await?;

        if response.status() == reqwest::StatusCode::UNAUTHORIZED
            && !retried
            && let Some(stale) = &prepared.carried
            && credentials.refresh(stale).await
        {
            retried = true;
            continue;
        }
        if redactions.is_empty() {
            return stream_back(response, limit);
        }
        return redacted_back(response, limit, redactions).await;
    }
}

async fn send(
    egress: &Egress,
    limits: &CallLimits,
    method: &http::Method,
    prepared: &Prepared,
    body: Bytes,
    uncompressed: bool,
) -> Result<reqwest::Response, Error> {
    let url = Url::parse(&prepared.uri).map_err(|_| Error::HttpRequestUriInvalid)?;
    let (target, client, overridden) = egress.route(&url);
    let mut headers = prepared.headers.clone();
    if uncompressed {
        // A compressed echo would hide a secret from the redaction of the answer.
        headers.insert(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
    }
    if !overridden {
        // The client sets `Host` from the URL; an overridden request keeps the original one.
        headers.remove(http::header::HOST);
    }
    let request = client
        .request(method.clone(), target)
        .headers(headers)
        .body(body)
        .timeout(limits.request_timeout());
    // Only a request that repeating cannot harm goes out once more.
    send_once_more_if_closed(request, method.is_safe())
        .await
        .map_err(error_code)
}

fn stream_back(
    response: reqwest::Response,
    limit: usize,
) -> Result<http::Response<WasiBody>, Error> {
    let mut builder = http::Response::builder().status(response.status());
    if let Some(headers) = builder.headers_mut() {
        headers.extend(response.headers().clone());
    }
    let mut received = 0usize;
    let stream = response
        .bytes_stream()
        .map_err(error_code)
        .and_then(move |chunk: Bytes| {
            received += chunk.len();
            let result = if received > limit {
                Err(Error::HttpResponseBodySize(Some(limit as u64)))
            } else {
                Ok(Frame::data(chunk))
            };
            std::future::ready(result)
        });
    builder
        .body(StreamBody::new(stream).boxed_unsync())
        .map_err(|err| Error::InternalError(Some(err.to_string())))
}

/// The answer to a request of a call that holds secrets, read whole (within the cap) so that
/// every spelling of a secret can be replaced by its placeholder before the plugin sees it. An
/// answer compressed despite the request for an uncompressed one cannot be checked, and is
/// refused.
async fn redacted_back(
    response: reqwest::Response,
    limit: usize,
    redactions: &Redactions,
) -> Result<http::Response<WasiBody>, Error> {
    let encoded = response
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(Error::HttpProtocolError);
    }
    let status = response.status();
    let mut headers = response.headers().clone();
    redactions.apply_to_headers(&mut headers);

    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.try_next().await.map_err(error_code)? {
        if body.len() + chunk.len() > limit {
            return Err(Error::HttpResponseBodySize(Some(limit as u64)));
        }
        body.extend_from_slice(&chunk);
    }
    if let Some(redacted) = redactions.apply(&body) {
        if redacted.len() > limit {
            return Err(Error::HttpResponseBodySize(Some(limit as u64)));
        }
        // The body changed length; the guest reads it to its end instead.
        headers.remove(http::header::CONTENT_LENGTH);
        body = redacted;
    }

    let mut builder = http::Response::builder().status(status);
    if let Some(builder_headers) = builder.headers_mut() {
        *builder_headers = headers;
    }
    let body = http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {});
    builder
        .body(body.boxed_unsync())
        .map_err(|err| Error::InternalError(Some(err.to_string())))
}

/// Maps a client failure to the `wasi:http` error code the guest sees.
fn error_code(err: reqwest::Error) -> Error {
    let mut source = err.source();
    while let Some(cause) = source {
        if cause.is::<ProhibitedAddress>() {
            return Error::DestinationIpProhibited;
        }
        source = cause.source();
    }
    if err.is_timeout() {
        Error::ConnectionTimeout
    } else if err.is_connect() {
        Error::ConnectionRefused
    } else if err.is_body() || err.is_decode() {
        Error::HttpResponseIncomplete
    } else {
        Error::HttpProtocolError
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EgressConfig};

    fn hooks(hosts: &[&str]) -> EgressHooks {
        let config = EgressConfig {
            overrides: vec![
                "https://overridden.test=https://127.0.0.1:9443"
                    .parse()
                    .unwrap(),
            ],
            http_hosts: vec!["plain.test:80".to_owned(), "plain.test:8080".to_owned()],
            ..EgressConfig::default()
        };
        EgressHooks::new(
            Arc::new(Egress::new(&config).unwrap()),
            Arc::new(HostPolicy::new(hosts)),
            Arc::default(),
            Arc::from("test"),
            1,
            Config::default().limits().defaults,
        )
    }

    fn check(hooks: &mut EgressHooks, uri: &str) -> Result<Url, Error> {
        hooks
            .check(&uri.parse().unwrap(), &http::HeaderMap::new())
            .map(|checked| checked.url)
    }

    #[test]
    fn refuses_every_spelling_of_an_internal_address() {
        let mut hooks = hooks(&[
            "127.0.0.1:9555",
            "127.1:9555",
            "2130706433:9555",
            "0x7f000001:9555",
            "*.1:9555",
            "0177.0.0.1:9555",
            "10.0.0.1",
            "169.254.169.254",
        ]);
        for uri in [
            "https://127.0.0.1:9555/a",
            "https://127.0.0.1.:9555/b",
            "https://127.1:9555/c",
            "https://2130706433:9555/d",
            "https://0x7f000001:9555/e",
            "https://0177.0.0.1:9555/f",
            "https://10.0.0.1./x",
            "https://169.254.169.254./latest/meta-data/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
        ] {
            assert!(
                matches!(check(&mut hooks, uri), Err(Error::HttpRequestDenied)),
                "{uri}"
            );
        }
    }

    #[test]
    fn refuses_credentials_in_the_url_and_plain_http() {
        let mut hooks = hooks(&["allowed.test"]);
        assert!(check(&mut hooks, "https://evil.internal@allowed.test/").is_err());
        assert!(check(&mut hooks, "http://allowed.test/").is_err());
        assert!(check(&mut hooks, "https://allowed.test:8443/").is_err());
        assert!(check(&mut hooks, "https://allowed.test/x").is_ok());
    }

    #[test]
    fn plain_http_goes_only_to_hosts_the_admin_allows_and_carries_no_secret() {
        let mut hooks = hooks(&["plain.test:80", "allowed.test:80"]);
        assert!(check(&mut hooks, "http://plain.test/x").is_ok());
        assert!(check(&mut hooks, "http://allowed.test/x").is_err());
        // Allowed by the admin on 8080, but the plugin declared only port 80.
        assert!(check(&mut hooks, "http://plain.test:8080/x").is_err());
        assert!(
            check(
                &mut hooks,
                "http://plain.test/?t={OAUTH_PLUGIN_ACCESS_TOKEN}"
            )
            .is_err()
        );
        assert!(check(&mut hooks, "ftp://plain.test/x").is_err());
    }

    #[test]
    fn hop_by_hop_and_host_headers_are_forbidden_to_plugins() {
        let mut hooks = hooks(&["allowed.test"]);
        for name in [
            "te",
            "trailer",
            "connection",
            "upgrade",
            "host",
            "transfer-encoding",
        ] {
            let name = http::HeaderName::from_static(name);
            assert!(hooks.is_forbidden_header(&name), "{name}");
        }
        for name in [
            "authorization",
            "content-type",
            "content-length",
            "x-api-key",
        ] {
            let name = http::HeaderName::from_static(name);
            assert!(!hooks.is_forbidden_header(&name), "{name}");
        }
    }

    #[test]
    fn a_call_makes_a_bounded_number_of_requests() {
        let mut hooks = hooks(&["allowed.test"]);
        for _ in 0..64 {
            assert!(check(&mut hooks, "https://allowed.test/").is_ok());
        }
        assert!(check(&mut hooks, "https://allowed.test/").is_err());
    }

    #[test]
    fn a_trailing_dot_names_the_same_host_for_policy_and_overrides() {
        let mut hooks = hooks(&["overridden.test"]);
        let url = check(&mut hooks, "https://overridden.test./x").unwrap();
        assert_eq!(url.host_str(), Some("overridden.test"));
        assert!(hooks.egress.is_overridden(&url));
    }
}
