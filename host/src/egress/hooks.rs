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
use super::{Egress, HostPolicy, is_public};

type Pending = Box<dyn Future<Output = Result<(), Error>> + Send>;
type Sent = Box<dyn Future<Output = Result<(http::Response<WasiBody>, Pending), Error>> + Send>;

/// The hooks of one call: which plugin is calling, where it may go, what it may carry.
pub struct EgressHooks {
    egress: Arc<Egress>,
    policy: Arc<HostPolicy>,
    credentials: Arc<Credentials>,
    plugin: Arc<str>,
    call: u64,
}

impl EgressHooks {
    /// Hooks for one call of `plugin`.
    pub fn new(
        egress: Arc<Egress>,
        policy: Arc<HostPolicy>,
        credentials: Arc<Credentials>,
        plugin: Arc<str>,
        call: u64,
    ) -> Self {
        Self {
            egress,
            policy,
            credentials,
            plugin,
            call,
        }
    }

    /// Decides whether the request may leave, and logs a refusal.
    fn check(&self, uri: &http::Uri, headers: &http::HeaderMap) -> Result<Url, Error> {
        let host = uri.host().unwrap_or_default();
        let refuse = |reason: &str| {
            tracing::warn!(
                plugin = %self.plugin,
                call = self.call,
                host,
                reason,
                "outgoing request refused (HttpRequestDenied)"
            );
            Err(Error::HttpRequestDenied)
        };

        if uri.scheme() != Some(&Scheme::HTTPS) {
            return refuse("not https");
        }
        let port = uri.port_u16().unwrap_or(443);
        if !self.policy.allows(host, port) {
            return refuse("host not declared by the plugin");
        }
        if let Err(reason) = self
            .credentials
            .check(&uri.to_string(), headers, host, port)
        {
            return refuse(reason);
        }
        let url = Url::parse(&uri.to_string()).map_err(|_| Error::HttpRequestUriInvalid)?;
        // Names are checked at connect time by the resolver; literal addresses never reach it.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let overridden = self.egress.is_overridden(&url);
        if let Ok(ip) = literal.parse::<IpAddr>()
            && !is_public(ip)
            && !overridden
        {
            return refuse("address not public");
        }
        Ok(url)
    }
}

impl WasiHttpHooks for EgressHooks {
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
        let call = self.call;

        Box::new(async move {
            let url = checked?;
            let response = forward(&egress, &credentials, request, url)
                .await
                .inspect_err(|err| {
                    tracing::info!(plugin = %plugin, call, error = %err, "outgoing request failed")
                })?;
            Ok((response, Box::new(async { Ok(()) }) as Pending))
        })
    }
}

/// Sends a checked request with the shared client, with the call's credentials in place, and
/// streams the answer back within the body size caps. A 401 to a request that carried the
/// user's token is retried once after a refresh; the body was buffered for that.
async fn forward(
    egress: &Egress,
    credentials: &Credentials,
    request: http::Request<WasiBody>,
    url: Url,
) -> Result<http::Response<WasiBody>, Error> {
    let (parts, body) = request.into_parts();
    let limit = egress.max_body_bytes();
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
        let response = send(egress, &parts.method, &prepared, body.clone()).await?;

        if response.status() == reqwest::StatusCode::UNAUTHORIZED
            && !retried
            && let Some(stale) = &prepared.carried
            && credentials.refresh(stale).await
        {
            retried = true;
            continue;
        }
        return stream_back(response, limit);
    }
}

async fn send(
    egress: &Egress,
    method: &http::Method,
    prepared: &Prepared,
    body: Bytes,
) -> Result<reqwest::Response, Error> {
    let url = Url::parse(&prepared.uri).map_err(|_| Error::HttpRequestUriInvalid)?;
    let (target, client, overridden) = egress.route(&url);
    let mut headers = prepared.headers.clone();
    if !overridden {
        // The client sets `Host` from the URL; an overridden request keeps the original one.
        headers.remove(http::header::HOST);
    }
    client
        .request(method.clone(), target)
        .headers(headers)
        .body(body)
        .timeout(egress.request_timeout())
        .send()
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
