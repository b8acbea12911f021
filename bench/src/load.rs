//! The client that drives every target the same way.
//!
//! Each worker owns one HTTP/1.1 keep-alive connection (so the pool is exactly as large as the
//! concurrency) and sends its next request as soon as the previous answer is read in full: a
//! closed loop. Latency is measured from before the request is written until the last byte of
//! the body is read, and recorded in nanoseconds in an HDR histogram.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What one worker sends, over and over.
pub(crate) struct Endpoint {
    /// Where to connect.
    pub(crate) addr: SocketAddr,
    /// TLS, for the upstream; plain HTTP otherwise.
    pub(crate) tls: Option<(TlsConnector, ServerName<'static>)>,
    pub(crate) method: Method,
    pub(crate) path: String,
    /// The `Host` header.
    pub(crate) host: String,
    pub(crate) bearer: Option<String>,
    pub(crate) body: Bytes,
    /// The exact body a successful answer has; anything else counts as an error.
    pub(crate) expect: Option<Bytes>,
}

impl Endpoint {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .header(header::HOST, self.host.as_str());
        if !self.body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(bearer) = &self.bearer {
            let value = HeaderValue::from_str(&format!("Bearer {bearer}"))
                .expect("an API key is a valid header value");
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder
            .body(Full::new(self.body.clone()))
            .expect("the request is valid")
    }

    fn accepts(&self, status: StatusCode, body: &Bytes) -> bool {
        status == StatusCode::OK && self.expect.as_ref().is_none_or(|expect| expect == body)
    }
}

/// The figures the targets are judged on.
pub(crate) struct Figures {
    /// Requests per second.
    pub(crate) rps: f64,
    /// Median latency, in microseconds.
    pub(crate) p50: f64,
}

/// What a measurement saw.
pub(crate) struct Measured {
    /// Latencies of the successful requests, in nanoseconds.
    pub(crate) latencies: Histogram<u64>,
    /// Successful requests that completed inside the measurement window.
    pub(crate) ok: u64,
    /// Requests that failed or answered something unexpected.
    pub(crate) errors: u64,
    /// The first unexpected answer, to say what went wrong.
    pub(crate) first_error: Option<String>,
    /// The window's length.
    pub(crate) window: Duration,
}

impl Measured {
    fn new(window: Duration) -> Self {
        Self {
            latencies: new_histogram(),
            ok: 0,
            errors: 0,
            first_error: None,
            window,
        }
    }

    pub(crate) fn requests_per_sec(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// A percentile of the latency, in microseconds.
    pub(crate) fn percentile_us(&self, quantile: f64) -> f64 {
        self.latencies.value_at_quantile(quantile) as f64 / 1e3
    }

    /// Throughput and median latency, for comparisons.
    pub(crate) fn figures(&self) -> Figures {
        Figures {
            rps: self.requests_per_sec(),
            p50: self.percentile_us(0.5),
        }
    }

    pub(crate) fn merge(&mut self, other: Self) {
        self.latencies
            .add(&other.latencies)
            .expect("histograms of the same bounds merge");
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 100 s, three significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("the bounds are valid")
}

/// Opens one keep-alive connection to the endpoint.
pub(crate) async fn connect(endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(endpoint.addr)
        .await
        .with_context(|| format!("cannot connect to {}", endpoint.addr))?;
    tcp.set_nodelay(true)?;
    let sender = match &endpoint.tls {
        None => {
            let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            sender
        }
        Some((connector, name)) => {
            let tls = connector.connect(name.clone(), tcp).await?;
            let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            sender
        }
    };
    Ok(sender)
}

/// Sends one request and reads the whole answer.
pub(crate) async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    endpoint: &Endpoint,
) -> Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let response = sender.send_request(endpoint.request()).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Drives `endpoint` with `concurrency` workers for `warmup` (not recorded), then `measure`.
pub(crate) async fn closed_loop(
    endpoint: Arc<Endpoint>,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Measured> {
    // Every worker connects first, so that the warm-up is spent sending requests.
    let mut senders = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        senders.push(connect(&endpoint).await?);
    }
    let start = Instant::now() + warmup;
    let stop = start + measure;

    let workers: Vec<_> = senders
        .into_iter()
        .map(|sender| tokio::spawn(worker(endpoint.clone(), sender, start, stop, measure)))
        .collect();
    let mut total = Measured::new(measure);
    for worker in workers {
        total.merge(worker.await??);
    }
    Ok(total)
}

async fn worker(
    endpoint: Arc<Endpoint>,
    mut sender: SendRequest<Full<Bytes>>,
    start: Instant,
    stop: Instant,
    window: Duration,
) -> Result<Measured> {
    let mut measured = Measured::new(window);
    loop {
        let sent = Instant::now();
        if sent >= stop {
            return Ok(measured);
        }
        let result = send(&mut sender, &endpoint).await;
        let done = Instant::now();
        let counts = sent >= start && done <= stop;

        match result {
            Ok((status, body)) if endpoint.accepts(status, &body) => {
                if counts {
                    let nanos = u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX);
                    measured.latencies.saturating_record(nanos);
                    measured.ok += 1;
                }
            }
            Ok((status, body)) => {
                measured.error(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
            }
            Err(err) => {
                measured.error(format!("{err:#}"));
                sender = connect(&endpoint).await?;
            }
        }
    }
}

/// Opens `count` connections, then sends one request on each at the same moment, and waits
/// for all the answers; `window` is then the time from the first send to the last answer.
pub(crate) async fn all_at_once(endpoint: Arc<Endpoint>, count: usize) -> Result<Measured> {
    let mut senders = Vec::with_capacity(count);
    for _ in 0..count {
        senders.push(connect(&endpoint).await?);
    }

    let started = Instant::now();
    let calls: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let result = send(&mut sender, &endpoint).await;
                (sent.elapsed(), result)
            })
        })
        .collect();

    let mut measured = Measured::new(Duration::ZERO);
    for call in calls {
        let (elapsed, result) = call.await?;
        match result {
            Ok((status, body)) if endpoint.accepts(status, &body) => {
                let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
                measured.latencies.saturating_record(nanos);
                measured.ok += 1;
            }
            Ok((status, body)) => {
                measured.error(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
            }
            Err(err) => measured.error(format!("{err:#}")),
        }
    }
    measured.window = started.elapsed();
    Ok(measured)
}
