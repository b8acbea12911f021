//! `keyhole-bench`: measures Keyhole against the HTTP floor, as issue 5 asks, in one run.
//!
//! It starts the release `keyhole` binary on loopback with the no-op plugin
//! (`tests/plugins/noop`), and beside it a plain axum endpoint that answers the same JSON: the
//! floor. One closed-loop client drives both at fixed concurrency levels, then drives the
//! plugin's `fetch` tool and, for comparison, the same local HTTPS upstream directly. It then
//! restarts the server with twenty plugins installed, holds a thousand calls in flight to read
//! its memory, and prints every figure with the targets. The instantiate+call figure
//! comes from the criterion bench `host/benches/instantiate.rs`, which `scripts/bench` runs
//! first; this binary reads its result.
//!
//! Run it through `scripts/bench`, which builds what it needs.
//!
//! # Layout
//! - `load`: the client: one HTTP/1.1 keep-alive connection per worker, latencies in a
//!   histogram.
//! - `servers`: the floor and the upstream, each on a runtime of its own.
//! - `pki`: a throwaway CA and the upstream's certificate.
//! - `keyhole`: the server under test as a child process: start, readiness, admin calls, RSS.
//! - `phases`: each measurement of the list.
//! - `report`: the tables, the targets and the machine.

mod keyhole;
mod load;
mod phases;
mod pki;
mod report;
mod servers;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

/// Benchmarks Keyhole against a plain axum endpoint and a direct HTTPS client.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub(crate) struct Options {
    /// The `keyhole` binary to measure [default: target/release/keyhole].
    #[arg(long)]
    keyhole: Option<PathBuf>,
    /// The no-op plugin [default: tests/plugins/target/wasm32-wasip2/release/noop.wasm].
    #[arg(long)]
    noop_wasm: Option<PathBuf>,
    /// Criterion's output folder, where the instantiate+call result is read.
    #[arg(long)]
    criterion_dir: Option<PathBuf>,
    /// Client concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub(crate) concurrency: Vec<usize>,
    /// Seconds of warm-up before each measurement, not recorded.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Seconds of each measurement.
    #[arg(long, default_value_t = 5.0)]
    measure_secs: f64,
    /// Restarts timed for each start-time figure.
    #[arg(long, default_value_t = 5)]
    pub(crate) restarts: usize,
    /// Plugins installed for the start-time figure.
    #[arg(long, default_value_t = 20)]
    pub(crate) plugins: usize,
    /// Calls held in flight for the memory figure.
    #[arg(long, default_value_t = 1000)]
    pub(crate) in_flight: usize,
    /// Phases to run, from: noop, fetch, start, memory.
    #[arg(long, value_delimiter = ',', default_value = "noop,fetch,start,memory")]
    pub(crate) phases: Vec<String>,
    /// Keep the server running after the no-op phase for this many seconds, printing its pid,
    /// so that a profiler can attach (`perf record -p PID`).
    #[arg(long)]
    pub(crate) hold_secs: Option<u64>,
}

impl Options {
    pub(crate) fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }

    pub(crate) fn measure(&self) -> Duration {
        Duration::from_secs_f64(self.measure_secs)
    }

    pub(crate) fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|name| name == phase)
    }

    fn keyhole(&self) -> PathBuf {
        self.keyhole
            .clone()
            .unwrap_or_else(|| repo_root().join("target/release/keyhole"))
    }

    fn noop_wasm(&self) -> PathBuf {
        self.noop_wasm.clone().unwrap_or_else(|| {
            repo_root().join("tests/plugins/target/wasm32-wasip2/release/noop.wasm")
        })
    }

    fn criterion_dir(&self) -> PathBuf {
        self.criterion_dir
            .clone()
            .unwrap_or_else(|| repo_root().join("target/criterion"))
    }
}

/// The repository, as seen from this crate's manifest at build time.
fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn main() -> Result<()> {
    let options = Options::parse();
    let keyhole = options.keyhole();
    let noop_wasm = std::fs::read(options.noop_wasm()).with_context(|| {
        format!(
            "cannot read the no-op plugin at {}; build it with scripts/bench",
            options.noop_wasm().display()
        )
    })?;
    anyhow::ensure!(
        keyhole.is_file(),
        "no keyhole binary at {}; build it with `cargo build --release -p keyhole`",
        keyhole.display()
    );

    // A thousand calls in flight hold about four thousand sockets between this process and the
    // server; the server inherits the limit.
    let files = raise_open_file_limit();

    // The client's runtime; the servers in this process get runtimes of their own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(phases::run_all(&options, &keyhole, noop_wasm, files))?;
    let criterion = report::read_criterion(&options.criterion_dir());
    report::print_summary(&options, &results, criterion.as_ref());
    Ok(())
}

/// Raises the soft limit of open files to the hard limit, and answers the limit in force.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}
