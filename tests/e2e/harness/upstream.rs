//! A local HTTPS server that stands in for the internet the plugins reach.
//!
//! The server under test is started with `--egress-override` flags that send every host in
//! [`OVERRIDDEN_HOSTS`] here, and with `--egress-ca` naming the test CA that signed this server's
//! certificate. The upstream only speaks TLS, so each request it records arrived over TLS.
//!
//! It answers like the services the plugins call: Open-Meteo and Hacker News here, the OAuth
//! providers of the example plugins (token endpoints and APIs) in [`super::providers`]. For the
//! hostile plugin's attacks, [`HANG_PATH`] records the request and never answers, and
//! [`BIG_PATH`] answers a large body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::providers;

/// The hosts whose HTTPS origin the server under test sends to the upstream.
pub(crate) const OVERRIDDEN_HOSTS: &[&str] = &[
    "api.open-meteo.com",
    "geocoding-api.open-meteo.com",
    "allowed.test",
    "api.wild.test",
    "hacker-news.firebaseio.com",
    "accounts.google.com",
    "oauth2.googleapis.com",
    "www.googleapis.com",
    "slack.com",
    "github.com",
    "api.github.com",
];

/// A path the upstream records and then never answers, for a plugin that waits forever on I/O.
const HANG_PATH: &str = "/hang";

/// A path answered with a JSON body of about [`BIG_BYTES`], for a plugin that stops reading
/// half-way.
const BIG_PATH: &str = "/big";

/// The size of the padding in [`BIG_PATH`]'s answer.
const BIG_BYTES: usize = 1024 * 1024;

/// A request the upstream received.
#[derive(Debug, Clone)]
pub(crate) struct SeenRequest {
    /// `GET`, `POST`, ...
    pub(crate) method: String,
    /// The path with its query string, if any.
    pub(crate) path_and_query: String,
    /// The headers as sent, names in lower case.
    pub(crate) headers: Vec<(String, String)>,
    /// The body, with invalid UTF-8 replaced.
    pub(crate) body: String,
}

impl SeenRequest {
    /// The path without the query string.
    pub(crate) fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or_default()
    }

    /// The query's decoded value for `name`.
    pub(crate) fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.path_and_query.split_once('?')?;
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    /// The first value of a header, by its lower-case name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The decoded value of a field of a form-encoded body.
    pub(crate) fn form(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }
}

/// What the upstream saw, shared with its connection tasks.
#[derive(Default)]
struct Seen {
    requests: Vec<SeenRequest>,
    /// TLS handshakes that failed, so a test that finds no request can say why.
    handshake_errors: Vec<String>,
}

/// The running upstream; it stops when dropped.
pub(crate) struct Upstream {
    addr: SocketAddr,
    ca_pem: PathBuf,
    seen: Arc<Mutex<Seen>>,
    accept_loop: JoinHandle<()>,
    _dir: TempDir,
}

impl Upstream {
    /// Creates a test CA and a certificate it signs for the overridden hosts, and serves HTTPS on
    /// a free loopback port.
    pub(crate) async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (ca_pem, tls) = test_pki()?;
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_pem)?;

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let accept_loop = tokio::spawn(accept(listener, TlsAcceptor::from(tls), seen.clone()));

        Ok(Self {
            addr,
            ca_pem: ca_path,
            seen,
            accept_loop,
            _dir: dir,
        })
    }

    /// The port the upstream listens on, at 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The PEM file of the CA that signed the upstream's certificate.
    pub(crate) fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// Every request received so far, oldest first.
    pub(crate) fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().requests.clone()
    }

    /// Every request received so far for `path`, oldest first.
    pub(crate) fn requests_to(&self, path: &str) -> Vec<SeenRequest> {
        let seen = self.seen.lock().unwrap();
        seen.requests
            .iter()
            .filter(|request| request.path() == path)
            .cloned()
            .collect()
    }

    /// The first request received for `path`, with the upstream's state in the error otherwise.
    pub(crate) fn request_to(&self, path: &str) -> Result<SeenRequest> {
        let seen = self.seen.lock().unwrap();
        seen.requests
            .iter()
            .find(|request| request.path() == path)
            .cloned()
            .with_context(|| {
                format!(
                    "the upstream received no request for {path}; requests: {:?}; failed TLS \
                     handshakes: {:?}",
                    seen.requests, seen.handshake_errors
                )
            })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// A fresh CA, and a TLS configuration whose certificate that CA signed.
fn test_pki() -> Result<(String, Arc<ServerConfig>)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Keyhole e2e test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    names.extend(OVERRIDDEN_HOSTS.iter().map(|host| (*host).to_owned()));
    let mut leaf_params = CertificateParams::new(names)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "keyhole e2e upstream");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf_params.signed_by(&leaf_key, &ca)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    Ok((ca_cert.pem(), Arc::new(config)))
}

async fn accept(listener: TcpListener, tls: TlsAcceptor, seen: Arc<Mutex<Seen>>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let tls = tls.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let stream = match tls.accept(tcp).await {
                Ok(stream) => stream,
                Err(err) => {
                    seen.lock().unwrap().handshake_errors.push(err.to_string());
                    return;
                }
            };
            let service = service_fn(move |request| {
                let seen = seen.clone();
                async move { Ok::<_, Infallible>(answer(request, &seen).await) }
            });
            // A client that hangs up mid-request is no concern of the tests.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Records the request and answers it like the real service would.
async fn answer(request: Request<Incoming>, seen: &Mutex<Seen>) -> Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    // A body cut short is recorded as far as it arrived; the tests then see what is missing.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let seen_request = SeenRequest {
        method: head.method.to_string(),
        path_and_query: head
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned()),
        headers: head
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let canned = providers::answer(&seen_request)
        .unwrap_or_else(|| Canned::json(200, body_for(&seen_request)));
    let hang = seen_request.path() == HANG_PATH;
    seen.lock().unwrap().requests.push(seen_request);
    if hang {
        // The connection stays open, unanswered, until the client gives up or the test ends.
        std::future::pending::<()>().await;
    }

    Response::builder()
        .status(canned.status)
        .header("content-type", canned.content_type)
        .body(Full::new(Bytes::from(canned.body)))
        .expect("a canned response is valid")
}

/// An answer of the upstream.
pub(super) struct Canned {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Canned {
    /// A JSON answer.
    pub(super) fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            content_type: "application/json; charset=utf-8",
            body: body.to_string(),
        }
    }

    /// A form-encoded answer, as GitHub's token endpoint gives unless asked for JSON.
    pub(super) fn form(status: u16, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        Self {
            status,
            content_type: "application/x-www-form-urlencoded; charset=utf-8",
            body,
        }
    }
}

/// Open-Meteo's answers for Berlin, Hacker News' stories, the whole request at `/echo`, and an
/// echo of the path for anything else.
fn body_for(request: &SeenRequest) -> Value {
    match request.path() {
        "/v1/search" if request.query("name").as_deref() == Some("Nowhere") => {
            json!({"generationtime_ms": 0.3})
        }
        "/v1/search" => json!({
            "results": [{
                "id": 2950159,
                "name": "Berlin",
                "latitude": 52.52437,
                "longitude": 13.41053,
                "country": "Germany",
                "timezone": "Europe/Berlin"
            }],
            "generationtime_ms": 0.5
        }),
        "/v1/forecast" => json!({
            "latitude": 52.52,
            "longitude": 13.419998,
            "generationtime_ms": 0.03,
            "utc_offset_seconds": 0,
            "timezone": "GMT",
            "timezone_abbreviation": "GMT",
            "elevation": 38.0,
            "current_units": {
                "time": "iso8601",
                "interval": "seconds",
                "temperature_2m": "°C",
                "wind_speed_10m": "km/h",
                "weather_code": "wmo code"
            },
            "current": {
                "time": "2026-12-03T12:00",
                "interval": 900,
                "temperature_2m": 3.4,
                "wind_speed_10m": 11.2,
                "weather_code": 3
            }
        }),
        "/v0/topstories.json" => json!([8863, 121003]),
        BIG_PATH => json!({ "padding": "x".repeat(BIG_BYTES) }),
        path if path.starts_with("/v0/item/") => {
            let id: u64 = path["/v0/item/".len()..]
                .trim_end_matches(".json")
                .parse()
                .unwrap_or(0);
            json!({
                "by": "dhouston",
                "descendants": 71,
                "id": id,
                "score": 111,
                "time": 1175714200,
                "title": format!("Story {id}"),
                "type": "story",
                "url": format!("https://example.com/{id}")
            })
        }
        // What a debugging endpoint, or an error page quoting the request, gives back.
        "/echo" => json!({
            "path_and_query": request.path_and_query,
            "headers": request.headers,
        }),
        path => json!({ "path": path }),
    }
}
