//! The measurements, in the order of issue 5's list. Each prints a line when it ends, so that a
//! long run shows where it is; the tables come at the end (`report`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http::Method;
use rustls::pki_types::{IpAddr as PkiIpAddr, ServerName};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

use crate::Options;
use crate::keyhole::{Running, Server};
use crate::load::{self, Endpoint, Measured};
use crate::pki::{Pki, UPSTREAM_HOST};
use crate::report::Machine;
use crate::servers::{self, UPSTREAM_BODY, UpstreamState};

/// The plugin id the no-op plugin is built with; copies get `noop-01`, `noop-02`, ...
const PLACEHOLDER_ID: &[u8] = b"noop-00";

/// The body of every invoke request.
const INVOKE_BODY: &[u8] = br#"{"user":"bench","arguments":{}}"#;

/// How long the slow upstream waits, like a real API.
const SLOW_UPSTREAM: Duration = Duration::from_millis(20);

/// How long the upstream holds each call in the memory phase.
const HELD_UPSTREAM: Duration = Duration::from_secs(1);

/// How often the server's resident memory is sampled while calls are held.
const RSS_SAMPLE: Duration = Duration::from_millis(10);

/// Rounds of held calls in the memory phase: the first also opens the server's connections to
/// the upstream, the second reuses them.
const MEMORY_ROUNDS: usize = 2;

/// The same load against Keyhole and against what it is compared with.
pub(crate) struct Comparison {
    pub(crate) concurrency: usize,
    /// The floor, or the direct client.
    pub(crate) base: Measured,
    pub(crate) keyhole: Measured,
}

/// What the memory phase saw.
pub(crate) struct Memory {
    pub(crate) in_flight: usize,
    pub(crate) idle_rss: u64,
    pub(crate) peak_rss: u64,
    /// The kernel's own peak (`VmHWM`) at the end.
    pub(crate) high_water: u64,
    /// The most requests the upstream held at once.
    pub(crate) upstream_peak: usize,
    /// Every round's calls together.
    pub(crate) calls: Measured,
}

/// Everything measured.
pub(crate) struct Results {
    pub(crate) machine: Machine,
    pub(crate) open_files: u64,
    pub(crate) noop: Vec<Comparison>,
    pub(crate) fetch_instant: Vec<Comparison>,
    pub(crate) fetch_slow: Vec<Comparison>,
    /// Start times with the no-op plugin alone.
    pub(crate) start_one: Vec<Duration>,
    /// Start times with `plugins` installed.
    pub(crate) start_many: Vec<Duration>,
    pub(crate) plugins: usize,
    pub(crate) memory: Option<Memory>,
    /// `/proc/loadavg` when the run ended.
    pub(crate) load_after: String,
}

/// Endpoints of one server start: the API key stays, the address changes.
struct Endpoints {
    noop: Arc<Endpoint>,
    fetch: Arc<Endpoint>,
}

impl Endpoints {
    fn of(server: &Running, id: &str, key: &str) -> Self {
        let invoke = |tool: &str, expect: &'static [u8]| {
            Arc::new(Endpoint {
                addr: server.addr(),
                tls: None,
                method: Method::POST,
                path: format!("/v1/plugins/{id}/tools/{tool}/invoke"),
                host: server.addr().to_string(),
                bearer: Some(key.to_owned()),
                body: Bytes::from_static(INVOKE_BODY),
                expect: Some(Bytes::from_static(expect)),
            })
        };
        Self {
            noop: invoke("noop", br#"{"output":{}}"#),
            fetch: invoke("fetch", br#"{"output":{"status":200}}"#),
        }
    }
}

/// Runs every phase the options name.
pub(crate) async fn run_all(
    options: &Options,
    binary: &Path,
    noop_wasm: Vec<u8>,
    open_files: u64,
) -> Result<Results> {
    let machine = Machine::read();
    eprintln!(
        "==> {} ({} cores), load average {}",
        machine.cpu, machine.cores, machine.load
    );

    let dir = tempfile::tempdir()?;
    let pki = Pki::new()?;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem)?;
    let upstream_state = Arc::new(UpstreamState::default());
    let upstream = servers::start_upstream(pki.server_config()?, upstream_state.clone())?;
    let floor = servers::start_floor()?;

    let server = Server::new(binary, dir.path(), upstream.addr(), &ca_path);
    let running = server.start(&[]).await?;
    let id = server.install(&running, noop_wasm.clone()).await?;
    let key = server.create_api_key(&running).await?;
    eprintln!(
        "==> keyhole pid {} on {}, plugin `{id}` installed; log in {}",
        running.pid(),
        running.addr(),
        server.log().display()
    );

    let endpoints = Endpoints::of(&running, &id, &key);
    let floor_noop = Arc::new(Endpoint {
        addr: floor.addr(),
        ..clone_endpoint(&endpoints.noop)
    });
    let direct = Arc::new(Endpoint {
        addr: upstream.addr(),
        tls: Some((
            TlsConnector::from(pki.client_config()?),
            ServerName::IpAddress(PkiIpAddr::from(Ipv4Addr::LOCALHOST)),
        )),
        method: Method::GET,
        path: "/".to_owned(),
        host: UPSTREAM_HOST.to_owned(),
        bearer: None,
        body: Bytes::new(),
        expect: Some(Bytes::from_static(UPSTREAM_BODY)),
    });
    for endpoint in [&endpoints.noop, &floor_noop, &endpoints.fetch, &direct] {
        check_once(endpoint).await?;
    }

    let mut results = Results {
        machine,
        open_files,
        noop: Vec::new(),
        fetch_instant: Vec::new(),
        fetch_slow: Vec::new(),
        start_one: Vec::new(),
        start_many: Vec::new(),
        plugins: options.plugins,
        memory: None,
        load_after: String::new(),
    };

    if options.runs("noop") {
        results.noop = compare(options, "no-op", &floor_noop, "floor", &endpoints.noop).await?;
    }
    if let Some(secs) = options.hold_secs {
        eprintln!(
            "==> holding keyhole (pid {}) under the no-op load at concurrency 16 for {secs} s",
            running.pid()
        );
        let hold = Duration::from_secs(secs);
        load::closed_loop(endpoints.noop.clone(), 16, Duration::ZERO, hold).await?;
    }
    if options.runs("fetch") {
        upstream_state.set_delay(Duration::ZERO);
        results.fetch_instant = compare(
            options,
            "fetch, instant",
            &direct,
            "direct",
            &endpoints.fetch,
        )
        .await?;
        upstream_state.set_delay(SLOW_UPSTREAM);
        results.fetch_slow =
            compare(options, "fetch, 20 ms", &direct, "direct", &endpoints.fetch).await?;
    }
    running.stop().await?;

    if options.runs("start") {
        (results.start_one, results.start_many) = start_times(options, &server, &noop_wasm).await?;
    }
    if options.runs("memory") {
        results.memory = Some(memory(options, &server, &id, &key, &upstream_state).await?);
    }

    results.load_after = crate::report::load_average();
    Ok(results)
}

fn clone_endpoint(endpoint: &Endpoint) -> Endpoint {
    Endpoint {
        addr: endpoint.addr,
        tls: endpoint.tls.clone(),
        method: endpoint.method.clone(),
        path: endpoint.path.clone(),
        host: endpoint.host.clone(),
        bearer: endpoint.bearer.clone(),
        body: endpoint.body.clone(),
        expect: endpoint.expect.clone(),
    }
}

/// Sends one request and fails with the answer unless it is the expected one, so that a
/// misconfigured run stops before it measures errors.
async fn check_once(endpoint: &Endpoint) -> Result<()> {
    let mut sender = load::connect(endpoint).await?;
    let (status, body) = load::send(&mut sender, endpoint).await?;
    ensure!(
        endpoint
            .expect
            .as_ref()
            .is_none_or(|expect| *expect == body)
            && status.is_success(),
        "{} {} answered HTTP {status}: {}",
        endpoint.method,
        endpoint.path,
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

/// The same closed-loop load on `base` and on Keyhole at each concurrency level.
async fn compare(
    options: &Options,
    what: &str,
    base: &Arc<Endpoint>,
    base_name: &str,
    keyhole: &Arc<Endpoint>,
) -> Result<Vec<Comparison>> {
    let mut comparisons = Vec::new();
    for &concurrency in &options.concurrency {
        let base_measured = load::closed_loop(
            base.clone(),
            concurrency,
            options.warmup(),
            options.measure(),
        )
        .await?;
        let keyhole_measured = load::closed_loop(
            keyhole.clone(),
            concurrency,
            options.warmup(),
            options.measure(),
        )
        .await?;
        eprintln!(
            "==> {what}, concurrency {concurrency}: {base_name} {:.0} req/s p50 {:.1} µs, \
             keyhole {:.0} req/s p50 {:.1} µs ({} errors)",
            base_measured.requests_per_sec(),
            base_measured.percentile_us(0.5),
            keyhole_measured.requests_per_sec(),
            keyhole_measured.percentile_us(0.5),
            base_measured.errors + keyhole_measured.errors,
        );
        if let Some(error) = keyhole_measured
            .first_error
            .as_ref()
            .or(base_measured.first_error.as_ref())
        {
            eprintln!("    first error: {error}");
        }
        comparisons.push(Comparison {
            concurrency,
            base: base_measured,
            keyhole: keyhole_measured,
        });
    }
    Ok(comparisons)
}

/// Times restarts from the store with the no-op plugin alone, then with `options.plugins`
/// copies of it installed.
async fn start_times(
    options: &Options,
    server: &Server,
    wasm: &[u8],
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut one = Vec::new();
    for _ in 0..options.restarts {
        let running = server.start(&[]).await?;
        one.push(running.ready_after);
        running.stop().await?;
    }
    eprintln!("==> start with 1 plugin: {one:?}");

    let running = server.start(&[]).await?;
    for index in 1..options.plugins {
        server.install(&running, copy_with_id(wasm, index)?).await?;
    }
    let installed = server.plugin_count(&running).await?;
    ensure!(
        installed == options.plugins,
        "{installed} plugins are installed, not {}",
        options.plugins
    );
    running.stop().await?;

    let mut many = Vec::new();
    for _ in 0..options.restarts {
        let running = server.start(&[]).await?;
        many.push(running.ready_after);
        let loaded = server.plugin_count(&running).await?;
        ensure!(
            loaded == options.plugins,
            "the server loaded {loaded} plugins of {}",
            options.plugins
        );
        running.stop().await?;
    }
    eprintln!("==> start with {} plugins: {many:?}", options.plugins);
    Ok((one, many))
}

/// The no-op plugin under another id: the build's only occurrence of the placeholder id is
/// rewritten in place, so the component's structure and code stay the same.
fn copy_with_id(wasm: &[u8], index: usize) -> Result<Vec<u8>> {
    ensure!(index < 100, "at most 100 copies have a two-digit id");
    let mut found = wasm
        .windows(PLACEHOLDER_ID.len())
        .enumerate()
        .filter(|(_, window)| *window == PLACEHOLDER_ID)
        .map(|(at, _)| at);
    let at = found
        .next()
        .context("the plugin's id `noop-00` is not in the .wasm")?;
    ensure!(
        found.next().is_none(),
        "`noop-00` occurs more than once in the .wasm; cannot tell which is the id"
    );
    let mut copy = wasm.to_vec();
    let id = format!("noop-{index:02}");
    copy[at..at + PLACEHOLDER_ID.len()].copy_from_slice(id.as_bytes());
    Ok(copy)
}

/// Holds `options.in_flight` calls of `fetch` at once against an upstream that answers after
/// a second, sampling the server's resident memory meanwhile.
async fn memory(
    options: &Options,
    server: &Server,
    id: &str,
    key: &str,
    upstream: &UpstreamState,
) -> Result<Memory> {
    let limit = options.in_flight.to_string();
    let running = Arc::new(server.start(&["--max-concurrent-calls", &limit]).await?);
    // Let the process settle before reading its idle size.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (idle_rss, _) = running.memory()?;
    let endpoints = Endpoints::of(&running, id, key);

    upstream.set_delay(HELD_UPSTREAM);
    upstream.reset_counts();
    let mut calls: Option<Measured> = None;
    let mut peak_rss = idle_rss;
    for round in 0..MEMORY_ROUNDS {
        let (stop, stopped) = oneshot::channel();
        let sampler = tokio::spawn(sample_rss(running.clone(), stopped));
        let measured = load::all_at_once(endpoints.fetch.clone(), options.in_flight).await?;
        let _ = stop.send(());
        peak_rss = peak_rss.max(sampler.await??);
        eprintln!(
            "==> {} calls held, round {}: {} ok, {} failed, peak RSS {:.1} MiB{}",
            options.in_flight,
            round + 1,
            measured.ok,
            measured.errors,
            mib(peak_rss),
            measured
                .first_error
                .as_ref()
                .map(|error| format!(", first error: {error}"))
                .unwrap_or_default()
        );
        match &mut calls {
            Some(total) => total.merge(measured),
            None => calls = Some(measured),
        }
    }
    upstream.set_delay(Duration::ZERO);
    let (_, high_water) = running.memory()?;
    let upstream_peak = upstream.peak_in_flight();

    let running = Arc::try_unwrap(running)
        .ok()
        .context("the sampler still holds the server")?;
    running.stop().await?;
    Ok(Memory {
        in_flight: options.in_flight,
        idle_rss,
        peak_rss,
        high_water,
        upstream_peak,
        calls: calls.context("no round ran")?,
    })
}

/// Reads the server's RSS until told to stop; answers the largest value seen.
async fn sample_rss(server: Arc<Running>, mut stop: oneshot::Receiver<()>) -> Result<u64> {
    let mut peak = 0;
    loop {
        let (rss, _) = server.memory()?;
        peak = peak.max(rss);
        tokio::select! {
            _ = &mut stop => return Ok(peak),
            () = tokio::time::sleep(RSS_SAMPLE) => {}
        }
    }
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
