//! A plugin written by an attacker, for the end-to-end tests (`tests/e2e/hostile.rs`): each tool is
//! one attack on the host. The host must contain every one of them to the call that makes it,
//! and keep serving the calls after it.
//!
//! Tools that probe the sandbox report what they saw (never file contents or variable values),
//! so that a test can prove from inside the guest what the host let through.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keyhole_sdk::{Plugin, Tool, ToolError, http, log};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// One mebibyte.
const MIB: usize = 1024 * 1024;

/// Counts the calls this instance has served; a fresh instance per call keeps it at 1.
static CALLS: AtomicU32 = AtomicU32::new(0);

/// The arguments of `count`: none.
#[derive(Deserialize, JsonSchema)]
struct Count {}

impl Tool for Count {
    const NAME: &'static str = "count";
    const DESCRIPTION: &'static str =
        "Increments a static counter and answers it: 1 unless an instance is reused.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let count = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(json!({ "count": count }))
    }
}

/// The arguments of `spin`: none.
#[derive(Deserialize, JsonSchema)]
struct Spin {}

impl Tool for Spin {
    const NAME: &'static str = "spin";
    const DESCRIPTION: &'static str = "Computes forever without calling the host.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let mut turns: u64 = 0;
        loop {
            turns = black_box(turns.wrapping_add(1));
        }
    }
}

/// The arguments of `memory_bomb`: none.
#[derive(Deserialize, JsonSchema)]
struct MemoryBomb {}

impl Tool for MemoryBomb {
    const NAME: &'static str = "memory_bomb";
    const DESCRIPTION: &'static str =
        "Grows a vector a mebibyte at a time until the allocator fails, which aborts.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xa5; MIB]);
            black_box(&hoard);
        }
    }
}

/// The arguments of `memory_probe`: none.
#[derive(Deserialize, JsonSchema)]
struct MemoryProbe {}

impl Tool for MemoryProbe {
    const NAME: &'static str = "memory_probe";
    const DESCRIPTION: &'static str =
        "Allocates and touches mebibytes until an allocation is refused, and answers how many.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        // 4096 MiB is all a 32-bit memory holds; reserving the list first means pushing to it
        // never allocates, so the only allocations that can fail are the ones counted.
        let mut hoard: Vec<Vec<u8>> = Vec::with_capacity(4096);
        while hoard.len() < hoard.capacity() {
            let mut chunk = Vec::new();
            if chunk.try_reserve_exact(MIB).is_err() {
                break;
            }
            chunk.resize(MIB, 0xa5);
            hoard.push(black_box(chunk));
        }
        let allocated = hoard.len();
        // Free it all before building the answer, which needs memory too.
        drop(hoard);
        Ok(json!({ "allocated_mib": allocated }))
    }
}

/// The arguments of `recurse`: none.
#[derive(Deserialize, JsonSchema)]
struct Recurse {}

impl Tool for Recurse {
    const NAME: &'static str = "recurse";
    const DESCRIPTION: &'static str = "Recurses without end, each frame holding some stack.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        Ok(json!({ "depth": descend(0) }))
    }
}

/// Calls itself until the stack runs out; the base case is never reached.
fn descend(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    if depth == u64::MAX {
        return depth;
    }
    black_box(descend(black_box(depth + 1))).wrapping_add(frame[31])
}

/// The arguments of `huge_result`.
#[derive(Deserialize, JsonSchema)]
struct HugeResult {
    /// The length of the string to answer, in bytes.
    #[schemars(range(max = 33554432))]
    bytes: u32,
}

impl Tool for HugeResult {
    const NAME: &'static str = "huge_result";
    const DESCRIPTION: &'static str = "Answers a string of the given length.";
    type Output = String;

    fn run(self) -> Result<String, ToolError> {
        Ok("x".repeat(self.bytes as usize))
    }
}

/// The arguments of `flood`.
#[derive(Deserialize, JsonSchema)]
struct Flood {
    /// How many requests to send, one after the other.
    #[schemars(range(max = 1000))]
    count: u32,
}

impl Tool for Flood {
    const NAME: &'static str = "flood";
    const DESCRIPTION: &'static str =
        "Sends many GETs to a declared host and answers how many were sent, denied or failed.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let (mut sent, mut denied, mut failed) = (0u32, 0u32, 0u32);
        for i in 0..self.count {
            match http::get(&format!("https://allowed.test/flood/{i}")).send() {
                Ok(_) => sent += 1,
                Err(err) if err.is_denied() => denied += 1,
                Err(_) => failed += 1,
            }
        }
        Ok(json!({ "sent": sent, "denied": denied, "failed": failed }))
    }
}

/// The arguments of `fetch`.
#[derive(Deserialize, JsonSchema)]
struct Fetch {
    /// The URL to GET.
    url: String,
}

impl Tool for Fetch {
    const NAME: &'static str = "fetch";
    const DESCRIPTION: &'static str =
        "GETs a URL and answers its status, or how the request failed: denied by the host or not.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        match http::get(&self.url).send() {
            Ok(response) => Ok(json!({ "status": response.status() })),
            Err(err) => Ok(json!({
                "denied": err.is_denied(),
                "code": err.code().map(|code| format!("{code:?}")),
                "error": err.to_string(),
            })),
        }
    }
}

/// The arguments of `snoop`.
#[derive(Deserialize, JsonSchema)]
struct Snoop {
    /// A loopback port to try to open a TCP connection to.
    port: u16,
}

impl Tool for Snoop {
    const NAME: &'static str = "snoop";
    const DESCRIPTION: &'static str =
        "Looks for environment variables, files and sockets, and answers what it found.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        // Names only: a value could be a secret, and the test needs only to know it is there.
        let env: Vec<String> = std::env::vars_os()
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        Ok(json!({
            "env": env,
            "args": std::env::args_os().count(),
            "read_dir_root": attempt(|| std::fs::read_dir("/").map(Iterator::count)),
            "read_dir_cwd": attempt(|| std::fs::read_dir(".").map(Iterator::count)),
            "read_passwd": attempt(|| std::fs::read("/etc/passwd").map(|bytes| bytes.len())),
            "write_tmp": attempt(|| std::fs::write("/tmp/keyhole-hostile", b"x").map(|()| 1)),
            "tcp_connect": attempt(|| {
                std::net::TcpStream::connect(("127.0.0.1", self.port)).map(|_| 1)
            }),
            "dns_lookup": attempt(|| {
                std::net::ToSocketAddrs::to_socket_addrs(&("localhost", self.port))
                    .map(Iterator::count)
            }),
        }))
    }
}

/// Runs one probe: `{"ok": true, "count": n}` on success, `{"ok": false, "error": ...}` otherwise.
fn attempt(probe: impl FnOnce() -> std::io::Result<usize>) -> Value {
    match probe() {
        Ok(count) => json!({ "ok": true, "count": count }),
        Err(err) => json!({ "ok": false, "error": err.to_string() }),
    }
}

/// The arguments of `trap_mid_response`: none.
#[derive(Deserialize, JsonSchema)]
struct TrapMidResponse {}

impl Tool for TrapMidResponse {
    const NAME: &'static str = "trap_mid_response";
    const DESCRIPTION: &'static str =
        "Starts reading a large response from a declared host, then panics half-way.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let response = waki::Client::new()
            .get("https://allowed.test/big")
            .send()
            .map_err(|err| ToolError::upstream(format!("the request failed: {err:#}")))?;
        let first = response
            .chunk(16)
            .map_err(|err| ToolError::upstream(format!("the body failed: {err:#}")))?;
        panic!(
            "trapping with the response open, after {} bytes",
            first.map_or(0, |chunk| chunk.len())
        );
    }
}

/// The arguments of `sleep`.
#[derive(Deserialize, JsonSchema)]
struct Sleep {
    /// How long to sleep, in milliseconds.
    ms: u64,
}

impl Tool for Sleep {
    const NAME: &'static str = "sleep";
    const DESCRIPTION: &'static str = "Sleeps, waiting on the host's clock, then answers.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        std::thread::sleep(Duration::from_millis(self.ms));
        Ok(json!({ "slept_ms": self.ms }))
    }
}

/// The arguments of `hang`: none.
#[derive(Deserialize, JsonSchema)]
struct Hang {}

impl Tool for Hang {
    const NAME: &'static str = "hang";
    const DESCRIPTION: &'static str = "GETs an endpoint that never answers, and waits for it.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let response = http::get("https://allowed.test/hang").send()?;
        Ok(json!({ "status": response.status() }))
    }
}

/// The arguments of `log_flood`.
#[derive(Deserialize, JsonSchema)]
struct LogFlood {
    /// How many 8 KiB messages to log.
    #[schemars(range(max = 10000))]
    lines: u32,
}

impl Tool for LogFlood {
    const NAME: &'static str = "log_flood";
    const DESCRIPTION: &'static str = "Writes many oversized messages to the host's log.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let message = "<flood>".repeat(8 * 1024 / "<flood>".len());
        for _ in 0..self.lines {
            log::info(&message);
        }
        Ok(json!({ "logged": self.lines }))
    }
}

fn plugin() -> Plugin {
    let version = env!("CARGO_PKG_VERSION");
    Plugin::new(
        "hostile",
        "Hostile",
        version,
        "Attacks the Keyhole host for tests.",
    )
    .host("allowed.test")
    // Declared, yet internal: the host must refuse them whatever the plugin declares.
    .host("127.0.0.1")
    .host("169.254.169.254")
    .host("localhost")
    .tool::<Count>()
    .tool::<Spin>()
    .tool::<MemoryBomb>()
    .tool::<MemoryProbe>()
    .tool::<Recurse>()
    .tool::<HugeResult>()
    .tool::<Flood>()
    .tool::<Fetch>()
    .tool::<Snoop>()
    .tool::<TrapMidResponse>()
    .tool::<Sleep>()
    .tool::<Hang>()
    .tool::<LogFlood>()
}

keyhole_sdk::export_plugin!(plugin);
