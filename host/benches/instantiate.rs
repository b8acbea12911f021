//! Instantiate + call of the no-op plugin, without HTTP: a fresh store and instance from the
//! plugin's `InstancePre`, then `tools.call("noop", "{}")`, exactly as a tool call runs in the
//! server (`Runtime::call`), with the server's default limits.
//!
//! Needs the no-op plugin built (`scripts/bench` does it); another build can be named with
//! `KEYHOLE_BENCH_NOOP_WASM`. `keyhole-bench` reads this bench's median from
//! `target/criterion/instantiate_and_call/noop/new/estimates.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhole::config::Config;
use keyhole::egress::{Egress, HostPolicy};
use keyhole::runtime::{CallContext, Runtime};

fn noop_wasm() -> Vec<u8> {
    let path = std::env::var_os("KEYHOLE_BENCH_NOOP_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/plugins/target/wasm32-wasip2/release/noop.wasm")
        });
    std::fs::read(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read the no-op plugin at {} ({err}); build it with \
             `cargo build --release -p noop` in tests/plugins, or run scripts/bench",
            path.display()
        )
    })
}

fn instantiate_and_call(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let _guard = tokio.enter();

    let config = Config::default();
    let limits = config.limits();
    let egress = Arc::new(Egress::new(&config.egress).expect("the egress client builds"));
    let runtime = Runtime::new(&limits, egress, None).expect("the engine starts");
    let (loaded, _artifact) = tokio
        .block_on(runtime.load_new(noop_wasm().into()))
        .expect("the no-op plugin loads");
    let context = CallContext {
        plugin: Arc::from(loaded.description.id.as_str()),
        policy: Arc::new(HostPolicy::default()),
        settings: Arc::default(),
        limits: limits.defaults,
        scratch: false,
    };

    let mut group = c.benchmark_group("instantiate_and_call");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("noop", |b| {
        b.iter(|| {
            tokio
                .block_on(runtime.call(&loaded.pre, &context, Arc::default(), "noop", "{}"))
                .expect("the no-op call succeeds")
        })
    });
    group.finish();
}

criterion_group!(benches, instantiate_and_call);
criterion_main!(benches);
