//! The tables, in Markdown so that a run's output can go into `BENCHMARKS.md` as it is, and the
//! issue's targets with whether each is met.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::Options;
use crate::phases::{Comparison, Results, mib};

/// The machine the figures were taken on.
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory_gib: f64,
    pub(crate) kernel: String,
    /// `/proc/loadavg` when the run started.
    pub(crate) load: String,
}

impl Machine {
    pub(crate) fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(
                || "unknown CPU".to_owned(),
                |(_, name)| name.trim().to_owned(),
            );
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kb: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_kb / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .unwrap_or_default(),
            load: load_average(),
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Criterion's figure for instantiate+call of the no-op plugin.
pub(crate) struct CriterionFigure {
    /// Nanoseconds: the median and its confidence interval.
    median: f64,
    lower: f64,
    upper: f64,
    age: Duration,
}

/// Reads the median of `host/benches/instantiate.rs` from criterion's output, if it ran.
pub(crate) fn read_criterion(dir: &Path) -> Option<CriterionFigure> {
    let path = dir.join("instantiate_and_call/noop/new/estimates.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let estimates: serde_json::Value = serde_json::from_str(&text).ok()?;
    let median = &estimates["median"];
    let age = std::fs::metadata(&path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .unwrap_or_default();
    Some(CriterionFigure {
        median: median["point_estimate"].as_f64()?,
        lower: median["confidence_interval"]["lower_bound"].as_f64()?,
        upper: median["confidence_interval"]["upper_bound"].as_f64()?,
        age,
    })
}

/// Prints every table and the targets.
pub(crate) fn print_summary(
    options: &Options,
    results: &Results,
    criterion: Option<&CriterionFigure>,
) {
    let machine = &results.machine;
    println!("## Machine\n");
    println!("- CPU: {} ({} cores)", machine.cpu, machine.cores);
    println!(
        "- memory: {:.1} GiB; kernel {}",
        machine.memory_gib, machine.kernel
    );
    println!(
        "- load average at start: {}; at end: {}",
        machine.load, results.load_after
    );
    println!(
        "- each load: {} s warm-up, then {} s measured; open-file limit {}",
        options.warmup().as_secs_f64(),
        options.measure().as_secs_f64(),
        results.open_files
    );

    if !results.noop.is_empty() {
        println!("\n## No-op tool: Keyhole vs the floor (plain axum, same JSON)\n");
        comparison_table(&results.noop, "floor");
    }
    if !results.fetch_instant.is_empty() {
        println!("\n## One upstream call, upstream answers at once: Keyhole vs a direct client\n");
        comparison_table(&results.fetch_instant, "direct");
    }
    if !results.fetch_slow.is_empty() {
        println!("\n## One upstream call, upstream answers after 20 ms\n");
        comparison_table(&results.fetch_slow, "direct");
    }
    if !results.start_many.is_empty() {
        println!("\n## Start from the store, spawn until `/healthz` answers\n");
        println!("| plugins installed | median | min | max | runs |");
        println!("|---|---|---|---|---|");
        for (plugins, times) in [
            (1, &results.start_one),
            (results.plugins, &results.start_many),
        ] {
            println!(
                "| {plugins} | {} | {} | {} | {} |",
                ms(median(times)),
                ms(times.iter().copied().min().unwrap_or_default()),
                ms(times.iter().copied().max().unwrap_or_default()),
                times.len()
            );
        }
    }
    if let Some(memory) = &results.memory {
        println!(
            "\n## {} calls in flight, upstream answers after 1 s (2 rounds)\n",
            memory.in_flight
        );
        println!(
            "| RSS idle | RSS peak (sampled) | VmHWM | calls ok | failed | upstream held at once | call p50 | call max |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {} | {} | {} | {} |",
            mib(memory.idle_rss),
            mib(memory.peak_rss),
            mib(memory.high_water),
            memory.calls.ok,
            memory.calls.errors,
            memory.upstream_peak,
            us(memory.calls.percentile_us(0.5)),
            us(memory.calls.latencies.max() as f64 / 1e3),
        );
        if let Some(error) = &memory.calls.first_error {
            println!("\nfirst failure: {error}");
        }
    }
    println!("\n## Instantiate + call of the no-op plugin, no HTTP (criterion)\n");
    match criterion {
        Some(figure) => println!(
            "median {} (95% CI {} – {}), measured {} s before this summary",
            us(figure.median / 1e3),
            us(figure.lower / 1e3),
            us(figure.upper / 1e3),
            figure.age.as_secs()
        ),
        None => println!("not measured: run `cargo bench -p keyhole --bench instantiate` first"),
    }

    println!("\n## Targets (issue 5)\n");
    println!("| target | measured | met |");
    println!("|---|---|---|");
    for target in targets(results, criterion) {
        println!(
            "| {} | {} | {} |",
            target.what,
            target.measured,
            if target.met { "yes" } else { "**no**" }
        );
    }
}

fn comparison_table(comparisons: &[Comparison], base: &str) {
    println!(
        "| concurrency | {base} req/s | keyhole req/s | ratio | {base} p50 | keyhole p50 | ratio | \
         added p50 | {base} p99 | keyhole p99 | ratio | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in comparisons {
        let (b, k) = (&row.base, &row.keyhole);
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {} | {} | {:.2} | {} | {} | {} | {:.2} | {} |",
            row.concurrency,
            b.requests_per_sec(),
            k.requests_per_sec(),
            k.requests_per_sec() / b.requests_per_sec(),
            us(b.percentile_us(0.5)),
            us(k.percentile_us(0.5)),
            k.percentile_us(0.5) / b.percentile_us(0.5),
            us(k.percentile_us(0.5) - b.percentile_us(0.5)),
            us(b.percentile_us(0.99)),
            us(k.percentile_us(0.99)),
            k.percentile_us(0.99) / b.percentile_us(0.99),
            b.errors + k.errors,
        );
    }
}

struct Target {
    what: String,
    measured: String,
    met: bool,
}

fn targets(results: &Results, criterion: Option<&CriterionFigure>) -> Vec<Target> {
    let mut targets = Vec::new();
    let at = |rows: &[Comparison], concurrency: usize| {
        rows.iter()
            .find(|row| row.concurrency == concurrency)
            .map(|row| (row.base.figures(), row.keyhole.figures()))
    };

    if let Some((floor, keyhole)) = at(&results.noop, 16) {
        let ratio = keyhole.rps / floor.rps;
        targets.push(Target {
            what: "no-op req/s at concurrency 16 ≥ 50% of the floor's".to_owned(),
            measured: format!(
                "{:.0}% ({:.0} vs {:.0})",
                ratio * 100.0,
                keyhole.rps,
                floor.rps
            ),
            met: ratio >= 0.5,
        });
    }
    for concurrency in [1, 16] {
        if let Some((floor, keyhole)) = at(&results.noop, concurrency) {
            let ratio = keyhole.p50 / floor.p50;
            targets.push(Target {
                what: format!("no-op p50 ≤ 2x the floor's (concurrency {concurrency})"),
                measured: format!("{ratio:.2}x ({} vs {})", us(keyhole.p50), us(floor.p50)),
                met: ratio <= 2.0,
            });
        }
    }
    for concurrency in [1, 16] {
        if let Some((direct, keyhole)) = at(&results.fetch_slow, concurrency) {
            let added = keyhole.p50 - direct.p50;
            targets.push(Target {
                what: format!(
                    "20 ms upstream: p50 ≤ direct p50 + 1 ms (concurrency {concurrency})"
                ),
                measured: format!("+{} ({} vs {})", us(added), us(keyhole.p50), us(direct.p50)),
                met: added <= 1000.0,
            });
        }
    }
    for concurrency in [1, 16] {
        if let Some((direct, keyhole)) = at(&results.fetch_instant, concurrency) {
            let ratio = keyhole.p50 / direct.p50;
            targets.push(Target {
                what: format!("instant upstream: p50 ≤ 2x direct p50 (concurrency {concurrency})"),
                measured: format!(
                    "{ratio:.2}x, +{} ({} vs {})",
                    us(keyhole.p50 - direct.p50),
                    us(keyhole.p50),
                    us(direct.p50)
                ),
                met: ratio <= 2.0,
            });
        }
    }
    if let Some(figure) = criterion {
        targets.push(Target {
            what: "instantiate+call of the no-op plugin < 25 µs median".to_owned(),
            measured: us(figure.median / 1e3),
            met: figure.median < 25_000.0,
        });
    }
    if !results.start_many.is_empty() {
        let worst = results.start_many.iter().copied().max().unwrap_or_default();
        targets.push(Target {
            what: format!("start with {} plugins < 1 s", results.plugins),
            measured: format!(
                "median {}, max {}",
                ms(median(&results.start_many)),
                ms(worst)
            ),
            met: worst < Duration::from_secs(1),
        });
    }
    if let Some(memory) = &results.memory {
        let peak = memory.peak_rss.max(memory.high_water);
        targets.push(Target {
            what: format!(
                "{} calls in flight: < 1 GiB resident, none failing",
                memory.in_flight
            ),
            measured: format!(
                "{:.0} MiB peak, {} failed of {}, {} held at once",
                mib(peak),
                memory.calls.errors,
                memory.calls.ok + memory.calls.errors,
                memory.upstream_peak
            ),
            met: peak < 1 << 30
                && memory.calls.errors == 0
                && memory.upstream_peak >= memory.in_flight,
        });
    }
    targets
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Microseconds, switching to milliseconds past 10 ms.
fn us(micros: f64) -> String {
    if micros.abs() >= 10_000.0 {
        format!("{:.2} ms", micros / 1e3)
    } else {
        format!("{micros:.1} µs")
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}
