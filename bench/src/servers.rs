//! The two servers that run in this process: the floor, a plain axum endpoint that answers what
//! Keyhole answers for the no-op tool, and the HTTPS upstream the `fetch` tool calls.
//!
//! Each runs on a multi-threaded runtime of its own, with as many workers as the machine has
//! cores, as it would in a process of its own: the client's runtime does not serve them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use axum::Json;
use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// The body the upstream answers.
pub(crate) const UPSTREAM_BODY: &[u8] = br#"{"ok":true}"#;

/// A server on its own runtime and thread; stopped when dropped.
pub(crate) struct Background {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Binds a loopback port and serves it with `serve` on a new runtime.
    fn start<F>(name: &str, serve: impl FnOnce(TcpListener) -> F + Send + 'static) -> Result<Self>
    where
        F: Future<Output = ()> + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(name)
            .build()?;

        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("the listener converts");
                    tokio::select! {
                        () = serve(listener) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here ends the connections it still serves.
            })?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The floor: the same route as Keyhole's invoke, parsing the same JSON body, answering the
/// same JSON, served by `axum::serve` as Keyhole is.
pub(crate) fn start_floor() -> Result<Background> {
    Background::start("bench-floor", |listener| async move {
        let router = Router::new().route("/v1/plugins/{id}/tools/{tool}/invoke", post(answer));
        let _ = axum::serve(listener, router).await;
    })
}

async fn answer(Json(_arguments): Json<Value>) -> Json<Value> {
    Json(json!({ "output": {} }))
}

/// What the upstream's handlers share: its delay, and how many requests it holds.
#[derive(Default)]
pub(crate) struct UpstreamState {
    delay_ms: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

impl UpstreamState {
    /// Sets how long the upstream waits before it answers.
    pub(crate) fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// The most requests held at once since the last reset.
    pub(crate) fn peak_in_flight(&self) -> usize {
        self.peak_in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn reset_counts(&self) {
        self.peak_in_flight.store(0, Ordering::Relaxed);
    }
}

/// The upstream: HTTPS, HTTP/1.1 with keep-alive, answering [`UPSTREAM_BODY`] after the delay.
pub(crate) fn start_upstream(
    tls: Arc<ServerConfig>,
    state: Arc<UpstreamState>,
) -> Result<Background> {
    Background::start("bench-upstream", move |listener| async move {
        let acceptor = TlsAcceptor::from(tls);
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request| upstream_answer(request, state.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn upstream_answer<B>(
    _request: Request<B>,
    state: Arc<UpstreamState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let held = state.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    state.peak_in_flight.fetch_max(held, Ordering::Relaxed);
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    state.in_flight.fetch_sub(1, Ordering::Relaxed);
    let response = Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(UPSTREAM_BODY)))
        .expect("the response is valid");
    Ok(response)
}
